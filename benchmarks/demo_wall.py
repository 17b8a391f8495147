"""Where the demo's wall time goes, from its own Snakemake benchmark files (the demo is not run
again): wall seconds per rule (jobs, total, mean), and each rule's per-job start-up overhead
(a fresh interpreter importing the rule's job module, timed here) as a share of its mean job.

    python benchmarks/demo_wall.py [--results results]      # after `snakemake --cores 2`
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, RESULTS, machine, write_report

# the module each rule's workflow script imports its job from
JOB_MODULES = {
    "demo_data": "kdflow.data.demo", "prepare_dataset": "kdflow.jobs.data", "imagenet_subset": "kdflow.jobs.data",
    "teacher": "kdflow.jobs.teacher", "teacher_eval": "kdflow.jobs.teacher", "svd_weights": "kdflow.jobs.svd",
    "fkd_soft_label_shard": "kdflow.jobs.softlabels", "fkd_soft_labels": "kdflow.jobs.softlabels",
    "kdep_target_shard": "kdflow.jobs.kdep_targets", "kdep_targets": "kdflow.jobs.kdep_targets",
    "pretrain": "kdflow.jobs.pretrain", "export_mmseg": "kdflow.jobs.export", "export_detectron2": "kdflow.jobs.export",
    "transfer_cls": "kdflow.jobs.transfer", "transfer_seg": "kdflow.jobs.transfer", "transfer_det": "kdflow.jobs.transfer",
    "report": "kdflow.jobs.report",  # collect_results, tables and plots keep their benchmarks under report/
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(REPO / "results"))
    p.add_argument("--out", default=str(RESULTS / "demo_wall.json"))
    return p.parse_args(argv)


def rule_walls(results: Path) -> dict[str, list[float]]:
    """``{rule: [wall seconds of each job]}`` from ``<results>/benchmarks/<rule>/**.tsv``."""
    walls: dict[str, list[float]] = {}
    for tsv in sorted((results / "benchmarks").glob("*/**/*.tsv")):
        rule = tsv.relative_to(results / "benchmarks").parts[0]
        with open(tsv, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if rows:
            walls.setdefault(rule, []).append(float(rows[-1]["s"]))
    return walls


def import_seconds(module: str, repeats: int = 3) -> float:
    """Median wall time of a fresh interpreter importing ``module``, minus a bare interpreter's."""
    def once(code: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
        return time.perf_counter() - started

    bare = statistics.median(once("pass") for _ in range(repeats))
    return max(statistics.median(once(f"import {module}") for _ in range(repeats)) - bare, 0.0)


def main(argv=None):
    args = parse_args(argv)
    results = Path(args.results)
    walls = rule_walls(results)
    if not walls:
        raise SystemExit(f"no Snakemake benchmark files under {results / 'benchmarks'}: run the demo first")
    imports = {m: round(import_seconds(m), 3) for m in sorted({JOB_MODULES.get(r) for r in walls} - {None})}
    rules = {}
    for rule, seconds in sorted(walls.items(), key=lambda kv: -sum(kv[1])):
        mean = statistics.mean(seconds)
        start_up = imports.get(JOB_MODULES.get(rule))
        rules[rule] = {"jobs": len(seconds), "total_s": round(sum(seconds), 2), "mean_s": round(mean, 2),
                       "start_up_s": start_up,
                       "start_up_share": round(start_up / mean, 3) if start_up is not None and mean else None}
    total = sum(r["total_s"] for r in rules.values())
    start_up_total = sum(r["start_up_s"] * r["jobs"] for r in rules.values() if r["start_up_s"] is not None)
    report = {"benchmark": "demo_wall", "machine": machine(), "results": str(results), "rules": rules,
              "job_seconds_total": round(total, 1), "import_seconds_by_module": imports,
              "ratios": {"start_up_share_of_job_seconds": round(start_up_total / total, 3) if total else None}}
    write_report(args.out, report)
    for rule, r in rules.items():
        print(f"{rule:24s} {r['jobs']:3d} jobs {r['total_s']:8.1f} s  start-up share {r['start_up_share']}")
    return report


if __name__ == "__main__":
    main()
