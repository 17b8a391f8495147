"""Rule transfer_cls: fine-tune one pre-trained run on one downstream dataset with one seed.

By hand:  python workflow_scripts/transfer_cls.py --config config/config.yaml \
              --dataset demo_shapes --run-id kdep_r18_r18_in48 --seed 0 --threads 1
"""

import argparse

from kdflow import paths
from kdflow.config import load_config, method_of, protocol_for, resolve_dataset, resolve_protocol, resolve_run
from kdflow.jobs.common import add_gpus_option, config_of, script_main
from kdflow.jobs.transfer import transfer_classification

TASK = "classification"


def job_args(cfg, dataset, run, seed):
    results = cfg["results"]
    student = None if method_of(cfg, run).student == "none" else paths.student_weights(results, run)
    return argparse.Namespace(
        run=resolve_run(cfg, run), dataset=resolve_dataset(cfg, dataset),
        protocol=resolve_protocol(cfg, protocol_for(cfg, TASK, dataset, run, seed)), seed=seed,
        out_dir=paths.transfer_dir(results, TASK, dataset, run, seed),
        state=paths.state_dir(results, "transfer", TASK, dataset, run, f"seed{seed}"), student=student,
        manifests={split: paths.dataset_manifest(results, dataset, split) for split in ("train", "test")})


def from_snakemake(smk):
    return job_args(config_of(smk), smk.wildcards.dataset, smk.wildcards.run, int(smk.wildcards.seed))


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--run-id", dest="run", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None)
    add_gpus_option(parser)
    args = parser.parse_args()
    return argparse.Namespace(**vars(job_args(load_config(args.config), args.dataset, args.run, args.seed)),
                              threads=args.threads, gpus=args.gpus)


def run(args):
    transfer_classification(args.run, args.dataset, args.protocol, args.seed, args.out_dir, args.state,
                            args.manifests, args.student)


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run, multi_gpu=True)
