# Pre-training (KDEP 1.4-1.6, FKD 2.4, and the supervised baseline): one rule, the method comes
# from the run's config. A job given N > 1 GPUs (the SLURM profile asks 4) is one SLURM job that
# runs N DDP processes on its node, with the config's global batch and learning rate. The
# resumable state lives under <results>/state/, not among the outputs, so a failed, cancelled or
# preempted job never loses it; it is saved at every epoch end and on SLURM's pre-timeout signal.


rule pretrain:
    input:
        unpack(pretrain_inputs),
    output:
        student=paths.student_weights(R, "{run}"),
        metrics=paths.pretrain_metrics(R, "{run}"),
    log:
        paths.log_file(R, "pretrain", "{run}"),
    benchmark:
        paths.benchmark_file(R, "pretrain", "{run}")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(32000),
        runtime=2880,
        gpu=1,
    params:
        identity=run_identity,
    script:
        "../workflow_scripts/pretrain.py"
