# Downstream transfer (KDEP 1.8): every (dataset, pre-training run, seed) of the transfer grids is
# one fine-tuning job. The scratch baseline has no student file: it starts from a seeded random init.


rule transfer_cls:
    input:
        unpack(transfer_inputs),
    output:
        metrics=paths.transfer_metrics(R, "classification", "{dataset}", "{run}", "{seed}"),
    log:
        paths.log_file(R, "transfer_cls", "{dataset}", "{run}", "seed{seed}"),
    benchmark:
        paths.benchmark_file(R, "transfer_cls", "{dataset}", "{run}", "seed{seed}")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    params:
        identity=transfer_identity("classification"),
    script:
        "../workflow_scripts/transfer_cls.py"
