"""The report stage on hand-made results trees: the collector, the aggregation, the published block,
LaTeX that compiles, the figures' labels, and ``python -m kdflow report`` over two merged roots with a
missing seed and a failed job."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO

CONFIG = """
results: {results}
demo:
  pre: {{kind: pretrain, classes: 4, train_per_class: 10, val_per_class: 4, image_size: 16, seed: 0}}
  down: {{kind: downstream, classes: 3, train_per_class: 4, val_per_class: 4, image_size: 16, seed: 1}}
  dets: {{kind: detection, classes: 3, objects: [1, 2], train_per_class: 8, val_per_class: 4, image_size: 32, seed: 2}}
datasets:
  pre_in: {{demo: pre}}
  cub200: {{demo: down}}
  det: {{demo: dets, format: coco}}
subsets:
  half: {{dataset: pre_in, fraction: 0.5, seed: 0}}
  all: {{dataset: pre_in, fraction: 1.0, seed: 0}}
teachers:
  t: {{arch: resnet18, num_classes: 4, random_init: {{seed: 0}}}}
students:
  r18: {{arch: resnet18}}
_train: &train
  epochs: 2
  batch_size: 8
  workers: 0
  optim: {{lr: 0.05}}
  augment: {{size: 16, scale: [0.5, 1.0]}}
  eval: {{resize: 16, crop: 16}}
pretrain:
  kdep_all: {{method: kdep, student: r18, teacher: t, data: all, training: *train}}
  scratch: {{method: scratch, student: r18}}
  kdep_half: {{method: kdep, student: r18, teacher: t, data: half, training: *train}}
  sup: {{method: supervised, student: r18, data: all, training: *train}}
transfer:
  protocols:
    ft:
      training: {{epochs: 2, batch_size: 8, workers: 0, optim: {{lr: 0.01}}, augment: {{size: 16, scale: [0.5, 1.0]}},
                 eval: {{resize: 16, crop: 16}}}}
    det_ft:
      task: detection
      engine: torchvision
      training: {{epochs: 1, batch_size: 2, workers: 0, optim: {{lr: 0.01}}}}
  grids:
    cls: {{datasets: [cub200], runs: [scratch, sup, kdep_half, kdep_all], seeds: [0, 1, 2], protocol: ft}}
    det: {{datasets: [det], runs: [scratch, kdep_all], seeds: [0, 1], protocol: det_ft}}
report: {{checkpoint: final}}
"""

# top-1 per (run, seed): known means and sample stds
TOP1 = {"scratch": [10.0, 12.0, 14.0], "sup": [30.0, 31.0, 32.0], "kdep_half": [40.0, 40.0, 43.0],
        "kdep_all": [50.0, 52.0, 54.0]}
AP = {"scratch": [5.0, 7.0], "kdep_all": [9.0, 11.0]}


def _config(tmp_path: Path, results: Path) -> dict:
    from kdflow.config import validate_config

    cfg = yaml.safe_load(CONFIG.format(results=results))
    return validate_config(cfg, source="test config")


def _write_transfer(root: Path, task: str, dataset: str, run: str, seed: int, metric: str, value: float,
                    wall: float = 60.0, log: pd.DataFrame | None = None) -> None:
    folder = root / "transfer" / task / dataset / run / f"seed{seed}"
    folder.mkdir(parents=True)
    metrics = [{"metric": metric, "value": value, "checkpoint": "final"},
               {"metric": metric, "value": value + 1.0, "checkpoint": "best"}]
    (folder / "metrics.json").write_text(json.dumps({
        "task": task, "dataset": dataset, "run": run, "seed": seed, "metrics": metrics, "protocol": "ft",
        "protocol_hash": "p" * 64, "run_config_hash": f"{run:x<64}"}))
    (folder / "provenance.json").write_text(json.dumps({"wall_seconds": wall, "device": "cpu (2 logical cores)",
                                                        "git_commit": "abc123"}))
    if log is not None:
        log.to_csv(folder / "log.csv", index=False)


def _write_pretrain(root: Path, run: str, wall: float, images_per_epoch: int, val_top1: float | None = None):
    folder = root / "pretrain" / run
    folder.mkdir(parents=True)
    metrics = [{"metric": "train_loss", "value": 0.5, "checkpoint": "final"}]
    if val_top1 is not None:
        metrics.append({"metric": "val_top1", "value": val_top1, "checkpoint": "final"})
    (folder / "metrics.json").write_text(json.dumps({"task": "pretrain", "dataset": "all", "run": run, "seed": 0,
                                                     "metrics": metrics, "config_hash": f"{run:x<64}"}))
    (folder / "provenance.json").write_text(json.dumps({"wall_seconds": wall, "device": "cuda:4x NVIDIA H100",
                                                        "world_size": 4, "git_commit": "abc123"}))
    pd.DataFrame({"epoch": [1, 2], "pass": [1, 2], "lr": [0.05, 0.005], "loss": [2.0, 1.0],
                  "images": [images_per_epoch] * 2}).to_csv(folder / "log.csv", index=False)


@pytest.fixture
def two_roots(tmp_path):
    """Root A: the pre-training runs and the classification jobs but kdep_all's seed 2 (missing
    everywhere); root B: the detection jobs, one of which failed (its log only)."""
    a, b = tmp_path / "cluster", tmp_path / "laptop"
    for run, wall, images in (("kdep_all", 7200.0, 400), ("kdep_half", 3600.0, 200), ("sup", 36000.0, 400)):
        _write_pretrain(a, run, wall, images, val_top1=25.0 if run == "sup" else None)
    curve = pd.DataFrame({"epoch": [1, 2], "loss": [1.0, 0.5], "test_top1": [20.0, 30.0]})
    for run, values in TOP1.items():
        for seed, value in enumerate(values):
            if (run, seed) != ("kdep_all", 2):
                _write_transfer(a, "classification", "cub200", run, seed, "top1", value, log=curve)
    for run, values in AP.items():
        for seed, value in enumerate(values):
            if (run, seed) == ("kdep_all", 1):
                log = b / "logs" / "transfer_det" / "det" / run / f"seed{seed}.log"
                log.parent.mkdir(parents=True)
                log.write_text("Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory\n")
                continue
            _write_transfer(b, "detection", "det", run, seed, "AP", value)
    return a, b


def test_collector_reads_both_roots_and_lists_missing_and_failed_jobs(tmp_path, two_roots):
    from kdflow.jobs.report import report_plan
    from kdflow.report.collect import collect_results

    a, b = two_roots
    collection = collect_results(report_plan(_config(tmp_path, a)), [a, b])
    assert collection.missing == ["classification/cub200/kdep_all/seed2"]
    assert collection.failed == ["detection/det/kdep_all/seed1"]
    frame = collection.results
    assert set(frame["task"]) == {"classification", "detection"}
    assert len(frame) == (11 + 3) * 2  # jobs x (best, final)
    row = frame[(frame.run == "kdep_half") & (frame.seed == 2) & (frame.checkpoint == "final")].iloc[0]
    assert row["value"] == 43.0 and row["method"] == "kdep" and row["teacher"] == "t" and row["student"] == "resnet18"
    assert row["pretrain_data"] == "half" and row["pretrain_fraction"] == 0.5 and row["pretrain_epochs"] == 2
    assert row["pretrain_wall_s"] == 3600.0 and row["pretrain_device_hours"] == pytest.approx(4.0)  # 1 h x 4 GPUs
    assert row["transfer_wall_s"] == 60.0 and row["git_commit"] == "abc123"
    runs = collection.runs.set_index("run")
    assert runs.loc["kdep_all", "images_seen"] == 800 and runs.loc["sup", "val_top1"] == 25.0
    assert pd.isna(runs.loc["scratch", "source"])  # scratch is not pre-trained
    notes = " ".join(collection.notes())
    assert "classification/cub200/kdep_all/seed2" in notes and "detection/det/kdep_all/seed1" in notes


def test_aggregation_is_mean_and_sample_std_over_seeds(tmp_path, two_roots):
    from kdflow.jobs.report import report_plan
    from kdflow.report.collect import collect_results
    from kdflow.report.tables import Aggregation, aggregate

    a, b = two_roots
    results = collect_results(report_plan(_config(tmp_path, a)), [a, b]).results
    stats = aggregate(results, Aggregation()).set_index(["task", "run"])
    assert stats.loc[("classification", "scratch"), "mean"] == pytest.approx(12.0)
    assert stats.loc[("classification", "scratch"), "std"] == pytest.approx(2.0)
    assert stats.loc[("classification", "kdep_half"), "std"] == pytest.approx(3 ** 0.5)  # 40, 40, 43
    assert stats.loc[("classification", "kdep_all"), "n"] == 2  # its seed 2 is missing
    best = aggregate(results, Aggregation(checkpoint="best", spread="sem")).set_index(["task", "run"])
    assert best.loc[("classification", "scratch"), "mean"] == pytest.approx(13.0)
    assert best.loc[("classification", "scratch"), "std"] == pytest.approx(2.0 / 3 ** 0.5)


def test_tables_show_published_numbers_and_differences_of_matching_configurations(tmp_path, two_roots):
    from kdflow.report.build import make_tables, read_collection, write_collection
    from kdflow.jobs.report import report_plan
    from kdflow.report.collect import collect_results

    a, b = two_roots
    published = tmp_path / "published"
    published.mkdir()
    (published / "paper.yaml").write_text(yaml.safe_dump({"paper": "P", "numbers": [
        {"label": "KDEP 100 %", "task": "classification", "dataset": "cub200", "metric": "top1", "value": 50.5,
         "source": "Table 1", "configuration": {"method": "kdep", "student": "resnet18", "pretrain_fraction": 1.0}},
        {"label": "best", "task": "classification", "dataset": "cub200", "metric": "top1", "value": 60.0,
         "source": "an aggregator", "configuration": "unknown"},
        {"label": "other set", "task": "classification", "dataset": "dtd", "metric": "top1", "value": 70.0,
         "source": "Table 1", "configuration": "unknown"}]}))
    collection = collect_results(report_plan(_config(tmp_path, a)), [a, b])
    write_collection(collection, tmp_path / "tables")
    make_tables(read_collection(tmp_path / "tables"), {"checkpoint": "final"}, published, tmp_path / "tables")
    main = (tmp_path / "tables" / "main.md").read_text()
    lines = main.splitlines()
    runs = [line.split("|")[1].strip() for line in lines if line.startswith("| ") and "|---" not in line][1:]
    assert runs[:4] == ["scratch", "sup", "kdep_half", "kdep_all"]  # scratch, supervised, KDEP by fraction
    assert "| P: KDEP 100 % | published |  | 50.50 |" in main and "| P: best † | published |  | 60.00 |" in main
    assert "| Δ kdep_all − P: KDEP 100 % |  |  | +0.50 |" in main  # mean(50, 52) - 50.5; kdep_half's fraction differs
    assert "kdep_half − P" not in main and "other set" not in main and "Δ kdep_all − P: best" not in main
    assert "12.00 ± 2.00" in main and "mean ± sample standard deviation" in main
    assert "Missing jobs (1" in main and "Failed jobs (1" in main
    cost = pd.read_csv(tmp_path / "tables" / "cost.csv").set_index("run")
    assert cost.loc["kdep_half", "pretrain_wall_s"] / cost.loc["sup", "pretrain_wall_s"] == pytest.approx(0.1)
    assert "0.10×" in (tmp_path / "tables" / "cost.md").read_text()  # KDEP's "less time" as a ratio
    detection = pd.read_csv(tmp_path / "tables" / "detection.csv").set_index("run")
    assert detection.loc["kdep_all", "n"] == 1 and detection.loc["scratch", "mean"] == pytest.approx(6.0)


def test_a_published_number_without_source_or_with_a_typo_key_is_refused(tmp_path):
    from kdflow.report.published import PublishedError, load_published

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"paper": "P", "numbers": [
        {"label": "x", "task": "classification", "dataset": "d", "metric": "top1", "value": 1.0,
         "configuration": "unknown"}]}))
    with pytest.raises(PublishedError, match=r"bad.yaml: numbers\[0\].source: required"):
        load_published([bad])
    bad.write_text(yaml.safe_dump({"paper": "P", "numbers": [
        {"label": "x", "task": "classification", "dataset": "d", "metric": "top1", "value": 1.0, "source": "s",
         "configuration": {"method": "kdep", "studnet": "resnet18"}}]}))
    with pytest.raises(PublishedError, match=r"numbers\[0\].configuration"):
        load_published([bad])


def test_the_repositorys_published_numbers_load(tmp_path):
    from kdflow.report.outputs import PUBLISHED_DIR
    from kdflow.report.published import load_published, published_files

    numbers = load_published(published_files(PUBLISHED_DIR))
    papers = {p.paper for p in numbers}
    assert papers == {"KDEP", "FKD", "VkD", "FunMatch"}
    kdep = {(p.dataset, p.value) for p in numbers if p.paper == "KDEP" and p.label == "best KDEP (aggregator)"}
    assert ("cifar100", 82.89) in kdep and all(p.source for p in numbers)


def test_latex_escapes_specials_and_balances_its_tabular():
    from kdflow.report.tables import Table, latex_escape

    assert latex_escape("kdep_r18 50% a&b #1 $x ~") == r"kdep\_r18 50\% a\&b \#1 \$x \textasciitilde{}"
    assert latex_escape("12.00 ± 0.50") == r"12.00 $\pm$ 0.50"
    table = Table(name="t", title="T", row_header="run", header=[("cls", "a_b"), ("cls", "c%"), ("", "d")],
                  rows=[["r_1", "1", "2", "3"], ["r_2", "4", "5", "6"]], data=pd.DataFrame(), blocks=[0, 1])
    tex = table.latex()
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") == 1
    assert "\\multicolumn{2}{c}{cls}" in tex and "\\cmidrule(lr){2-3}" in tex
    assert "a\\_b" in tex and "c\\%" in tex and "r\\_1" in tex and "_" not in tex.replace("\\_", "")
    rows = [line for line in tex.splitlines() if line.endswith("\\\\")]
    assert all(line.count("&") == 3 for line in rows[1:])  # every row has the header's 4 cells
    assert all(ord(ch) < 128 for ch in tex)


def _pdflatex() -> str:
    """pdflatex with booktabs, installed from Debian's packages when absent (root only), as the
    SLURM tests install theirs."""
    found = shutil.which("pdflatex")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                                                  "texlive-latex-base", "texlive-latex-recommended"]):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
            assert out.returncode == 0, out.stderr[-2000:]
        found = shutil.which("pdflatex")
    assert found, "pdflatex is needed (texlive-latex-base, texlive-latex-recommended) and could not be installed"
    return found


@pytest.mark.slow
def test_every_latex_table_compiles_with_pdflatex(tmp_path, two_roots):
    from kdflow.report.build import make_tables, read_collection, write_collection
    from kdflow.jobs.report import report_plan
    from kdflow.report.collect import collect_results
    from kdflow.report.outputs import PUBLISHED_DIR

    pdflatex = _pdflatex()
    a, b = two_roots
    tables = tmp_path / "tables"
    write_collection(collect_results(report_plan(_config(tmp_path, a)), [a, b]), tables)
    written = make_tables(read_collection(tables), {"checkpoint": "final"}, PUBLISHED_DIR, tables)
    assert set(written) == {"classification", "detection", "main", "cost", "pretraining", "published"}
    body = "\n".join(f"\\section*{{{name}}}\n\\resizebox{{\\textwidth}}{{!}}{{\\input{{{files['tex'].name}}}}}"
                     for name, files in written.items())
    doc = tables / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n"
                   f"\\begin{{document}}\n{body}\n\\end{{document}}\n")
    out = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tables,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    assert (tables / "doc.pdf").stat().st_size > 0


def test_plots_have_the_expected_axes_and_legends(tmp_path, two_roots):
    from kdflow.report import plots
    from kdflow.report.build import make_plots, read_collection, transfer_curve_frame, write_collection
    from kdflow.jobs.report import report_plan
    from kdflow.report.collect import collect_results
    from kdflow.report.tables import Aggregation, aggregate

    a, b = two_roots
    collection = collect_results(report_plan(_config(tmp_path, a)), [a, b])
    stats = aggregate(collection.results, Aggregation())
    order = ["scratch", "sup", "kdep_half", "kdep_all"]
    fig = plots.downstream(stats, collection.runs, order)
    cls, det = fig.axes[:2]
    assert cls.get_ylabel() == "top-1 accuracy (%)" and det.get_ylabel() == "box AP (%)"
    assert [t.get_text() for t in cls.get_xticklabels()] == order
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["scratch", "supervised", "kdep"]
    fig = plots.score_vs_cost(stats, collection.runs)
    assert {ax.get_xlabel() for ax in fig.axes} == {"pre-training wall time (h)", "images seen in pre-training"}
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"scratch", "supervised", "kdep"}
    fig = plots.transfer_curves(transfer_curve_frame(collection.results, Aggregation()), order)
    assert fig.axes[0].get_xlabel() == "fine-tuning epoch" and fig.axes[0].get_ylabel() == "test top-1 accuracy (%)"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == order
    write_collection(collection, tmp_path / "tables")
    written = make_plots(read_collection(tmp_path / "tables"), {"checkpoint": "final"}, tmp_path / "plots")
    assert set(written) == {"downstream", "score_vs_cost", "transfer_curves", "pretrain_loss"}
    for files in written.values():
        assert files["png"].read_bytes()[:4] == b"\x89PNG" and files["pdf"].read_bytes()[:4] == b"%PDF"


def test_kdflow_report_merges_roots_without_snakemake(tmp_path, two_roots):
    a, b = two_roots
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(results=a))
    out_root = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "kdflow", "report", "--config", str(config), "--out", str(out_root),
                           str(a), str(b)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "missing: classification/cub200/kdep_all/seed2" in done.stdout
    assert "failed: detection/det/kdep_all/seed1" in done.stdout
    for name in ("main", "cost", "pretraining", "published", "classification", "detection"):
        for ext in ("csv", "md", "tex"):
            assert (out_root / "tables" / f"{name}.{ext}").is_file()
    assert (out_root / "plots" / "score_vs_cost.pdf").is_file()
    results = pd.read_csv(out_root / "tables" / "all_results.csv")
    assert set(results["source"].map(lambda s: Path(s).parts[len(tmp_path.parts)])) == {"cluster", "laptop"}
    assert "Failed jobs (1, not in the tables): detection/det/kdep_all/seed1" in (out_root / "tables" / "main.md").read_text()
