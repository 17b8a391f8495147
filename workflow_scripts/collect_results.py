"""Rule collect_results: every result of the config's jobs (metrics.json + provenance.json) ->
results/tables/all_results.csv (one row per seed, metric and checkpoint), pretrain_runs.csv (one
row per pre-training run: cost, own top-1) and jobs.json. Every job must have its result; for
partial results use `python -m kdflow report`.

By hand:  python workflow_scripts/collect_results.py --config config/config.yaml
"""

import argparse
from pathlib import Path

from kdflow import paths
from kdflow.config import load_config
from kdflow.jobs.common import config_of, script_main
from kdflow.report.build import require_complete, write_collection
from kdflow.jobs.report import report_plan
from kdflow.report.collect import collect_results


def from_snakemake(smk):
    cfg = config_of(smk)
    return argparse.Namespace(cfg=cfg, tables=Path(smk.output.results).parent)


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    cfg = load_config(parser.parse_args().config)
    return argparse.Namespace(cfg=cfg, tables=Path(paths.table(cfg["results"], "all_results", "csv")).parent)


def run(args):
    collection = collect_results(report_plan(args.cfg), [args.cfg["results"]])
    require_complete(collection)
    write_collection(collection, args.tables)
    print(f"{len(collection.results)} values of {collection.results[['task', 'dataset', 'run', 'seed']].drop_duplicates().shape[0]} "
          f"transfer jobs, {collection.runs['source'].notna().sum()} pre-training runs -> {args.tables}")


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
