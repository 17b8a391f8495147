# Checkpoint conversion (KDEP 1.7): a pre-trained student, exported in the key layout of a
# downstream engine's backbone. Each export verifies itself: it builds that engine's backbone and
# loads the converted weights strictly, so a key that went astray fails here, naming the key,
# instead of leaving part of a backbone at its random init in every transfer job after it.


rule export_mmseg:
    input:
        student=paths.student_weights(R, "{run}"),
    output:
        weights=paths.export_weights(R, "{run}", "mmseg"),
        report=paths.export_report(R, "{run}", "mmseg"),
    log:
        paths.log_file(R, "export_mmseg", "{run}"),
    benchmark:
        paths.benchmark_file(R, "export_mmseg", "{run}")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(4000),
        runtime=30,
        gpu=0,
    params:
        identity=run_identity,
    script:
        "../workflow_scripts/export.py"


rule export_detectron2:
    input:
        student=paths.student_weights(R, "{run}"),
    output:
        weights=paths.export_weights(R, "{run}", "detectron2"),
        report=paths.export_report(R, "{run}", "detectron2"),
        config=paths.export_config(R, "{run}", "detectron2"),
    log:
        paths.log_file(R, "export_detectron2", "{run}"),
    benchmark:
        paths.benchmark_file(R, "export_detectron2", "{run}")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(4000),
        runtime=30,
        gpu=0,
    params:
        identity=run_identity,
    script:
        "../workflow_scripts/export.py"
