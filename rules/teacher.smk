# Teachers (KDEP 1.2) and their SVD weights (KDEP 1.3): every teacher source becomes one
# timm-named file; the PCA of its pooled pre-ReLU features is computed once per (teacher, subset).


rule teacher:
    input:
        unpack(teacher_inputs),
    output:
        weights=paths.teacher_weights(R, "{teacher}"),
        metrics=paths.teacher_metrics(R, "{teacher}"),
    log:
        paths.log_file(R, "teacher", "{teacher}"),
    benchmark:
        paths.benchmark_file(R, "teacher", "{teacher}")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(16000),
        runtime=1440,
        gpu=1,
    params:
        identity=teacher_identity,
    script:
        "../workflow_scripts/teacher.py"


rule teacher_eval:
    input:
        unpack(teacher_check_inputs),
    output:
        paths.teacher_check(R, "{teacher}"),
    log:
        paths.log_file(R, "teacher_eval", "{teacher}"),
    benchmark:
        paths.benchmark_file(R, "teacher_eval", "{teacher}")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(8000),
        runtime=120,
        gpu=1,
    params:
        identity=teacher_check_identity,
    script:
        "../workflow_scripts/teacher_eval.py"


rule svd_weights:
    input:
        checked=checked_teacher_of,
        teacher=paths.teacher_weights(R, "{teacher}"),
        manifest=paths.subset_manifest(R, "{subset}"),
    output:
        paths.svd_file(R, "{teacher}", "{subset}"),
    log:
        paths.log_file(R, "svd_weights", "{teacher}", "{subset}"),
    benchmark:
        paths.benchmark_file(R, "svd_weights", "{teacher}", "{subset}")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(16000),
        runtime=240,
        gpu=1,
    params:
        identity=svd_identity,
        student_archs=svd_student_archs,
    script:
        "../workflow_scripts/svd_weights.py"
