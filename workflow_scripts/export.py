"""Rules export_mmseg and export_detectron2: a pre-trained student -> pretrain/<run>/export/<engine>/,
its weights in the engine's key layout, checked strictly against the engine's backbone before they
are written, with a per-key report (detectron2 also: config.yaml, the config values the weights
dictate). The engine is the rule's name after ``export_``.

By hand:  python workflow_scripts/export.py --engine mmseg --config config/config.yaml --run-id kdep_r18_r18_in48.seed0
"""

from kdflow.jobs.common import script_main
from kdflow.jobs.export import args_from_cli, args_from_snakemake, export_job


def from_snakemake(smk):
    return args_from_snakemake(smk, smk.rule.removeprefix("export_"))


def from_cli():
    return args_from_cli(__doc__)


def run(args):
    export_job(args.run, args.engine, args.student, args.out_dir)


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
