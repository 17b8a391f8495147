"""Rule teacher_eval: a teacher's top-1 on a test manifest, checked against check.min_top1 before
any SVD weights are made from it (catches BGR/RGB and normalisation mistakes early).

By hand:  python workflow_scripts/teacher_eval.py --config config/config.yaml --teacher demo_r18
"""

import argparse

from kdflow import paths
from kdflow.config import load_config, resolve_teacher_check
from kdflow.jobs.common import config_of, script_main
from kdflow.jobs.teacher import check_teacher


def job_args(cfg, name):
    check, results = resolve_teacher_check(cfg, name), cfg["results"]
    return argparse.Namespace(check=check, teacher=paths.teacher_weights(results, name),
                              manifest=paths.dataset_manifest(results, check["dataset"]["name"], "test"),
                              out=paths.teacher_check(results, name))


def from_snakemake(smk):
    return job_args(config_of(smk), smk.wildcards.teacher)


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--teacher", required=True, help="a teacher with a check: entry")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    return argparse.Namespace(**vars(job_args(load_config(args.config), args.teacher)), threads=args.threads)


def run(args):
    check_teacher(args.check, args.teacher, args.manifest, args.out)


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
