"""Rule transfer_det: fine-tune one pre-trained run on one detection dataset with one seed.

By hand:  python workflow_scripts/transfer_det.py --config config/config.yaml \
              --dataset demo_det --run-id kdep_r18_r18_in48 --seed 0 --threads 1
"""

from kdflow.jobs.common import config_of, script_main
from kdflow.jobs.transfer import transfer_detection, cli_args, job_args

TASK = "detection"


def from_snakemake(smk):
    return job_args(config_of(smk), TASK, smk.wildcards.dataset, smk.wildcards.run, int(smk.wildcards.seed))


def from_cli():
    return cli_args(TASK, __doc__)


def run(args):
    transfer_detection(args.run, args.dataset, args.protocol, args.seed, args.out_dir, args.state, args.manifests, args.student)


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run, multi_gpu=True)
