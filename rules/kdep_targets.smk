# Teacher-free KDEP, generation (kdflow's extension): the frozen teacher runs once over
# num_crops RandomResizedCrop crops of every image of a subset (boxes regenerated from a
# per-image seed, as FKD's), and each crop's pooled feature is stored in float16, either as the
# KDEP target PTS(SVD(x)) at the student's width or raw, projected at replay. The images are split
# into `shards` contiguous ranges, one job each; the store does not depend on the number of shards.


rule kdep_target_shard:
    input:
        unpack(kdep_target_inputs),
    output:
        records=paths.kdep_targets_shard(R, "{targets}", "{shard}", "bin"),
        index=paths.kdep_targets_shard(R, "{targets}", "{shard}", "npz"),
    log:
        paths.log_file(R, "kdep_target_shard", "{targets}", "{shard}"),
    benchmark:
        paths.benchmark_file(R, "kdep_target_shard", "{targets}", "{shard}")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(16000),
        runtime=1440,
        gpu=1,
    params:
        identity=kdep_target_identity,
    script:
        "../workflow_scripts/kdep_target_shard.py"


rule kdep_targets:
    input:
        unpack(kdep_target_inputs),
        shards=kdep_target_shards,
    output:
        paths.kdep_targets_store(R, "{targets}"),
    log:
        paths.log_file(R, "kdep_targets", "{targets}"),
    benchmark:
        paths.benchmark_file(R, "kdep_targets", "{targets}")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(4000),
        runtime=60,
        gpu=0,
    params:
        identity=kdep_target_identity,
    script:
        "../workflow_scripts/kdep_targets.py"
