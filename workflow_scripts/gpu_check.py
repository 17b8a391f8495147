"""Rule gpu_check: report what a job sees (devices, SLURM variables, CPU affinity) and, given N > 1
GPUs, check that N DDP ranks can all-reduce. Writes <results>/checks/gpu_check.json.

By hand:  python workflow_scripts/gpu_check.py --config config/config.yaml --gpus 2
On the cluster:  snakemake --profile slurm gpu_check --forcerun gpu_check
"""

import argparse

from kdflow import paths
from kdflow.config import load_config
from kdflow.jobs.common import add_gpus_option, script_main
from kdflow.jobs.gpu_check import gpu_check


def from_snakemake(smk):
    return argparse.Namespace(out=smk.output[0])


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--threads", type=int, default=None)
    add_gpus_option(parser)
    args = parser.parse_args()
    return argparse.Namespace(out=paths.gpu_check(load_config(args.config)["results"]), threads=args.threads,
                              gpus=args.gpus)


def run(args):
    gpu_check(args.out)


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run, multi_gpu=True)
