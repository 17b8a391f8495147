"""Figures from the results frame and the jobs' logs, each saved as PNG and PDF in one style, sized
for a paper's column (3.4 in wide per panel) with units on the axes and seed error bars.

- ``downstream``: each task's score per dataset, one bar per run, coloured by pre-training method;
- ``score_vs_cost``: mean downstream score against pre-training wall time and images seen (KDEP's
  Figure 1 from kdflow's runs); scratch, which costs nothing, as a dashed line;
- ``pretrain_loss``: each run's training loss per epoch (``pretrain/<run>/log.csv``);
- ``transfer_curves``: the test metric over fine-tuning epochs / iterations, mean over seeds;
- ``throughput``: crops/s per pre-training path, when ``results/benchmarks/pretrain_throughput.json``
  exists.

Every function returns the figure (tests read its labels and legend); :func:`save` writes it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # report jobs run headless
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from kdflow.io import read_json, write_with  # noqa: E402

STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 150,
    "savefig.dpi": 300, "savefig.bbox": "tight", "pdf.fonttype": 42, "lines.linewidth": 1.2,
}
PANEL = (3.4, 2.4)  # inches: one paper column
METRIC_UNITS = {"top1": "top-1 accuracy (%)", "mIoU": "mIoU (%)", "AP": "box AP (%)", "AP50": "box AP50 (%)"}


def _label(metric: str) -> str:
    return METRIC_UNITS.get(metric, f"{metric} (%)")


def method_colours(methods) -> dict[str, tuple]:
    """One colour per distinct name (methods, or runs), in order of first appearance."""
    palette = plt.get_cmap("tab10").colors
    return {m: palette[i % len(palette)] for i, m in enumerate(dict.fromkeys(methods))}


def _figure(panels: int, rows: int = 1):
    cols = max(1, -(-panels // rows))
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL[0] * cols, PANEL[1] * rows), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:panels])


def save(fig, stem: str | Path) -> dict[str, Path]:
    """``stem``.png and ``stem``.pdf, each written atomically."""
    out = {}
    for ext in ("png", "pdf"):
        path = Path(f"{stem}.{ext}")
        # the style's savefig settings, given here: saving happens outside its rc_context
        write_with(path, lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=STYLE["savefig.dpi"],
                                                          bbox_inches="tight"))
        out[ext] = path
    plt.close(fig)
    return out


def downstream(stats: pd.DataFrame, runs: pd.DataFrame, order: list[str]):
    """Bars of mean ± spread per run, one panel per (task, dataset)."""
    method_of = dict(zip(runs["run"], runs["method"]))
    colours = method_colours(method_of[r] for r in order if r in method_of)
    panels = list(dict.fromkeys(zip(stats["task"], stats["dataset"], stats["metric"])))
    with plt.rc_context(STYLE):
        fig, axes = _figure(len(panels), rows=1 if len(panels) <= 3 else 2)
        for ax, (task, dataset, metric) in zip(axes, panels):
            sel = stats[(stats.task == task) & (stats.dataset == dataset)].set_index("run")
            names = [r for r in order if r in sel.index]
            ax.bar(range(len(names)), sel.loc[names, "mean"], yerr=sel.loc[names, "std"].fillna(0), capsize=2,
                   color=[colours[method_of[r]] for r in names], edgecolor="black", linewidth=0.4)
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
            ax.set_ylabel(_label(metric))
            ax.set_title(f"{task}: {dataset}")
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
        fig.tight_layout()
        fig.legend(handles, list(colours), title="pre-training method", loc="center left",
                   bbox_to_anchor=(1.0, 0.5), frameon=False)
    return fig


def score_vs_cost(stats: pd.DataFrame, runs: pd.DataFrame):
    """Mean score per task (the mean of its datasets' seed means) against pre-training cost."""
    tasks = list(dict.fromkeys(stats["task"]))
    meta = runs.set_index("run")
    colours = method_colours(runs["method"])
    costs = [("pretrain_wall_s", "pre-training wall time (h)", 1 / 3600), ("images_seen", "images seen in pre-training", 1)]
    with plt.rc_context(STYLE):
        fig, axes = _figure(len(tasks) * len(costs), rows=len(costs))
        for row, (column, xlabel, scale) in enumerate(costs):
            for col, task in enumerate(tasks):
                ax = axes[row * len(tasks) + col]
                sel = stats[stats.task == task]
                means = sel.groupby("run")["mean"].mean()
                spreads = sel.groupby("run")["std"].mean()  # one dataset: the seed spread itself
                metric = sel["metric"].iloc[0]
                seen = set()
                for run, score in means.items():
                    cost = meta.loc[run, column] if run in meta.index else None
                    method = meta.loc[run, "method"] if run in meta.index else "?"
                    if method == "scratch" or cost is None or pd.isna(cost) or not cost:
                        if method == "scratch":
                            ax.axhline(score, color=colours.get("scratch", "grey"), linestyle="--",
                                       label=None if "scratch" in seen else "scratch")
                            seen.add("scratch")
                        continue
                    ax.errorbar(float(cost) * scale, score, yerr=0 if pd.isna(spreads[run]) else spreads[run],
                                fmt="o", capsize=2, color=colours[method], label=None if method in seen else method)
                    ax.annotate(run, (float(cost) * scale, score), fontsize=5, xytext=(3, 3), textcoords="offset points")
                    seen.add(method)
                _cost_axis(ax, [float(c) * scale for c in meta[column].dropna() if c])
                ax.set_xlabel(xlabel)
                ax.set_ylabel(f"mean {_label(metric)}")
                ax.set_title(task)
        fig.tight_layout()
        _figure_legend(fig, axes)
    return fig


def _cost_axis(ax, costs: list[float]) -> None:
    """Log scale where the costs span a decade or more (KDEP's Figure 1), linear otherwise (where a
    log axis only adds unreadable minor labels)."""
    if costs and max(costs) >= 10 * min(costs):
        ax.set_xscale("log")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 4)) if ax.get_xscale() == "linear" else None


def _figure_legend(fig, axes) -> None:
    """One legend for all panels, right of them: the union of the panels' labelled artists."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def pretrain_loss(curves: dict[str, pd.DataFrame]):
    """``curves``: run -> its log.csv (columns epoch, loss). Log scale: methods' losses differ in size."""
    with plt.rc_context(STYLE):
        fig, (ax,) = _figure(1)
        for run, log in curves.items():
            if {"epoch", "loss"} <= set(log.columns) and len(log):
                ax.plot(log["epoch"], log["loss"], marker=".", label=run)
        ax.set_yscale("log")
        ax.set_xlabel("pre-training epoch")
        ax.set_ylabel("training loss (each method's own)")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        fig.tight_layout()
    return fig


def metric_curve(log: pd.DataFrame, metric: str) -> pd.DataFrame | None:
    """(x, value) of a transfer log's test evaluations: ``test_<metric>`` or ``<metric>`` per epoch or
    iteration (classification logs per epoch; mmseg's and detection's per iteration)."""
    column = next((c for c in (f"test_{metric}", metric) if c in log.columns), None)
    x = next((c for c in ("epoch", "iteration") if c in log.columns), None)
    if column is None or x is None:
        return None
    rows = log[[x, column]].dropna()
    return rows.rename(columns={x: "x", column: "value"}).assign(unit=x)


def transfer_curves(curves: pd.DataFrame, order: list[str]):
    """``curves``: columns task, dataset, run, seed, metric, x, unit, value (see :func:`metric_curve`)."""
    if curves.empty:
        with plt.rc_context(STYLE):
            fig, (ax,) = _figure(1)
            ax.text(0.5, 0.5, "no test evaluations in the transfer jobs' log.csv", ha="center", va="center")
            ax.set_axis_off()
        return fig
    panels = list(dict.fromkeys(zip(curves["task"], curves["dataset"], curves["metric"])))
    colours = method_colours(r for r in order if r in set(curves["run"]))  # one colour per run in every panel
    with plt.rc_context(STYLE):
        fig, axes = _figure(len(panels), rows=1 if len(panels) <= 3 else 2)
        for ax, (task, dataset, metric) in zip(axes, panels):
            sel = curves[(curves.task == task) & (curves.dataset == dataset)]
            for run in [r for r in order if r in set(sel["run"])]:
                mean = sel[sel.run == run].groupby("x")["value"].agg(["mean", "std"]).reset_index()
                ax.errorbar(mean["x"], mean["mean"], yerr=mean["std"].fillna(0), marker=".", capsize=2, label=run,
                            color=colours[run])
            ax.set_xlabel(f"fine-tuning {sel['unit'].iloc[0]}")
            ax.set_ylabel(f"test {_label(metric)}")
            ax.set_title(f"{task}: {dataset}")
        fig.tight_layout()
        _figure_legend(fig, axes)
    return fig


def throughput(benchmark: dict):
    """Crops/s of each mode of benchmarks/pretrain_throughput.py (median over its timed windows)."""
    modes = benchmark["modes"]
    with plt.rc_context(STYLE):
        fig, (ax,) = _figure(1)
        names = list(modes)
        ax.bar(range(len(names)), [modes[m]["crops_per_s"] for m in names], color="tab:blue", edgecolor="black",
               linewidth=0.4)
        ax.set_xticks(range(len(names)), [m.replace("_", " ") for m in names])
        ax.set_ylabel("training crops per second")
        where = benchmark.get("machine", {})
        ax.set_title(f"pre-training throughput ({where.get('gpu') or where.get('processor', '?')}, "
                     f"{where.get('threads', '?')} threads)")
        fig.tight_layout()
    return fig


def read_benchmark(path: str | Path) -> dict | None:
    path = Path(path)
    return read_json(path) if path.is_file() else None
