"""Paper-style tables from the tidy results frame: rows = pre-training runs, columns = datasets,
cells = mean +- sample std over seeds. The aggregation rule is printed under every table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdflow.io import write_text


class InconsistentResults(ValueError):
    pass


def check_consistency(frame: pd.DataFrame) -> None:
    """Seeds of one (dataset, run) must share the run's config and the transfer protocol."""
    for (dataset, run), group in frame.groupby(["dataset", "run"]):
        for column in ("run_config_hash", "protocol_hash"):
            values = group[column].dropna().unique()
            if len(values) > 1:
                sources = ", ".join(sorted(group["source"].unique()))
                raise InconsistentResults(
                    f"{dataset}/{run}: seeds disagree on {column} ({', '.join(v[:12] for v in values)}); "
                    f"re-run them under one config. Files: {sources}")


def aggregate(frame: pd.DataFrame, task: str, metric: str, checkpoint: str) -> pd.DataFrame:
    """Mean, sample std (ddof=1) and count of ``metric`` per (run, dataset)."""
    sel = frame[(frame.task == task) & (frame.metric == metric) & (frame.checkpoint == checkpoint)]
    if sel.empty:
        raise InconsistentResults(f"no {task} results with metric={metric!r}, checkpoint={checkpoint!r}")
    check_consistency(sel)
    return (sel.groupby(["run", "dataset"])["value"]
            .agg(mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else float("nan"), n="count")
            .reset_index())


def _cell(mean: float, std: float, n: int) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def to_wide(stats: pd.DataFrame, run_order: list[str] | None = None) -> pd.DataFrame:
    stats = stats.assign(cell=[_cell(m, s, n) for m, s, n in zip(stats["mean"], stats["std"], stats["n"])])
    wide = stats.pivot(index="run", columns="dataset", values="cell").fillna("–")
    if run_order:
        wide = wide.reindex([r for r in run_order if r in wide.index])
    wide.columns.name = None
    return wide


def aggregation_rule(stats: pd.DataFrame, metric: str, checkpoint: str, frame: pd.DataFrame) -> str:
    seeds = sorted(frame["seed"].dropna().astype(int).unique().tolist())
    counts = sorted(stats["n"].unique().tolist())
    protocols = sorted(frame["protocol"].dropna().unique().tolist())
    return (f"Cells: mean ± sample standard deviation (ddof=1) of {metric} (%) over seeds {seeds} "
            f"({'/'.join(map(str, counts))} per cell), evaluated at the {checkpoint!r} checkpoint of each "
            f"fine-tuning run; protocol(s): {', '.join(protocols)}. Rows: pre-training runs; columns: datasets.")


def write_task_table(frame: pd.DataFrame, task: str, out_csv: str | Path, out_md: str | Path, metric: str | None,
                     checkpoint: str, run_order: list[str] | None = None) -> pd.DataFrame:
    """One task's table; ``metric`` defaults to the task's own (kdflow.tasks)."""
    from kdflow.tasks import TASKS

    metric = metric or TASKS[task].metric
    stats = aggregate(frame, task, metric, checkpoint)
    sel = frame[(frame.task == task) & (frame.metric == metric) & (frame.checkpoint == checkpoint)]
    rule = aggregation_rule(stats, metric, checkpoint, sel)
    wide = to_wide(stats, run_order)
    write_text(out_csv, stats.to_csv(index=False))
    header = "| run | " + " | ".join(wide.columns) + " |"
    divider = "|---|" + "---|" * len(wide.columns)
    lines = [f"| {run} | " + " | ".join(wide.loc[run]) + " |" for run in wide.index]
    write_text(out_md, "\n".join([f"# {task.capitalize()} transfer", "", header, divider, *lines, "", rule, ""]))
    return stats
