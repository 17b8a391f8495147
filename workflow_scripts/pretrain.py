"""Rule pretrain: one pre-training run (any declared method) -> pretrain/<run>/student.safetensors.

Resumable: the training state lives in <results>/state/pretrain/<run>/ (saved at every epoch end,
and mid-epoch on a stop signal: SLURM's pre-timeout signal, scancel, preemption); a re-run
continues from the last saved step.

By hand:  python workflow_scripts/pretrain.py --config config/config.yaml --run-id kdep_r18_r18_in48.seed0 --threads 2
On N GPUs of one node (N DDP processes, the config's global batch):  add --gpus N
"""

import argparse

from kdflow import paths
from kdflow.config import artefact_paths, load_config, method_of, resolve_run
from kdflow.jobs.common import add_gpus_option, config_of, script_main
from kdflow.jobs.pretrain import import_student, pretrain


def job_args(cfg, name):
    """What the run reads, as its method declares (the same paths the Snakefile asks for)."""
    run, decl, results = resolve_run(cfg, name), method_of(cfg, name), cfg["results"]
    args = argparse.Namespace(run=run, student=decl.student, out_dir=paths.pretrain_dir(results, name),
                              state=paths.state_dir(results, "pretrain", name), manifest=None, teacher=None,
                              val_manifest=None, artefacts={})
    if decl.trains:
        args.manifest = paths.subset_manifest(results, run["data"]["name"])
        args.artefacts = artefact_paths(cfg, name)
        if decl.teacher:
            args.teacher = paths.teacher_weights(results, run["teacher"]["name"])
        if decl.head:
            args.val_manifest = paths.dataset_manifest(results, run["data"]["dataset"]["name"], "test")
    return args


def from_snakemake(smk):
    return job_args(config_of(smk), smk.wildcards.run)


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--run-id", dest="run", required=True, help="name of an entry under pretrain:")
    parser.add_argument("--threads", type=int, default=None)
    add_gpus_option(parser)
    args = parser.parse_args()
    return argparse.Namespace(**vars(job_args(load_config(args.config), args.run)), threads=args.threads,
                              gpus=args.gpus)


def run(args):
    if args.student == "checkpoint":
        import_student(args.run, args.out_dir)
    elif args.student == "trained":
        pretrain(args.run, args.manifest, args.out_dir, args.state, teacher_path=args.teacher,
                 artefacts=args.artefacts, val_manifest_path=args.val_manifest)
    else:
        raise SystemExit(f"run {args.run['name']!r} (method {args.run['method']!r}) has no pre-training to do")


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run, multi_gpu=True)
