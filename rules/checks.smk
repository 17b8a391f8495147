# Cluster diagnostics, run on demand (not part of `all`):
#   snakemake --profile slurm gpu_check --forcerun gpu_check
# The job asks for what a pre-training job asks for (same GPUs in the profile) and reports what it
# was given: devices, SLURM variables, CPU affinity, and whether N DDP ranks can talk.


rule gpu_check:
    output:
        paths.gpu_check(R),
    log:
        paths.log_file(R, "checks", "gpu_check"),
    benchmark:
        paths.benchmark_file(R, "checks", "gpu_check")
    conda:
        "../envs/kdflow.yaml"
    threads: 1
    resources:
        mem_mb=by_attempt(2000),
        runtime=10,
        gpu=1,
    script:
        "../workflow_scripts/gpu_check.py"
