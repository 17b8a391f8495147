"""Paper tables from the tidy results frame (kdflow.report.collect), each written as CSV (numbers),
Markdown and LaTeX (booktabs), with the aggregation rule and the collection's notes under it.

- ``<task>``: one task's results, rows = pre-training runs, columns = datasets;
- ``main``: every task side by side (columns grouped by task), rows ordered per student as a paper
  orders them (scratch, supervised, KDEP by data fraction, the other methods), with the published
  numbers of the same task and dataset in a block below and, where a published number's
  configuration is known and equals a run's, their difference;
- ``cost``: what each pre-training run cost (images seen, wall time, device-hours) against its mean
  downstream score per task, and as a ratio to the supervised run of the same student;
- ``pretraining``: the students' own top-1 where they have a head, FKD's soft-label bytes per crop;
- ``published``: every published number with its source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kdflow.io import write_text
from kdflow.report.published import Published

DASH = "–"
METHOD_ORDER = {"scratch": 0, "supervised": 1, "kdep": 2}  # then every other method, in config order


class InconsistentResults(ValueError):
    pass


# ---------------------------------------------------------------- aggregation
@dataclass(frozen=True)
class Aggregation:
    """How seeds become a cell: mean ± spread (sample std, or the standard error of the mean) of a
    metric at one checkpoint (``best`` over a fine-tuning run's evaluations, or ``final``)."""

    checkpoint: str = "final"
    spread: str = "std"
    metric: str | None = None  # None: each task's own (kdflow.tasks)

    @classmethod
    def from_config(cls, report: dict) -> "Aggregation":
        return cls(checkpoint=report.get("checkpoint", "final"), spread=report.get("spread", "std"),
                   metric=report.get("metric"))

    def metric_for(self, task: str) -> str:
        from kdflow.tasks import TASKS

        return self.metric or TASKS[task].metric

    def spread_of(self, values: pd.Series) -> float:
        if len(values) < 2:
            return float("nan")
        std = float(values.std(ddof=1))
        return std / math.sqrt(len(values)) if self.spread == "sem" else std

    def describe(self, stats: pd.DataFrame) -> str:
        what = "sample standard deviation (ddof=1)" if self.spread == "std" else "standard error of the mean"
        counts = "/".join(str(n) for n in sorted(stats["n"].unique())) if len(stats) else "0"
        seeds = sorted({s for group in stats.get("seeds", []) for s in str(group).split(",") if s != ""}, key=int)
        seeded = list(dict.fromkeys(stats.loc[stats["pretrain_seeds"] != "", "run"])) if len(stats) else []
        text = (f"Cells: mean ± {what} over fine-tuning seeds [{', '.join(seeds)}] ({counts} per cell) at the "
                f"{self.checkpoint!r} checkpoint of each fine-tuning run; ")
        if not seeded:
            return text + "the spread covers fine-tuning seeds of one pre-training run per row (each run is pre-trained once)."
        rows = f"rows {', '.join(seeded)} are" if len(seeded) > 1 else f"row {seeded[0]} is"
        return text + (f"{rows} pre-trained once per seed and fine-tuning seed s starts from pre-training seed s, "
                       "so the spread covers pre-training and fine-tuning there; every other row's covers "
                       "fine-tuning seeds of one pre-training run.")


def check_consistency(frame: pd.DataFrame) -> None:
    """Seeds of one (task, dataset, run) must share the transfer protocol and the run's config (for a
    run with pre-training seeds, each seed's run its own)."""
    frame = frame.assign(pretrain_run=frame["pretrain_run"].fillna(frame["run"]))
    for (task, dataset, run), group in frame.groupby(["task", "dataset", "run"]):
        parts = {"run_config_hash": [g for _, g in group.groupby("pretrain_run")], "protocol_hash": [group]}
        for column, groups in parts.items():
            for part in groups:
                values = part[column].dropna().unique()
                if len(values) > 1:
                    sources = ", ".join(sorted(part["source"].unique()))
                    raise InconsistentResults(
                        f"{task}/{dataset}/{run}: seeds disagree on {column} ({', '.join(v[:12] for v in values)}); "
                        f"re-run them under one config. Files: {sources}")


def aggregate(results: pd.DataFrame, agg: Aggregation) -> pd.DataFrame:
    """Per (task, dataset, run): mean, spread, n and seeds of each task's metric at the checkpoint."""
    columns = ["task", "dataset", "dataset_format", "run", "metric", "mean", "std", "n", "seeds", "pretrain_seeds"]
    parts = []
    for task, of_task in results.groupby("task", sort=False):
        metric = agg.metric_for(task)
        sel = of_task[(of_task.metric == metric) & (of_task.checkpoint == agg.checkpoint)]
        if sel.empty:
            known = sorted(of_task.metric.unique())
            raise InconsistentResults(f"no {task} results with metric={metric!r}, checkpoint={agg.checkpoint!r} "
                                      f"(metrics present: {known})")
        check_consistency(sel)
        for (dataset, run), group in sel.groupby(["dataset", "run"], sort=False):
            parts.append({"task": task, "dataset": dataset, "dataset_format": group["dataset_format"].iloc[0],
                          "run": run, "metric": metric, "mean": float(group["value"].mean()),
                          "std": agg.spread_of(group["value"]), "n": int(len(group)),
                          "seeds": ",".join(str(int(s)) for s in sorted(group["seed"].dropna())),
                          "pretrain_seeds": ",".join(str(int(s)) for s in sorted(group["pretrain_seed"].dropna()))})
    return pd.DataFrame(parts, columns=columns)


def missing(value) -> bool:
    return value is None or pd.isna(value)


def formatted(value, spec: str) -> str:
    """``value`` formatted by ``spec``, or a dash where it is missing."""
    return DASH if missing(value) else format(value, spec)


def cell(mean: float, std: float, n: int) -> str:
    if missing(mean):
        return DASH
    return f"{mean:.2f} ± {std:.2f}" if n > 1 and not pd.isna(std) else f"{mean:.2f}"


# ---------------------------------------------------------------- a table and its writers
@dataclass
class Table:
    """Header: (group, label) per column after the row-label column; ``group`` "" for none.
    ``blocks``: row indices before which a rule is drawn (a new student, the published block)."""

    name: str
    title: str
    row_header: str
    header: list[tuple[str, str]]
    rows: list[list[str]]
    data: pd.DataFrame  # what the CSV holds: numbers, one row per value
    notes: list[str] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)

    def markdown(self) -> str:
        labels = [f"{g}: {c}" if g else c for g, c in self.header]
        lines = [f"# {self.title}", "", "| " + " | ".join([self.row_header, *labels]) + " |",
                 "|---|" + "---|" * len(labels)]
        for i, row in enumerate(self.rows):
            if i in self.blocks and i:
                lines.append("| " + " | ".join([""] * (len(labels) + 1)) + " |")
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines + [""] + self.notes + [""])

    def latex(self) -> str:
        ncols = len(self.header) + 1
        lines = [f"% {self.title} (kdflow; needs \\usepackage{{booktabs}})", "\\begin{tabular}{l" + "r" * len(self.header) + "}",
                 "\\toprule"]
        groups = _spans([g for g, _ in self.header])
        if any(g for g, _, _ in groups):
            top, rules = [""], []
            for group, start, stop in groups:
                width = stop - start
                top.append(f"\\multicolumn{{{width}}}{{c}}{{{latex_escape(group)}}}" if width > 1 else latex_escape(group))
                if group:
                    rules.append(f"\\cmidrule(lr){{{start + 2}-{stop + 1}}}")
            lines.append(" & ".join(top) + " \\\\")
            lines.extend(rules)
        lines.append(" & ".join(latex_escape(x) for x in [self.row_header, *[c for _, c in self.header]]) + " \\\\")
        lines.append("\\midrule")
        for i, row in enumerate(self.rows):
            if i in self.blocks and i:
                lines.append("\\midrule")
            assert len(row) == ncols, (self.name, row)
            lines.append(" & ".join(latex_escape(x) for x in row) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", ""]
        lines += ["% " + note for note in self.notes]
        return "\n".join(lines) + "\n"

    def write(self, folder: str | Path) -> dict[str, Path]:
        folder = Path(folder)
        out = {"csv": folder / f"{self.name}.csv", "md": folder / f"{self.name}.md", "tex": folder / f"{self.name}.tex"}
        write_text(out["csv"], self.data.to_csv(index=False))
        write_text(out["md"], self.markdown())
        write_text(out["tex"], self.latex())
        return out


def _spans(groups: list[str]) -> list[tuple[str, int, int]]:
    spans = []
    for i, group in enumerate(groups):
        if spans and spans[-1][0] == group:
            spans[-1] = (group, spans[-1][1], i + 1)
        else:
            spans.append((group, i, i + 1))
    return spans


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_UNICODE = {"±": r"$\pm$", "–": "--", "—": "---", "†": r"$^\dagger$", "Δ": r"$\Delta$", "×": r"$\times$",
                  "−": "$-$", "·": r"$\cdot$", "÷": r"$\div$", "≥": r"$\geq$", "≤": r"$\leq$"}


def latex_escape(text: str) -> str:
    """Text for a LaTeX cell: specials escaped, the few non-ASCII signs tables use in math mode."""
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    for sign, tex in _LATEX_UNICODE.items():
        out = out.replace(sign, tex)
    return out


# ---------------------------------------------------------------- row order and published blocks
def ordered_runs(runs: pd.DataFrame, present: set[str]) -> list[list[str]]:
    """Runs grouped by student (first appearance), each group ordered scratch, supervised, KDEP by
    data fraction, then the other methods in config order."""
    groups: dict[str, list[tuple]] = {}
    for position, row in enumerate(runs.itertuples(index=False)):
        if row.run not in present:
            continue
        fraction = row.pretrain_fraction if row.pretrain_fraction is not None and not pd.isna(row.pretrain_fraction) else 2.0
        key = (METHOD_ORDER.get(row.method, 3), fraction if row.method == "kdep" else 0.0, position)
        groups.setdefault(row.student, []).append((key, row.run))
    return [[run for _, run in sorted(members)] for members in groups.values()]


def _published_for(published: list[Published], task: str, dataset: str, metric: str):
    """A published number's ``dataset`` is the config dataset name it compares with (config/kdep.yaml's
    names); never a format, which a demo or a user's own set shares with the benchmark."""
    return [p for p in published if p.task == task and p.metric == metric and p.dataset == dataset]


def grid_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs as transfer grids name them: the runs made from one run's pre-training seeds become
    one row under that run's name, at the place of its first seed, with the mean of their images
    seen, wall time and device-hours (the other metadata is the seeds' own, the same but the seed)."""
    if "replica_of" not in runs or runs["replica_of"].isna().all():
        return runs
    rows, seen = [], set()
    for row in runs.to_dict("records"):
        group = row.get("replica_of")
        if missing(group):
            rows.append(row)
            continue
        if group in seen:
            continue
        seen.add(group)
        members = runs[runs["replica_of"] == group]
        merged = {**row, "run": group, "pretrain_seed": None, "replica_of": None, "source": None}
        for column in ("images_seen", "pretrain_wall_s", "pretrain_device_hours"):
            values = pd.to_numeric(members[column], errors="coerce").dropna()
            merged[column] = float(values.mean()) if len(values) else None
        if members["source"].notna().any():
            merged["source"] = ", ".join(members["source"].dropna())
        rows.append(merged)
    return pd.DataFrame(rows, columns=runs.columns)


def _run_records(runs: pd.DataFrame) -> dict[str, dict]:
    return {r["run"]: r for r in runs.to_dict("records")}


# ---------------------------------------------------------------- the tables
def task_table(stats: pd.DataFrame, task: str, runs: pd.DataFrame, agg: Aggregation, notes: list[str]) -> Table:
    sel = stats[stats.task == task]
    datasets = list(dict.fromkeys(sel["dataset"]))
    order = [run for group in ordered_runs(runs, set(sel["run"])) for run in group]
    rows = []
    for run in order:
        cells = []
        for dataset in datasets:
            hit = sel[(sel.run == run) & (sel.dataset == dataset)]
            cells.append(cell(*hit[["mean", "std", "n"]].iloc[0]) if len(hit) else DASH)
        rows.append([run, *cells])
    metric = sel["metric"].iloc[0]
    data = sel.drop(columns=["task"]).reset_index(drop=True)
    return Table(name=task, title=f"{task.capitalize()} transfer ({metric}, %)", row_header="run",
                 header=[("", d) for d in datasets], rows=rows, data=data,
                 notes=[agg.describe(sel), *notes])


def main_table(stats: pd.DataFrame, runs: pd.DataFrame, published: list[Published], agg: Aggregation,
               notes: list[str]) -> Table:
    columns = list(dict.fromkeys(zip(stats["task"], stats["dataset"], stats["metric"], stats["dataset_format"])))
    groups = ordered_runs(runs, set(stats["run"]))
    meta = _run_records(runs)
    rows, blocks = [], []
    for group in groups:
        blocks.append(len(rows))
        for run in group:
            cells = []
            for task, dataset, metric, _ in columns:
                hit = stats[(stats.run == run) & (stats.task == task) & (stats.dataset == dataset)]
                cells.append(cell(*hit[["mean", "std", "n"]].iloc[0]) if len(hit) else DASH)
            rows.append([run, meta[run]["method"], meta[run]["student"], *cells])
    # the published block: one row per published label with a number for some column of this table
    shown: dict[str, dict[int, Published]] = {}
    for k, (task, dataset, metric, _) in enumerate(columns):
        for p in _published_for(published, task, dataset, metric):
            shown.setdefault(p.row_label, {})[k] = p
    if shown:
        blocks.append(len(rows))
        for label, by_column in shown.items():
            rows.append([label, "published", "", *[f"{by_column[k].value:.2f}" if k in by_column else DASH
                                                     for k in range(len(columns))]])
        for label, by_column in shown.items():
            for run in (r for group in groups for r in group):
                diffs = {}
                for k, p in by_column.items():
                    if p.matches(meta[run]):
                        task, dataset, _, _ = columns[k]
                        hit = stats[(stats.run == run) & (stats.task == task) & (stats.dataset == dataset)]
                        if len(hit):
                            diffs[k] = hit["mean"].iloc[0] - p.value
                if diffs:
                    rows.append([f"Δ {run} − {label}", "", "",
                                 *[f"{diffs[k]:+.2f}" if k in diffs else DASH for k in range(len(columns))]])
    header = [("", "method"), ("", "student")] + [(task, f"{dataset} {metric}") for task, dataset, metric, _ in columns]
    pub_notes = (["Published numbers: † marks a number whose configuration the source does not give (shown, "
                  "never differenced); Δ rows: a kdflow run minus a published number of the same configuration. "
                  "Sources: " + "; ".join(sorted({f"{p.paper}: {p.source}" for by in shown.values() for p in by.values()}))]
                 if shown else [f"Published numbers: none for these datasets ({len(published)} in config/published, "
                                f"for {', '.join(sorted({p.dataset for p in published}))})."])
    return Table(name="main", title="Transfer results of every task and method", row_header="run", header=header,
                 rows=rows, data=stats.reset_index(drop=True), notes=[agg.describe(stats), *pub_notes, *notes],
                 blocks=blocks)


def _hours(seconds) -> str:
    return DASH if missing(seconds) else f"{seconds / 3600:.3g}"


def _ratio(value, reference) -> str:
    if missing(value) or missing(reference) or not reference:
        return DASH
    return f"{value / reference:.2f}×"


def cost_table(stats: pd.DataFrame, runs: pd.DataFrame, notes: list[str]) -> Table:
    tasks = list(dict.fromkeys(stats["task"]))
    present = set(stats["run"]) | set(runs.dropna(subset=["source"])["run"])
    groups = ordered_runs(runs, present)
    meta = _run_records(runs)
    rows, data, blocks = [], [], []
    for group in groups:
        blocks.append(len(rows))
        supervised = [meta[r] for r in group if meta[r]["method"] == "supervised" and meta[r]["images_seen"]]
        reference = max(supervised, key=lambda r: r["images_seen"]) if supervised else None
        for run in group:
            m = meta[run]
            scores = {t: stats[(stats.run == run) & (stats.task == t)]["mean"].mean() for t in tasks}
            record = {"run": run, "method": m["method"], "student": m["student"], "images_seen": m["images_seen"],
                      "pretrain_wall_s": m["pretrain_wall_s"], "pretrain_device_hours": m["pretrain_device_hours"],
                      "reference": reference["run"] if reference else None,
                      **{f"mean_{t}": scores[t] for t in tasks}}
            data.append(record)
            images = DASH if missing(m["images_seen"]) or not m["images_seen"] else f"{int(m['images_seen']):,}"
            rows.append([run, m["method"], images, _hours(m["pretrain_wall_s"]),
                         formatted(m["pretrain_device_hours"], ".3g"),
                         _ratio(m["images_seen"], reference and reference["images_seen"]),
                         _ratio(m["pretrain_wall_s"], reference and reference["pretrain_wall_s"]),
                         *[DASH if pd.isna(scores[t]) else f"{scores[t]:.2f}" for t in tasks]])
    header = [("", "method"), ("", "images seen"), ("", "wall (h)"), ("", "device-h"),
              ("vs supervised", "images"), ("vs supervised", "time")] + [("mean score", t) for t in tasks]
    rule = ("Pre-training cost of each run (images seen = images drawn over all epochs; wall = the pre-training "
            "job's wall time; device-hours = wall x GPUs on CUDA, x 1 CPU node otherwise; teacher, SVD and "
            "soft-label generation not included) against its mean downstream score per task (the mean over the "
            "task's datasets of the seed means). 'vs supervised': the ratio to the supervised run of the same "
            "student that saw the most images.")
    return Table(name="cost", title="Pre-training cost vs downstream score", row_header="run", header=header,
                 rows=rows, data=pd.DataFrame(data), notes=[rule, *notes], blocks=blocks)


def pretraining_table(runs: pd.DataFrame, published: list[Published], notes: list[str]) -> Table:
    done = runs.dropna(subset=["source"])
    groups = ordered_runs(done, set(done["run"]))
    meta = _run_records(done)
    rows, blocks = [], []
    for group in groups:
        blocks.append(len(rows))
        for run in group:
            m = meta[run]
            rows.append([run, m["method"], m["student"], str(m["pretrain_data"] or DASH),
                         formatted(m["pretrain_epochs"], "g"), formatted(m["val_top1"], ".2f"),
                         formatted(m["final_loss"], ".4g"), formatted(m["soft_label_bytes_per_crop"], ".0f")])
    shown = [p for p in published if p.task == "pretraining"]
    if shown:
        blocks.append(len(rows))
        for p in shown:
            rows.append([p.row_label, "published", str((p.configuration or {}).get("student", "")), p.dataset,
                         str((p.configuration or {}).get("pretrain_epochs", "")), f"{p.value:.2f}", DASH, DASH])
            for run, m in meta.items():
                if p.matches(m) and not missing(m["val_top1"]):
                    rows.append([f"Δ {run} − {p.row_label}", "", "", "", "", f"{m['val_top1'] - p.value:+.2f}", DASH, DASH])
    header = [("", "method"), ("", "student"), ("", "data"), ("", "epochs"), ("", "own top-1 (%)"),
              ("", "final loss"), ("", "soft-label bytes/crop")]
    rule = ("The students' own head, evaluated on the pre-training dataset's test split after the last epoch "
            "(methods without a head: –); final loss: the last epoch's mean training loss; soft-label bytes per "
            "stored crop for FKD runs. Published: † marks a number of unknown configuration (not differenced).")
    return Table(name="pretraining", title="Pre-training results", row_header="run", header=header, rows=rows,
                 data=done.reset_index(drop=True), notes=[rule, *notes], blocks=blocks)


def published_table(published: list[Published]) -> Table:
    rows = [[p.paper, p.label, p.task, p.dataset, p.metric, f"{p.value:.2f}",
             "unknown" if p.configuration is None else ", ".join(f"{k}={v}" for k, v in p.configuration.items()),
             p.source] for p in published]
    data = pd.DataFrame([{"paper": p.paper, "label": p.label, "task": p.task, "dataset": p.dataset, "metric": p.metric,
                          "value": p.value, "configuration": p.configuration, "source": p.source, "note": p.note,
                          "file": p.file} for p in published])
    header = [("", c) for c in ("label", "task", "dataset", "metric", "value", "configuration", "source")]
    return Table(name="published", title="Published reference numbers", row_header="paper", header=header, rows=rows,
                 data=data, notes=["Every number as its source gives it (config/published/*.yaml)."])


def write_tables(results: pd.DataFrame, runs: pd.DataFrame, published: list[Published], agg: Aggregation,
                 folder: str | Path, notes: list[str] = ()) -> dict[str, dict]:
    """Every table into ``folder``; returns {table name: {ext: path}}."""
    notes = list(notes)
    stats = aggregate(results, agg) if len(results) else pd.DataFrame(
        columns=["task", "dataset", "dataset_format", "run", "metric", "mean", "std", "n", "seeds", "pretrain_seeds"])
    by_grid = grid_runs(runs)
    tables = [task_table(stats, task, by_grid, agg, notes) for task in dict.fromkeys(stats["task"])]
    if len(stats):
        tables += [main_table(stats, by_grid, published, agg, notes), cost_table(stats, by_grid, notes)]
    tables += [pretraining_table(runs, published, notes), published_table(published)]
    return {t.name: t.write(folder) for t in tables}
