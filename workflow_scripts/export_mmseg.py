"""Rule export_mmseg: a pre-trained student -> pretrain/<run>/export/mmseg/backbone.pth, an
mmsegmentation backbone state dict loaded strictly before it is written, with its key report.

By hand:  python workflow_scripts/export_mmseg.py --config config/config.yaml --run-id kdep_r18_r18_in48
"""

import argparse
from pathlib import Path

from kdflow import paths
from kdflow.config import load_config, method_of
from kdflow.jobs.common import script_main
from kdflow.jobs.export import export_mmseg_job

ENGINE = "mmseg"


def job_args(cfg, run):
    if run not in cfg["pretrain"]:
        raise SystemExit(f"no run {run!r} under pretrain: in the config")
    if method_of(cfg, run).student == "none":
        raise SystemExit(f"run {run!r} (method {cfg['pretrain'][run]['method']!r}) has no student to export")
    results = cfg["results"]
    return argparse.Namespace(run=run, student=paths.student_weights(results, run),
                              out_dir=paths.export_dir(results, run, ENGINE))


def from_snakemake(smk):
    """The rule's own paths; the job names its files, so the declared ones must be those names."""
    out_dir = Path(smk.output.weights).parent
    expected = {"weights": out_dir / Path(paths.export_weights("", "", ENGINE)).name,
                "report": out_dir / Path(paths.export_report("", "", ENGINE)).name}
    for name, path in expected.items():
        if Path(smk.output[name]) != path:
            raise ValueError(f"rule {smk.rule}: output {name} is {smk.output[name]}, the job writes {path}")
    return argparse.Namespace(run=smk.wildcards.run, student=smk.input.student, out_dir=str(out_dir))


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--run-id", dest="run", required=True, help="name of an entry under pretrain:")
    args = parser.parse_args()
    return job_args(load_config(args.config), args.run)


def run(args):
    export_mmseg_job(args.run, args.student, args.out_dir)


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
