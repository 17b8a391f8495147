"""Rule fkd_soft_labels: merge the shards of an FKD soft-label store into its index, and write
store.json (codec, crops per image, sampling, teacher, sha256 of every shard, recovery error).

By hand:  python workflow_scripts/fkd_soft_labels.py --config config/config.yaml --labels demo_r18_in48
"""

import argparse

from kdflow.config import load_config
from kdflow.jobs.common import config_of, script_main
from kdflow.jobs.softlabels import soft_label_job_paths, soft_label_store


def from_snakemake(smk):
    return argparse.Namespace(**soft_label_job_paths(config_of(smk), smk.wildcards.labels))


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--labels", required=True, help="name of an entry under soft_labels:")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    job = soft_label_job_paths(load_config(args.config), args.labels)
    return argparse.Namespace(**job, threads=args.threads)


def run(args):
    print(soft_label_store(args.spec, args.manifest, args.out_dir, teacher_path=args.teacher))


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
