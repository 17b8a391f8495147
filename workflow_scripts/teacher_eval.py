"""Rule teacher_eval: a teacher's top-1 on a test manifest, checked against check.min_top1 before
any SVD weights are made from it (catches BGR/RGB and normalisation mistakes early).

By hand:  python workflow_scripts/teacher_eval.py --config config/config.yaml --teacher demo_r18
"""

import argparse

from kdflow import paths
from kdflow.config import load_config
from kdflow.jobs.common import script_main
from kdflow.jobs.teacher import check_teacher


def from_snakemake(smk):
    return argparse.Namespace(name=smk.wildcards.teacher, teacher=smk.input.teacher, manifest=smk.input.manifest,
                              check=smk.params.check, out=smk.output[0])


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--teacher", required=True, help="a teacher with a check: entry")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    cfg = load_config(args.config)
    results = cfg["results"]
    check = cfg["teachers"][args.teacher]["check"]
    return argparse.Namespace(name=args.teacher, teacher=paths.teacher_weights(results, args.teacher),
                              manifest=paths.dataset_manifest(results, check["dataset"], "test"), check=check,
                              out=paths.teacher_check(results, args.teacher), threads=args.threads)


def run(args):
    check_teacher(args.name, args.teacher, args.manifest, args.check, args.out)


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
