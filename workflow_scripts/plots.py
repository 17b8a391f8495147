"""Rule plots: the collected results (rule collect_results) and the jobs' log.csv files -> the
report's figures under results/plots/ (PNG and PDF): downstream scores per method, score vs
pre-training cost (KDEP's Figure 1), pre-training loss curves, transfer curves, and FKD
throughput when results/benchmarks/pretrain_throughput.json exists.

By hand:  python workflow_scripts/plots.py --config config/config.yaml   (after collect_results)
"""

import argparse
from pathlib import Path

from kdflow import paths
from kdflow.config import load_config
from kdflow.jobs.common import config_of, script_main
from kdflow.report.build import make_plots, read_collection
from kdflow.report.outputs import THROUGHPUT_BENCHMARK


def from_snakemake(smk):
    return argparse.Namespace(cfg=config_of(smk), tables=Path(smk.input.results).parent,
                              plots=Path(smk.output[0]).parent, benchmark=smk.input.get("throughput_benchmark"))


def from_cli():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    cfg = load_config(parser.parse_args().config)
    results = Path(cfg["results"])
    return argparse.Namespace(cfg=cfg, tables=Path(paths.table(results, "all_results", "csv")).parent,
                              plots=Path(paths.plots_dir(results)), benchmark=results / THROUGHPUT_BENCHMARK)


def run(args):
    written = make_plots(read_collection(args.tables), args.cfg["report"], args.plots, args.benchmark)
    print("\n".join(f"{name}: {', '.join(str(p) for p in files.values())}" for name, files in written.items()))


if __name__ == "__main__":
    script_main(globals(), from_snakemake, from_cli, run)
