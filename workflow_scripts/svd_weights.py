"""Rule svd_weights: PCA (mean, V, singular values, N) of a teacher's pooled pre-ReLU features
over a subset, in one streaming pass.

By hand:  python workflow_scripts/svd_weights.py --config config/config.yaml --teacher T --subset S
"""

import argparse

from kdflow import paths
from kdflow.config import load_config, resolve_svd
from kdflow.jobs.common import config_of, script_main
from kdflow.jobs.svd import svd_weights
from kdflow.models.network import num_features_of


def job_args(cfg, teacher, subset, student_archs):
    results = cfg["results"]
    return argparse.Namespace(teacher=paths.teacher_weights(results, teacher),
                              manifest=paths.subset_manifest(results, subset),
                              out=paths.svd_file(results, teacher, subset), settings=resolve_svd(cfg, teacher, subset),
                              student_archs=student_archs)


def from_snakemake(smk):
    return job_args(config_of(smk), smk.wildcards.teacher, smk.wildcards.subset, smk.params.student_archs)


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--subset", required=True)
    parser.add_argument("--student-arch", action="append", default=[], help="check the rank for this student")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    return argparse.Namespace(**vars(job_args(load_config(args.config), args.teacher, args.subset, args.student_arch)),
                              threads=args.threads)


def run(args):
    width = max((num_features_of(a) for a in args.student_archs), default=0)
    print(svd_weights(args.teacher, args.manifest, args.settings, args.out, required_width=width))


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
