"""Rule kdep_target_shard: one shard (a contiguous range of a subset's images) of a teacher-feature
store for teacher-free KDEP: the teacher's pooled features on num_crops stored crops per image, or
the KDEP targets made from them, in float16.

Resumable: records are committed to <results>/state/kdep_targets/<store>/ every `commit_every`
images; a re-run continues from the last commit and writes the same bytes as an uninterrupted run.

By hand:  python workflow_scripts/kdep_target_shard.py --config config/config.yaml --targets demo_r18_in48_targets --shard 0
"""

import argparse

from kdflow.config import load_config
from kdflow.jobs.common import config_of, script_main
from kdflow.jobs.kdep_targets import kdep_target_job_paths, kdep_target_shard


def from_snakemake(smk):
    return argparse.Namespace(**kdep_target_job_paths(config_of(smk), smk.wildcards.targets),
                              shard=int(smk.wildcards.shard))


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--targets", required=True, help="name of an entry under kdep_targets:")
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    job = kdep_target_job_paths(load_config(args.config), args.targets)
    return argparse.Namespace(**job, shard=args.shard, threads=args.threads)


def run(args):
    kdep_target_shard(args.spec, args.manifest, args.shard, args.out_dir, args.state, args.teacher, args.svd)


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
