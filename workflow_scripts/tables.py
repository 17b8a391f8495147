"""Rule tables: the transfer results of one task -> results/tables/<task>.{csv,md}.

Reads only the metrics.json files of the config's transfer jobs (never stale files of runs the
config no longer has), so editing a table's layout never retrains anything.

By hand:  python workflow_scripts/tables.py --config config/config.yaml [--task classification]
"""

import argparse

from kdflow import paths
from kdflow.config import load_config, transfer_jobs
from kdflow.jobs.common import script_main
from kdflow.report.collect import collect
from kdflow.report.tables import write_task_table


def from_snakemake(smk):
    return argparse.Namespace(task=smk.wildcards.task, metrics=list(smk.input.metrics), csv=smk.output.csv,
                              md=smk.output.md, report=smk.params.report, run_order=smk.params.run_order)


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--task", default="classification")
    args = parser.parse_args()
    cfg = load_config(args.config)
    results = cfg["results"]
    metrics = [paths.transfer_metrics(results, j["task"], j["dataset"], j["run"], j["seed"])
               for j in transfer_jobs(cfg) if j["task"] == args.task]
    return argparse.Namespace(task=args.task, metrics=metrics, csv=paths.table(results, args.task, "csv"),
                              md=paths.table(results, args.task, "md"), report=cfg["report"],
                              run_order=list(cfg["pretrain"]))


def run(args):
    stats = write_task_table(collect(args.metrics), args.task, args.csv, args.md, metric=args.report.get("metric"),
                             checkpoint=args.report["checkpoint"], run_order=args.run_order)
    print(stats.to_string(index=False))


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
