"""Run every benchmark and write one summary of their ratios (Markdown and JSON).

    python benchmarks/run_all.py                 # CPU, about 10 minutes on 2 cores
    python benchmarks/run_all.py --device cuda   # on a GPU machine (larger inputs and batches)
    python benchmarks/run_all.py --quick         # tiny settings: checks that everything runs

Each benchmark writes its JSON (with the machine it ran on) under results/benchmarks/;
the summary is results/benchmarks/summary.{md,json}. ``demo_wall`` reads the demo's own
Snakemake benchmark files and is left out (named in the summary) when no demo has run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, RESULTS, machine, write_report

HERE = Path(__file__).resolve().parent

QUICK = {
    "pretrain_throughput": ["--images", "8", "--image-size", "64x48", "--input-size", "32", "--batch", "8",
                            "--workers", "0", "--stored-crops", "4", "--warmup", "1", "--windows", "2",
                            "--window-steps", "1", "--teacher", "resnet50"],
    "input_pipeline": ["--images", "8", "--image-size", "64x48", "--size", "32", "--batch", "4", "--windows", "2",
                       "--window-steps", "1"],
    "svd_pass": ["--teacher", "resnet18", "--size", "32", "--batch", "8", "--windows", "2", "--window-steps", "1",
                 "--memory-features", "512,2048"],
    "dag": ["--scale", "2", "--repeats", "1"],
}
CUDA = {"pretrain_throughput": ["--device", "cuda", "--input-size", "224", "--batch", "128", "--workers", "8",
                                "--images", "512"]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--results", default=str(REPO / "results"), help="the demo's results root (for demo_wall)")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--only", default=None, help="comma-separated benchmark names")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    names = ["pretrain_throughput", "input_pipeline", "svd_pass", "dag", "demo_wall"]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    reports, skipped, seconds = {}, {}, {}
    for name in names:
        if name == "demo_wall" and not (Path(args.results) / "benchmarks").is_dir():
            skipped[name] = f"no demo results under {args.results} (run `snakemake --cores 2` first)"
            continue
        extra = QUICK.get(name, []) if args.quick else CUDA.get(name, []) if args.device.startswith("cuda") else []
        if name == "demo_wall":
            extra = ["--results", args.results]
        out = out_dir / f"{name}.json"
        print(f"=== {name}", flush=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / f"{name}.py"), *extra, "--out", str(out)], check=True)
        seconds[name] = round(time.perf_counter() - started, 1)
        reports[name] = json.loads(out.read_text())
    summary = {"machine": machine(args.device), "quick": args.quick, "seconds": seconds, "skipped": skipped,
               "ratios": {name: report.get("ratios", {}) for name, report in reports.items()}}
    write_report(out_dir / "summary.json", summary)
    (out_dir / "summary.md").write_text(markdown(summary, reports))
    print((out_dir / "summary.md").read_text())
    return summary


def markdown(summary: dict, reports: dict) -> str:
    m = summary["machine"]
    lines = ["# kdflow benchmarks", "",
             f"Machine: {m.get('gpu') or m['processor']}, {m['cpus']} CPUs, {m['threads']} torch threads, "
             f"torch {m['torch']}{' (quick settings)' if summary['quick'] else ''}.", ""]
    for name, report in reports.items():
        lines += [f"## {name} ({summary['seconds'][name]} s)", "", "| ratio | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in report.get("ratios", {}).items()]
        lines.append("")
    for name, why in summary["skipped"].items():
        lines += [f"## {name}: skipped", "", why, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
