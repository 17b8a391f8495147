"""Rule kdep_targets: merge the shards of a teacher-feature store into its index, and write
store.json (codec, crops per image, sampling, what it was made from, sha256 of every shard, the
generation cost and its break-even epoch count).

By hand:  python workflow_scripts/kdep_targets.py --config config/config.yaml --targets demo_r18_in48_targets
"""

import argparse

from kdflow.config import load_config
from kdflow.jobs.common import config_of, script_main
from kdflow.jobs.kdep_targets import kdep_target_job_paths, kdep_target_store


def from_snakemake(smk):
    return argparse.Namespace(**kdep_target_job_paths(config_of(smk), smk.wildcards.targets))


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--targets", required=True, help="name of an entry under kdep_targets:")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    job = kdep_target_job_paths(load_config(args.config), args.targets)
    return argparse.Namespace(**job, threads=args.threads)


def run(args):
    print(kdep_target_store(args.spec, args.manifest, args.out_dir, args.teacher, args.svd))


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
