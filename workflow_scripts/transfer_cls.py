"""Rule transfer_cls: fine-tune one pre-trained run on one downstream dataset with one seed.

By hand:  python workflow_scripts/transfer_cls.py --config config/config.yaml \
              --dataset demo_shapes --run-id kdep_r18_r18_in48 --seed 0 --threads 1
"""

import argparse
from pathlib import Path

from kdflow import paths
from kdflow.config import load_config, protocol_for, resolve_dataset, resolve_protocol, resolve_run
from kdflow.jobs.common import add_gpus_option, script_main
from kdflow.transfer.classification import finetune

TASK = "classification"


def from_snakemake(smk):
    return argparse.Namespace(run=smk.params.run, dataset=smk.params.dataset, protocol=smk.params.protocol,
                              seed=int(smk.wildcards.seed), out_dir=Path(smk.output.metrics).parent,
                              state=smk.params.state, student=smk.input.get("student"),
                              manifests={"train": smk.input.train, "test": smk.input.test})


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--run-id", dest="run", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None)
    add_gpus_option(parser)
    args = parser.parse_args()
    cfg = load_config(args.config)
    results = cfg["results"]
    run = resolve_run(cfg, args.run)
    student = None if run["method"] == "scratch" else paths.student_weights(results, args.run)
    return argparse.Namespace(
        run=run, dataset=resolve_dataset(cfg, args.dataset),
        protocol=resolve_protocol(cfg, protocol_for(cfg, TASK, args.dataset, args.run, args.seed)),
        seed=args.seed, out_dir=paths.transfer_dir(results, TASK, args.dataset, args.run, args.seed),
        state=paths.state_dir(results, "transfer", TASK, args.dataset, args.run, f"seed{args.seed}"),
        student=student, threads=args.threads, gpus=args.gpus,
        manifests={split: paths.dataset_manifest(results, args.dataset, split) for split in ("train", "test")})


def run(args):
    finetune(args.run, args.dataset, args.protocol, args.seed, args.out_dir, args.state, args.manifests, args.student)


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run, multi_gpu=True)
