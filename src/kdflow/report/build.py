"""The report stage in three steps, shared by the Snakemake rules and ``python -m kdflow report``:

1. :func:`write_collection` — the config's jobs found in the results folders
   -> ``tables/all_results.csv`` (per-seed values), ``tables/pretrain_runs.csv``, ``tables/jobs.json``
   (roots read, missing and failed jobs);
2. :func:`make_tables` — those files + ``config/published`` -> every table (CSV, Markdown, LaTeX);
3. :func:`make_plots` — those files + the jobs' ``log.csv`` -> every figure (PNG, PDF).

In the workflow, step 1 waits for every job of the config; by hand (``kdflow report``,
kdflow.jobs.report) it takes whatever exists, and the tables' notes list what is missing or failed.
"""

from __future__ import annotations

from pathlib import Path
import pandas as pd

from kdflow.io import read_json, write_json, write_text
from kdflow.report.collect import RESULT_COLUMNS, RUN_COLUMNS, Collection
from kdflow.report.published import load_published, published_files
from kdflow.report.outputs import COLLECTION_FILES
from kdflow.report.tables import Aggregation, aggregate, grid_runs, ordered_runs, write_tables


# ---------------------------------------------------------------- step 1
def require_complete(collection: Collection) -> None:
    """The workflow's collect step: every job of the config must have its result."""
    if collection.missing or collection.failed:
        raise FileNotFoundError("results of the config's jobs are absent (failed: "
                                f"{collection.failed or 'none'}; missing: {collection.missing or 'none'}); "
                                "run the workflow first, or use `python -m kdflow report` for partial results")


def write_collection(collection: Collection, tables_dir: str | Path) -> dict[str, Path]:
    tables_dir = Path(tables_dir)
    out = {key: tables_dir / name for key, name in COLLECTION_FILES.items()}
    write_text(out["results"], collection.results.to_csv(index=False))
    write_text(out["runs"], collection.runs.to_csv(index=False))
    write_json(out["jobs"], {"roots": collection.roots, "missing": collection.missing, "failed": collection.failed})
    return out


def read_collection(tables_dir: str | Path) -> Collection:
    tables_dir = Path(tables_dir)
    results = pd.read_csv(tables_dir / COLLECTION_FILES["results"], dtype={"run_config_hash": str, "protocol_hash": str})
    runs = pd.read_csv(tables_dir / COLLECTION_FILES["runs"], dtype={"run_config_hash": str, "pretrain_data": object})
    runs = runs.astype(object).where(runs.notna(), None)  # None, not NaN, for absent values
    jobs = read_json(tables_dir / COLLECTION_FILES["jobs"])
    return Collection(results=results.reindex(columns=RESULT_COLUMNS), runs=runs.reindex(columns=RUN_COLUMNS),
                      missing=jobs["missing"], failed=jobs["failed"], roots=jobs["roots"])


# ---------------------------------------------------------------- step 2
def make_tables(collection: Collection, report_cfg: dict, published_dir: str | Path, tables_dir: str | Path):
    published = load_published(published_files(published_dir))
    return write_tables(collection.results, collection.runs, published, Aggregation.from_config(report_cfg),
                        tables_dir, notes=collection.notes())


# ---------------------------------------------------------------- step 3
def _log(source: str | None) -> pd.DataFrame | None:
    if not source:
        return None
    path = Path(source).parent / "log.csv"
    return pd.read_csv(path) if path.is_file() else None


def transfer_curve_frame(results: pd.DataFrame, agg: Aggregation) -> pd.DataFrame:
    from kdflow.report.plots import metric_curve

    parts = []
    jobs = results.drop_duplicates(subset=["task", "dataset", "run", "seed"])
    for job in jobs.itertuples(index=False):
        log = _log(job.source)
        metric = agg.metric_for(job.task)
        curve = metric_curve(log, metric) if log is not None else None
        if curve is not None and len(curve):
            parts.append(curve.assign(task=job.task, dataset=job.dataset, run=job.run, seed=job.seed, metric=metric))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def make_plots(collection: Collection, report_cfg: dict, plots_dir: str | Path,
               throughput_benchmark: str | Path | None = None) -> dict[str, dict]:
    from kdflow.report import plots

    plots_dir = Path(plots_dir)
    agg = Aggregation.from_config(report_cfg)
    results, runs = collection.results, collection.runs
    out = {}
    if len(results):
        stats, by_grid = aggregate(results, agg), grid_runs(runs)
        order = [r for group in ordered_runs(by_grid, set(stats["run"])) for r in group]
        out["downstream"] = plots.save(plots.downstream(stats, by_grid, order), plots_dir / "downstream")
        out["score_vs_cost"] = plots.save(plots.score_vs_cost(stats, by_grid), plots_dir / "score_vs_cost")
        curves = transfer_curve_frame(results, agg)
        out["transfer_curves"] = plots.save(plots.transfer_curves(curves, order), plots_dir / "transfer_curves")
    losses = {row["run"]: log for row in runs.to_dict("records") if (log := _log(row["source"])) is not None}
    if losses:
        out["pretrain_loss"] = plots.save(plots.pretrain_loss(losses), plots_dir / "pretrain_loss")
    benchmark = plots.read_benchmark(throughput_benchmark) if throughput_benchmark else None
    if benchmark:
        out["throughput"] = plots.save(plots.throughput(benchmark), plots_dir / "throughput")
    return out
