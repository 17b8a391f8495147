# Data: the built-in synthetic datasets and KDEP-style ImageNet subsets (seeded manifests).


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
        mem_mb=2000,
        runtime=30,
    params:
        spec=demo_spec,
    script:
        "../workflow_scripts/demo_data.py"


rule imagenet_subset:
    input:
        subset_inputs,
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
        mem_mb=2000,
        runtime=60,
    params:
        subset=subset_params,
        symlinks=paths.subset_symlinks(R, "{subset}"),
    script:
        "../workflow_scripts/imagenet_subset.py"
