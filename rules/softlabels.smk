# FKD soft labels (FKD 2.1-2.3): every image of a subset gets num_crops RandomResizedCrop boxes
# (regenerated from a per-image seed, never stored) and the frozen teacher's quantised
# distribution for each. The images are split into `shards` contiguous ranges, one job each, so
# SLURM can run them side by side; the store's content does not depend on the number of shards.
# A set may instead be imported from FKD's published files (boxes and flips then stored).


rule fkd_soft_label_shard:
    input:
        unpack(soft_label_inputs),
    output:
        records=paths.soft_labels_shard(R, "{labels}", "{shard}", "bin"),
        index=paths.soft_labels_shard(R, "{labels}", "{shard}", "npz"),
    log:
        paths.log_file(R, "fkd_soft_label_shard", "{labels}", "{shard}"),
    benchmark:
        paths.benchmark_file(R, "fkd_soft_label_shard", "{labels}", "{shard}")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(16000),
        runtime=1440,
        gpu=1,
    params:
        identity=soft_label_identity,
    script:
        "../workflow_scripts/fkd_soft_label_shard.py"


rule fkd_soft_labels:
    input:
        unpack(soft_label_inputs),
        shards=soft_label_shards,
    output:
        paths.soft_labels_store(R, "{labels}"),
    log:
        paths.log_file(R, "fkd_soft_labels", "{labels}"),
    benchmark:
        paths.benchmark_file(R, "fkd_soft_labels", "{labels}")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(4000),
        runtime=60,
        gpu=0,
    params:
        identity=soft_label_identity,
    script:
        "../workflow_scripts/fkd_soft_labels.py"
