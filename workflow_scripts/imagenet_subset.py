"""Rule imagenet_subset: a seeded per-class subset of an ImageFolder split, written as a manifest.

By hand:  python workflow_scripts/imagenet_subset.py --config config/config.yaml --subset demo_in_48
"""

import argparse

from kdflow import paths
from kdflow.config import load_config, resolve_subset
from kdflow.jobs.common import script_main
from kdflow.jobs.data import imagenet_subset


def from_snakemake(smk):
    return argparse.Namespace(subset=smk.params.subset, train=smk.input.train, manifest=smk.output.manifest,
                              symlinks=smk.params.symlinks)


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--subset", required=True, help="name of an entry under subsets:")
    args = parser.parse_args()
    cfg = load_config(args.config)
    subset = resolve_subset(cfg, args.subset)
    return argparse.Namespace(subset=subset,
                              train=paths.dataset_manifest(cfg["results"], subset["dataset"]["name"], "train"),
                              manifest=paths.subset_manifest(cfg["results"], args.subset),
                              symlinks=paths.subset_symlinks(cfg["results"], args.subset))


def run(args):
    print(imagenet_subset(args.subset, args.train, args.manifest, args.symlinks))


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
