"""What the report stage writes, known before it runs (the Snakefile's outputs), and the version
of the report code. Pandas- and matplotlib-free: the Snakefile imports it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

COLLECTION_FILES = {"results": "all_results.csv", "runs": "pretrain_runs.csv", "jobs": "jobs.json"}
# under a results root (made by benchmarks/pretrain_throughput.py)
THROUGHPUT_BENCHMARK = Path("benchmarks") / "pretrain_throughput.json"
PUBLISHED_DIR = Path(__file__).resolve().parents[3] / "config" / "published"  # the repository's


def code_version() -> str:
    """sha256 of the report code: a param of the report rules, so that a changed table layout or plot
    style re-runs them (Snakemake tracks a script's own code, not the modules it imports)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def table_names(tasks: Iterable[str]) -> list[str]:
    """The tables of a config whose transfer grids have ``tasks`` (each in .csv, .md and .tex)."""
    tasks = list(tasks)
    return [*tasks, "main", "cost", "pretraining", "published"] if tasks else ["pretraining", "published"]


def plot_names(tasks: Iterable[str], trained_runs: bool, throughput_benchmark: bool) -> list[str]:
    """The figures (each in .png and .pdf)."""
    names = ["downstream", "score_vs_cost", "transfer_curves"] if list(tasks) else []
    return names + (["pretrain_loss"] if trained_runs else []) + (["throughput"] if throughput_benchmark else [])
