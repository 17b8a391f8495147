# Data: the built-in synthetic datasets, every dataset prepared into train/test manifests, and
# KDEP-style ImageNet subsets (seeded manifests drawn from a train manifest).


rule demo_data:
    output:
        directory(paths.demo_dataset(R, "{demo}")),
    log:
        paths.log_file(R, "demo_data", "{demo}"),
    benchmark:
        paths.benchmark_file(R, "demo_data", "{demo}")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(2000),
        runtime=30,
        gpu=0,
    params:
        identity=demo_identity,
    script:
        "../workflow_scripts/demo_data.py"


rule prepare_dataset:
    input:
        dataset_folder_of,
    output:
        train=paths.dataset_manifest(R, "{dataset}", "train"),
        test=paths.dataset_manifest(R, "{dataset}", "test"),
    log:
        paths.log_file(R, "prepare_dataset", "{dataset}"),
    benchmark:
        paths.benchmark_file(R, "prepare_dataset", "{dataset}")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(4000),
        runtime=120,
        gpu=0,
    params:
        identity=dataset_identity,
    script:
        "../workflow_scripts/prepare_dataset.py"


rule imagenet_subset:
    input:
        train=subset_source,
    output:
        manifest=paths.subset_manifest(R, "{subset}"),
    log:
        paths.log_file(R, "imagenet_subset", "{subset}"),
    benchmark:
        paths.benchmark_file(R, "imagenet_subset", "{subset}")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(2000),
        runtime=60,
        gpu=0,
    params:
        identity=subset_identity,
    script:
        "../workflow_scripts/imagenet_subset.py"
