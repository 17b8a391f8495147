"""Rule tables: the collected results (rule collect_results) and the published numbers
(config/published/*.yaml) -> every paper table under results/tables/ in CSV, Markdown and LaTeX:
one per task, the main table (every task side by side, published numbers beside), pre-training
cost, pre-training results, and the published numbers themselves.

Reads results only, so editing a table's layout or the aggregation rule never retrains anything.

By hand:  python workflow_scripts/tables.py --config config/config.yaml   (collects first)
"""

import argparse
from pathlib import Path

from kdflow import paths
from kdflow.config import load_config
from kdflow.jobs.common import config_of, script_main
from kdflow.report.build import make_tables, read_collection, require_complete, write_collection
from kdflow.jobs.report import report_plan
from kdflow.report.collect import collect_results
from kdflow.report.outputs import PUBLISHED_DIR


def from_snakemake(smk):
    # the published files are the rule's inputs (re-run triggers); their folder is the repository's
    return argparse.Namespace(cfg=config_of(smk), tables=Path(smk.input.results).parent, published=PUBLISHED_DIR,
                              collect=False)


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--published", default=str(PUBLISHED_DIR), help="folder of the published numbers' YAML files")
    args = parser.parse_args()
    cfg = load_config(args.config)
    return argparse.Namespace(cfg=cfg, tables=Path(paths.table(cfg["results"], "all_results", "csv")).parent,
                              published=args.published, collect=True)


def run(args):
    if args.collect:
        collection = collect_results(report_plan(args.cfg), [args.cfg["results"]])
        require_complete(collection)
        write_collection(collection, args.tables)
    written = make_tables(read_collection(args.tables), args.cfg["report"], args.published, args.tables)
    print("\n".join(f"{name}: {', '.join(str(p) for p in files.values())}" for name, files in written.items()))


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
