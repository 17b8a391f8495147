"""Rule fkd_soft_label_shard: one shard (a contiguous range of a subset's images) of an FKD
soft-label store: multi-crop teacher distributions, quantised, or records imported from FKD's files.

Resumable: records are committed to <results>/state/softlabels/<set>/ every `commit_every` images;
a re-run continues from the last commit and writes the same bytes as an uninterrupted run.

By hand:  python workflow_scripts/fkd_soft_label_shard.py --config config/config.yaml --labels demo_r18_in48 --shard 0
"""

import argparse

from kdflow.config import load_config
from kdflow.jobs.common import config_of, script_main
from kdflow.jobs.softlabels import soft_label_job_paths, soft_label_shard


def from_snakemake(smk):
    return argparse.Namespace(**soft_label_job_paths(config_of(smk), smk.wildcards.labels),
                              shard=int(smk.wildcards.shard))


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--labels", required=True, help="name of an entry under soft_labels:")
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    job = soft_label_job_paths(load_config(args.config), args.labels)
    return argparse.Namespace(**job, shard=args.shard, threads=args.threads)


def run(args):
    soft_label_shard(args.spec, args.manifest, args.shard, args.out_dir, args.state, teacher_path=args.teacher)


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
