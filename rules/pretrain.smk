# Pre-training (KDEP 1.4-1.6, and the supervised baseline): one rule, the method comes from the
# run's config. The resumable state lives under <results>/state/, not among the outputs, so a
# failed or preempted job never loses it.


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
    threads: 2
    resources:
        mem_mb=32000,
        runtime=2880,
    params:
        run=run_params,
        out_dir=pretrain_out_dir,
        state=pretrain_state,
    script:
        "../workflow_scripts/pretrain.py"
