"""Rule svd_weights: PCA (mean, V, singular values, N) of a teacher's pooled pre-ReLU features
over a subset, in one streaming pass.

By hand:  python workflow_scripts/svd_weights.py --config config/config.yaml --teacher T --subset S
"""

import argparse

from kdflow import paths
from kdflow.config import load_config
from kdflow.jobs.common import script_main
from kdflow.jobs.svd import svd_weights
from kdflow.models.network import num_features_of


def from_snakemake(smk):
    return argparse.Namespace(teacher=smk.input.teacher, manifest=smk.input.manifest, out=smk.output[0],
                              settings=smk.params.settings, student_archs=smk.params.student_archs,
                              name=f"{smk.wildcards.teacher}/{smk.wildcards.subset}")


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--subset", required=True)
    parser.add_argument("--student-arch", action="append", default=[], help="check the rank for this student")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    cfg = load_config(args.config)
    results = cfg["results"]
    return argparse.Namespace(teacher=paths.teacher_weights(results, args.teacher),
                              manifest=paths.subset_manifest(results, args.subset),
                              out=paths.svd_file(results, args.teacher, args.subset), settings=cfg["svd"],
                              student_archs=args.student_arch, name=f"{args.teacher}/{args.subset}",
                              threads=args.threads)


def run(args):
    width = max((num_features_of(a) for a in args.student_archs), default=0)
    print(svd_weights(args.teacher, args.manifest, args.settings, args.out, required_width=width, name=args.name))


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
