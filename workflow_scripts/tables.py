"""Rule tables: every transfer metrics.json -> results/tables/classification.{csv,md}.

Reads only metrics.json files, so editing a table's layout never retrains anything.

By hand:  python workflow_scripts/tables.py --config config/config.yaml
"""

import argparse
import glob

from kdflow import paths
from kdflow.config import load_config
from kdflow.jobs.common import script_main
from kdflow.report.collect import collect
from kdflow.report.tables import write_classification_table


def from_snakemake(smk):
    return argparse.Namespace(metrics=list(smk.input.metrics), csv=smk.output.csv, md=smk.output.md,
                              report=smk.params.report, run_order=smk.params.run_order)


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    cfg = load_config(args.config)
    results = cfg["results"]
    pattern = paths.transfer_metrics(results, "classification", "*", "*", "*")
    return argparse.Namespace(metrics=sorted(glob.glob(pattern)), csv=paths.table(results, "classification", "csv"),
                              md=paths.table(results, "classification", "md"), report=cfg["report"],
                              run_order=list(cfg["pretrain"]))


def run(args):
    frame = collect(args.metrics)
    stats = write_classification_table(frame, args.csv, args.md, metric=args.report["metric"],
                                       checkpoint=args.report["checkpoint"], run_order=args.run_order)
    print(stats.to_string(index=False))


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
