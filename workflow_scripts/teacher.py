"""Rule teacher: turn a configured teacher (timm pretrained, local file, random init, or trained
by the pipeline) into teachers/<name>/model.safetensors.

By hand:  python workflow_scripts/teacher.py --config config/config.yaml --teacher demo_r18 --threads 2
"""

import argparse

from kdflow import paths
from kdflow.config import load_config, resolve_teacher
from kdflow.jobs.common import add_gpus_option, config_of, script_main
from kdflow.jobs.teacher import build_teacher


def job_args(cfg, name):
    teacher, results = resolve_teacher(cfg, name), cfg["results"]
    manifest = val_manifest = None
    if "train" in teacher:
        data = teacher["train"]["data"]
        manifest = paths.subset_manifest(results, data["name"])
        val_manifest = paths.dataset_manifest(results, data["dataset"]["name"], "test")
    return argparse.Namespace(teacher=teacher, out_dir=paths.teacher_dir(results, name),
                              state=paths.state_dir(results, "teacher", name), manifest=manifest,
                              val_manifest=val_manifest)


def from_snakemake(smk):
    return job_args(config_of(smk), smk.wildcards.teacher)


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--teacher", required=True, help="name of an entry under teachers:")
    parser.add_argument("--threads", type=int, default=None)
    add_gpus_option(parser)
    args = parser.parse_args()
    return argparse.Namespace(**vars(job_args(load_config(args.config), args.teacher)), threads=args.threads,
                              gpus=args.gpus)


def run(args):
    build_teacher(args.teacher, args.out_dir, args.state, args.manifest, args.val_manifest)


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run, multi_gpu=True)
