"""Rule pretrain: one pre-training run (kdep, fkd, supervised, ...) -> pretrain/<run>/student.safetensors.

Resumable: the training state lives in <results>/state/pretrain/<run>/ (saved at every epoch end,
and mid-epoch on a stop signal: SLURM's pre-timeout signal, scancel, preemption); a re-run
continues from the last saved step.

By hand:  python workflow_scripts/pretrain.py --config config/config.yaml --run-id kdep_r18_r18_in48 --threads 2
On N GPUs of one node (N DDP processes, the config's global batch):  add --gpus N
"""

import argparse
import os

from kdflow import paths
from kdflow.config import METHODS_WITH_HEAD, load_config, resolve_run, svd_subset_of
from kdflow.jobs.common import add_gpus_option, script_main
from kdflow.jobs.pretrain import import_student, pretrain


def from_snakemake(smk):
    soft_labels = smk.input.get("soft_labels")
    return argparse.Namespace(run=smk.params.run, manifest=smk.input.get("manifest"), out_dir=smk.params.out_dir,
                              state=smk.params.state, teacher=smk.input.get("teacher"), svd=smk.input.get("svd"),
                              soft_labels=os.path.dirname(soft_labels) if soft_labels else None,
                              val_manifest=smk.input.get("val_manifest"))


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--run-id", dest="run", required=True, help="name of an entry under pretrain:")
    parser.add_argument("--threads", type=int, default=None)
    add_gpus_option(parser)
    args = parser.parse_args()
    cfg = load_config(args.config)
    results = cfg["results"]
    run = resolve_run(cfg, args.run)
    teacher = run.get("teacher", {}).get("name")
    return argparse.Namespace(
        run=run, manifest=paths.subset_manifest(results, run["data"]["name"]) if "data" in run else None,
        out_dir=paths.pretrain_dir(results, args.run), state=paths.state_dir(results, "pretrain", args.run),
        teacher=paths.teacher_weights(results, teacher) if teacher else None,
        svd=paths.svd_file(results, teacher, svd_subset_of(cfg, args.run)) if run["method"] == "kdep" else None,
        soft_labels=paths.soft_labels_dir(results, run["fkd"]["soft_labels"]) if run["method"] == "fkd" else None,
        val_manifest=(paths.dataset_manifest(results, run["data"]["dataset"]["name"], "test")
                      if run["method"] in METHODS_WITH_HEAD else None),
        threads=args.threads, gpus=args.gpus)


def run(args):
    if args.run["method"] == "imported":
        import_student(args.run, args.out_dir)
        return
    pretrain(args.run, args.manifest, args.out_dir, args.state, teacher_path=args.teacher, svd_path=args.svd,
             soft_labels=args.soft_labels, val_manifest_path=args.val_manifest)


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run, multi_gpu=True)
