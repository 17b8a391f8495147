"""Rule demo_data: generate one built-in synthetic dataset.

By hand:  python workflow_scripts/demo_data.py --config config/config.yaml --demo imagenet_like
"""

import argparse

from kdflow import paths
from kdflow.config import load_config
from kdflow.jobs.common import script_main
from kdflow.jobs.data import demo_data


def from_snakemake(smk):
    return argparse.Namespace(name=smk.wildcards.demo, spec=smk.params.spec, out=smk.output[0])


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--demo", required=True, help="name of an entry under demo:")
    args = parser.parse_args()
    cfg = load_config(args.config)
    return argparse.Namespace(name=args.demo, spec=cfg["demo"][args.demo],
                              out=paths.demo_dataset(cfg["results"], args.demo))


def run(args):
    print(demo_data(args.name, args.spec, args.out))


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
