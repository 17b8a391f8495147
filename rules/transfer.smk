# Downstream transfer (KDEP 1.8): every (dataset, pre-training run, seed) of the transfer grids is
# one fine-tuning job. The scratch baseline has no student file: it starts from a seeded random init.
# Classification fine-tunes the student itself; segmentation fine-tunes a PSPNet (or another mmseg
# model) whose backbone is the student exported for mmseg (rules/export.smk), loaded strictly;
# detection fine-tunes a Faster R-CNN over the student's backbone, by the protocol's engine
# (torchvision: FPN over the student file itself, loaded strictly; detectron2: FPN or KDEP's R-C4
# from the student's detectron2 export, loaded strictly by kdflow, never by name heuristics).


rule transfer_cls:
    input:
        unpack(transfer_inputs("classification")),
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
        mem_mb=by_attempt(8000),
        runtime=720,
        gpu=1,
    params:
        identity=transfer_identity("classification"),
    script:
        "../workflow_scripts/transfer_cls.py"


rule transfer_seg:
    input:
        unpack(transfer_inputs("segmentation")),
    output:
        metrics=paths.transfer_metrics(R, "segmentation", "{dataset}", "{run}", "{seed}"),
    log:
        paths.log_file(R, "transfer_seg", "{dataset}", "{run}", "seed{seed}"),
    benchmark:
        paths.benchmark_file(R, "transfer_seg", "{dataset}", "{run}", "seed{seed}")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(16000),
        runtime=1440,
        gpu=1,
    params:
        identity=transfer_identity("segmentation"),
    script:
        "../workflow_scripts/transfer_seg.py"


rule transfer_det:
    input:
        unpack(transfer_inputs("detection")),
    output:
        metrics=paths.transfer_metrics(R, "detection", "{dataset}", "{run}", "{seed}"),
    log:
        paths.log_file(R, "transfer_det", "{dataset}", "{run}", "seed{seed}"),
    benchmark:
        paths.benchmark_file(R, "transfer_det", "{dataset}", "{run}", "seed{seed}")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(16000),
        runtime=1440,
        gpu=1,
    params:
        identity=transfer_identity("detection"),
    script:
        "../workflow_scripts/transfer_det.py"
