"""The report jobs: a config's plan for the collector, and ``kdflow report`` (all three report steps
over whatever results folders hold, without Snakemake)."""

from __future__ import annotations

from pathlib import Path

from kdflow.config import method_of, transfer_jobs
from kdflow.report.build import make_plots, make_tables, read_collection, write_collection
from kdflow.report.collect import Collection, Job, Plan, collect_results
from kdflow.report.outputs import THROUGHPUT_BENCHMARK, PUBLISHED_DIR


def _run_meta(cfg: dict, name: str) -> dict:
    run = cfg["pretrain"][name]
    subset = cfg["subsets"].get(run["data"]) if run.get("data") else None
    return {
        "run": name,
        "method": method_of(cfg, name).name,
        "teacher": run.get("teacher"),
        "student": cfg["students"][run["student"]]["arch"],
        "pretrain_data": run.get("data"),
        "pretrain_fraction": subset.get("fraction") if subset else None,
        "pretrain_epochs": (run.get("training") or {}).get("epochs"),
        "soft_labels": (run.get("fkd") or {}).get("soft_labels"),
        "pretrain_seed": run["training"]["seed"] if "replica_of" in run else None,
        "replica_of": run.get("replica_of"),
    }


def report_plan(cfg: dict) -> Plan:
    """Every pre-training run that makes a student, then every transfer job, in the config's order."""
    runs = [Job("pretrain", name) for name in cfg["pretrain"] if method_of(cfg, name).student != "none"]
    transfers = [Job("transfer", j["run"], j["task"], j["dataset"], int(j["seed"]), j["protocol"], j["student_run"])
                 for j in transfer_jobs(cfg)]
    return Plan(jobs=runs + transfers, runs={name: _run_meta(cfg, name) for name in cfg["pretrain"]},
                dataset_formats={name: ds.get("format") for name, ds in cfg["datasets"].items()})


def build_report(cfg: dict, roots: list[str | Path], out_root: str | Path | None = None,
                 published_dir: str | Path = PUBLISHED_DIR) -> Collection:
    """``kdflow report``: the three steps over whatever the results folders hold, into
    ``out_root``/tables and ``out_root``/plots (default: the first results folder)."""
    out_root = Path(out_root or roots[0])
    tables_dir, plots_dir = out_root / "tables", out_root / "plots"
    write_collection(collect_results(report_plan(cfg), roots), tables_dir)
    collection = read_collection(tables_dir)  # what the workflow's later steps see, exactly
    make_tables(collection, cfg["report"], published_dir, tables_dir)
    benchmark = next((Path(r) / THROUGHPUT_BENCHMARK for r in roots if (Path(r) / THROUGHPUT_BENCHMARK).is_file()), None)
    make_plots(collection, cfg["report"], plots_dir, benchmark)
    return collection
