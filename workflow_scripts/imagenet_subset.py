"""Rule imagenet_subset: a seeded per-class subset of a dataset's train split, written as a manifest.

By hand:  python workflow_scripts/imagenet_subset.py --config config/config.yaml --subset demo_in_48
"""

import argparse

from kdflow import paths
from kdflow.config import load_config, resolve_subset
from kdflow.jobs.common import config_of, script_main
from kdflow.jobs.data import imagenet_subset


def job_args(cfg, name):
    subset, results = resolve_subset(cfg, name), cfg["results"]
    return argparse.Namespace(subset=subset, train=paths.dataset_manifest(results, subset["dataset"]["name"], "train"),
                              manifest=paths.subset_manifest(results, name),
                              symlinks=paths.subset_symlinks(results, name))


def from_snakemake(smk):
    return job_args(config_of(smk), smk.wildcards.subset)


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--subset", required=True, help="name of an entry under subsets:")
    args = parser.parse_args()
    return job_args(load_config(args.config), args.subset)


def run(args):
    print(imagenet_subset(args.subset, args.train, args.manifest, args.symlinks))


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
