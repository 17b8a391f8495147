"""Results folders -> one tidy results frame (one row per metric value of a transfer job) and one
row per pre-training run (what it cost, what its own head scored).

The config says which jobs exist; the results folders say what they produced. Several folders
(a cluster's and a laptop's) are merged: a job's result is taken from the first folder that has
it. A job with no ``metrics.json`` anywhere is *failed* when a folder holds its log with an error
in it (Snakemake keeps the log of a failed job), *missing* otherwise; both are listed, never
guessed. Only ``metrics.json``, ``provenance.json``, ``log.csv`` and log files are read: a report
never needs a checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from kdflow import paths
from kdflow.io import read_json

RESULT_COLUMNS = [
    "run", "method", "teacher", "student", "pretrain_data", "pretrain_fraction", "pretrain_epochs", "task",
    "dataset", "dataset_format", "protocol", "seed", "metric", "checkpoint", "value", "run_config_hash",
    "protocol_hash", "git_commit", "pretrain_wall_s", "pretrain_device_hours", "transfer_wall_s",
    "transfer_device_hours", "pretrain_run", "pretrain_seed", "source",
]
RUN_COLUMNS = [
    "run", "method", "teacher", "student", "pretrain_data", "pretrain_fraction", "pretrain_epochs", "pretrain_seed",
    "replica_of", "images_seen",
    "pretrain_wall_s", "pretrain_device_hours", "device", "final_loss", "val_top1", "soft_label_bytes_per_crop",
    "run_config_hash", "git_commit", "source",
]
# Words of a Python traceback or of Snakemake's failure report in a job's log
_FAILURE = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception)\b|Killed|CANCELLED", re.M)


@dataclass(frozen=True)
class Job:
    """One result the config asks for: a transfer job, or a pre-training run that makes a student."""

    kind: str  # "transfer" or "pretrain"
    run: str
    task: str | None = None
    dataset: str | None = None
    seed: int | None = None
    protocol: str | None = None
    student_run: str | None = None  # the run a transfer job fine-tunes (another where ``run`` has pre-training seeds)

    @property
    def pretrained(self) -> str:
        return self.student_run or self.run

    @property
    def label(self) -> str:
        if self.kind == "pretrain":
            return f"pretrain/{self.run}"
        return f"{self.task}/{self.dataset}/{self.run}/seed{self.seed}"

    def metrics_path(self, root) -> Path:
        if self.kind == "pretrain":
            return Path(paths.pretrain_metrics(root, self.run))
        return Path(paths.transfer_metrics(root, self.task, self.dataset, self.run, self.seed))

    def log_paths(self, root) -> list[Path]:
        if self.kind == "pretrain":
            return [Path(paths.log_file(root, "pretrain", self.run))]
        from kdflow.tasks import TASKS

        rule = TASKS[self.task].rule
        return [Path(paths.log_file(root, rule, self.dataset, self.run, f"seed{self.seed}"))]


@dataclass
class Collection:
    results: pd.DataFrame  # RESULT_COLUMNS, one row per (transfer job, metric, checkpoint)
    runs: pd.DataFrame  # RUN_COLUMNS, one row per pre-training run of the config
    missing: list[str] = field(default_factory=list)  # job labels: no result, no failed log
    failed: list[str] = field(default_factory=list)  # job labels: no result, a log with an error
    roots: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        """Lines for the notes under every table: which roots fed it and what is not in it."""
        lines = [f"Results read from: {', '.join(self.roots)}."]
        if self.failed:
            lines.append(f"Failed jobs ({len(self.failed)}, not in the tables): {', '.join(self.failed)}.")
        if self.missing:
            lines.append(f"Missing jobs ({len(self.missing)}, not run yet): {', '.join(self.missing)}.")
        return lines


def _find(job: Job, roots: Sequence[Path]) -> Path | None:
    for root in roots:
        path = job.metrics_path(root)
        if path.is_file():
            return path
    return None


def _failed(job: Job, roots: Sequence[Path]) -> bool:
    for root in roots:
        for log in job.log_paths(root):
            if log.is_file() and _FAILURE.search(log.read_text(encoding="utf-8", errors="replace")):
                return True
    return False


def _provenance(metrics_path: Path) -> dict:
    path = metrics_path.parent / "provenance.json"
    return read_json(path) if path.is_file() else {}


def device_hours(provenance: dict) -> float | None:
    """Wall hours x devices: GPUs of the job (its world size) on CUDA, one CPU node otherwise."""
    wall = provenance.get("wall_seconds")
    if wall is None:
        return None
    device = str(provenance.get("device", ""))
    devices = provenance.get("world_size") or 1
    if not device.startswith("cuda") and devices > 1:
        devices = 1  # ranks of a CPU job share one node: a node-hour, not world_size of them
    return wall / 3600.0 * devices


def _images_seen(run_dir: Path) -> int | None:
    log = run_dir / "log.csv"
    if not log.is_file():
        return None
    frame = pd.read_csv(log)
    return int(frame["images"].sum()) if "images" in frame else None


def _soft_label_bytes(labels: str | None, roots: Sequence[Path]) -> float | None:
    if not labels:
        return None
    for root in roots:
        store = Path(paths.soft_labels_store(root, labels))
        if store.is_file():
            value = read_json(store).get("bytes_per_crop")
            return float(value) if value is not None else None
    return None


def _run_row(plan: "Plan", name: str, roots: Sequence[Path]) -> dict:
    row = {column: None for column in RUN_COLUMNS}
    row.update({k: v for k, v in plan.runs[name].items() if k in RUN_COLUMNS})
    found = _find(Job("pretrain", name), roots)
    if found is None:
        return row
    record, prov = read_json(found), _provenance(found)
    values = {m["metric"]: float(m["value"]) for m in record.get("metrics", [])}
    row.update({
        "images_seen": _images_seen(found.parent),
        "pretrain_wall_s": prov.get("wall_seconds"),
        "pretrain_device_hours": device_hours(prov),
        "device": prov.get("device"),
        "final_loss": values.get("train_loss"),
        "val_top1": values.get("val_top1"),
        "soft_label_bytes_per_crop": _soft_label_bytes(plan.runs[name].get("soft_labels"), roots),
        "run_config_hash": record.get("config_hash") or prov.get("config_hash"),
        "git_commit": prov.get("git_commit"),
        "source": str(found),
    })
    return row


def _transfer_rows(job: Job, path: Path, run_row: dict, dataset_format: str | None) -> list[dict]:
    """Rows of one transfer job, under the grid's run name (a run with pre-training seeds is one row
    of a table: ``pretrain_run``/``pretrain_seed`` say which of its runs this job fine-tuned)."""
    record, prov = read_json(path), _provenance(path)
    rows = []
    for m in record["metrics"]:
        rows.append({
            **{k: run_row[k] for k in ("method", "teacher", "student", "pretrain_data",
                                       "pretrain_fraction", "pretrain_epochs", "pretrain_wall_s",
                                       "pretrain_device_hours")},
            "run": job.run, "pretrain_run": job.pretrained,
            "pretrain_seed": run_row["pretrain_seed"],
            "task": record["task"], "dataset": record.get("dataset"), "dataset_format": dataset_format,
            "protocol": record.get("protocol"), "seed": record.get("seed"), "metric": m["metric"],
            "checkpoint": m.get("checkpoint", "final"), "value": float(m["value"]),
            "run_config_hash": record.get("run_config_hash"), "protocol_hash": record.get("protocol_hash"),
            "git_commit": prov.get("git_commit"), "transfer_wall_s": prov.get("wall_seconds"),
            "transfer_device_hours": device_hours(prov), "source": str(path),
        })
    return rows


@dataclass
class Plan:
    """What a config asks for, as the collector needs it (made by kdflow.jobs.report.report_plan):
    the jobs, and per pre-training run its metadata (RUN_COLUMNS' run, method, teacher, student,
    pretrain_data, pretrain_fraction, pretrain_epochs; ``soft_labels``: the FKD store it replays;
    ``pretrain_seed``/``replica_of``: its seed and the run it was made from, for a run made from a
    run's pre-training seeds)."""

    jobs: list[Job]
    runs: dict[str, dict]
    dataset_formats: dict[str, str | None] = field(default_factory=dict)


def collect_results(plan: Plan, roots: Iterable[str | Path]) -> Collection:
    """The plan's jobs as found in ``roots`` (first root first); see the module docstring."""
    roots = [Path(r) for r in roots]
    if not roots:
        raise ValueError("no results folder given")
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"results folder {root} does not exist")
    run_rows = {name: _run_row(plan, name, roots) for name in plan.runs}
    rows, missing, failed = [], [], []
    for job in plan.jobs:
        found = _find(job, roots)
        if found is None:
            (failed if _failed(job, roots) else missing).append(job.label)
            continue
        if job.kind == "transfer":
            rows += _transfer_rows(job, found, run_rows[job.pretrained], plan.dataset_formats.get(job.dataset))
    return Collection(results=pd.DataFrame(rows, columns=RESULT_COLUMNS),
                      runs=pd.DataFrame(list(run_rows.values()), columns=RUN_COLUMNS),
                      missing=missing, failed=failed, roots=[str(r) for r in roots])
