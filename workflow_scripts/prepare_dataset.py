"""Rule prepare_dataset: a dataset as distributed -> its train and test manifests.

By hand:  python workflow_scripts/prepare_dataset.py --config config/config.yaml --dataset demo_shapes
"""

import argparse

from kdflow import paths
from kdflow.config import load_config, resolve_dataset
from kdflow.jobs.common import config_of, script_main
from kdflow.jobs.data import prepare_dataset


def job_args(cfg, dataset, threads):
    manifests = {split: paths.dataset_manifest(cfg["results"], dataset, split) for split in ("train", "test")}
    return argparse.Namespace(dataset=resolve_dataset(cfg, dataset), manifests=manifests, threads=threads)


def from_snakemake(smk):
    return job_args(config_of(smk), smk.wildcards.dataset, smk.threads)


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--dataset", required=True, help="name of an entry under datasets:")
    parser.add_argument("--threads", type=int, default=1, help="processes decoding images (image_check)")
    args = parser.parse_args()
    return job_args(load_config(args.config), args.dataset, args.threads)


def run(args):
    print(prepare_dataset(args.dataset, args.manifests, workers=args.threads or 1))


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
