"""Snakemake's planning time: ``snakemake -n`` for the KDEP paper grid and for a synthetic grid
``--scale`` times larger (every transfer grid's seeds multiplied), each as a ratio to a bare
``snakemake -n`` of an empty workflow on the same machine (start-up excluded that way).

Input and params functions run once per job: a function that rescanned the job list per call
would make the large grid's time grow with the square of its jobs, which the ratio
``scaled_over_paper`` (against ``scale``) shows. Written to ``results/benchmarks/dag.json``.

    python benchmarks/dag.py [--scale 10 --repeats 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from common import REPO, RESULTS, machine, ratio, write_report

EMPTY = "rule all:\n    input: []\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "config" / "kdep.yaml"))
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "dag.json"))
    return p.parse_args(argv)


def snakemake_n(snakefile: Path, workdir: Path, config: Path | None) -> tuple[float, int]:
    """Wall seconds of one dry run, and the number of jobs it planned."""
    cmd = [str(Path(__import__("sys").executable).parent / "snakemake"), "-n", "--quiet", "rules",
           "--snakefile", str(snakefile), "--directory", str(workdir)]
    if config is not None:  # the paper config's dataset paths are placeholders until a user fills them
        cmd += ["--configfile", str(config), "--config", "allow_placeholders=True"]
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    totals = re.findall(r"^total\s+(\d+)$", out.stdout + out.stderr, re.M)
    jobs = int(totals[-1]) if totals else 0
    return seconds, jobs


def scaled(config: Path, scale: int, dest: Path) -> Path:
    cfg = yaml.safe_load(config.read_text())
    for grid in cfg["transfer"]["grids"].values():
        seeds = list(grid["seeds"])
        grid["seeds"] = [s + k * 1000 for k in range(scale) for s in seeds]
    dest.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kdflow-dag-") as tmp:
        tmp = Path(tmp)
        (tmp / "empty").mkdir()
        (tmp / "empty" / "Snakefile").write_text(EMPTY)
        big = scaled(Path(args.config), args.scale, tmp / "scaled.yaml")
        cases = {"empty": (tmp / "empty" / "Snakefile", tmp / "empty", None),
                 "paper": (REPO / "Snakefile", tmp / "paper", Path(args.config)),
                 "scaled": (REPO / "Snakefile", tmp / "scaled", big)}
        results = {}
        for name, (snakefile, workdir, config) in cases.items():
            workdir.mkdir(exist_ok=True)
            runs = [snakemake_n(snakefile, workdir, config) for _ in range(args.repeats)]
            seconds = [s for s, _ in runs]
            results[name] = {"seconds_median": round(statistics.median(seconds), 3), "seconds": seconds,
                             "jobs": runs[0][1]}
            print(name, results[name], flush=True)
    empty = results["empty"]["seconds_median"]
    planning = {k: max(results[k]["seconds_median"] - empty, 1e-3) for k in ("paper", "scaled")}
    ratios = {"paper_over_empty": ratio(results["paper"]["seconds_median"], empty),
              "scaled_over_empty": ratio(results["scaled"]["seconds_median"], empty),
              # planning time beyond start-up, large grid over paper grid, against their job counts
              "scaled_over_paper_planning": ratio(planning["scaled"], planning["paper"]),
              "scaled_over_paper_jobs": ratio(results["scaled"]["jobs"], results["paper"]["jobs"])}
    report = {"benchmark": "dag", "machine": machine(), "settings": vars(args), "cases": results, "ratios": ratios}
    write_report(args.out, report)
    print(ratios, flush=True)
    return report


if __name__ == "__main__":
    main()
