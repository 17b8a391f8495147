"""Rule demo_data: generate one built-in synthetic dataset.

By hand:  python workflow_scripts/demo_data.py --config config/config.yaml --demo imagenet_like
"""

import argparse

from kdflow import paths
from kdflow.config import load_config, resolve_demo
from kdflow.jobs.common import config_of, script_main
from kdflow.jobs.data import demo_data


def job_args(cfg, demo):
    return argparse.Namespace(name=demo, spec=resolve_demo(cfg, demo), out=paths.demo_dataset(cfg["results"], demo))


def from_snakemake(smk):
    return job_args(config_of(smk), smk.wildcards.demo)


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--demo", required=True, help="name of an entry under demo:")
    args = parser.parse_args()
    return job_args(load_config(args.config), args.demo)


def run(args):
    print(demo_data(args.name, args.spec, args.out))


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
