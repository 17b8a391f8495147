# kdflow: knowledge distillation as pre-training, from ImageNet subsets to paper tables.
#
#   snakemake --cores 2                       the built-in demo (config/config.yaml)
#   snakemake --cores 2 --configfile my.yaml  your experiment
#   snakemake --profile slurm                 on a SLURM cluster
#
# Snakemake decides WHICH runs exist and in what order; src/kdflow decides HOW each is done.


from snakemake.utils import min_version

min_version("9.0")


# The built-in demo, unless an experiment config is given with --configfile (which then replaces
# it rather than being merged into it); --config key=value still overrides single keys.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "rules/report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/teacher.smk"
include: "rules/softlabels.smk"
include: "rules/kdep_targets.smk"
include: "rules/pretrain.smk"
include: "rules/export.smk"
include: "rules/transfer.smk"
include: "rules/report.smk"
include: "rules/checks.smk"


rule all:
    default_target: True
    input:
        final_targets(),


# One run at a time per results root (kdflow.lock): Snakemake locks the working directory only, and
# a second run from another directory on the same results would write the same files. Taken when
# jobs are about to start (not for a dry run), released when the run ends.
onstart:
    results_lock.acquire(R)


onsuccess:
    results_lock.release(R)


onerror:
    results_lock.release(R)
