"""Pre-training seeds: a run with ``seeds: [k, ...]`` is pre-trained once per seed (run
``<name>.seed<k>``, its training.seed k), a grid's fine-tuning seed s of it starts from pre-training
seed s, and the report folds the seeds back into one row whose spread covers pre-training too."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, tool
from test_report import CONFIG, _write_pretrain

TOP1 = {"scratch": [10.0, 12.0, 14.0], "sup": [30.0, 31.0, 32.0], "kdep_half": [40.0, 40.0, 43.0],
        "kdep_all": [50.0, 56.0, 53.0]}


def _raw(results) -> dict:
    raw = yaml.safe_load(CONFIG.format(results=results))
    raw["pretrain"]["kdep_all"]["seeds"] = [0, 1, 2]
    return raw


def _validated(raw: dict) -> dict:
    from kdflow.config import validate_config

    return validate_config(copy.deepcopy(raw), source="test config")


def test_a_run_with_seeds_becomes_one_run_per_seed_and_fine_tuning_seed_s_starts_from_seed_s(tmp_path):
    from kdflow.config import pretrain_groups, resolve_run, transfer_jobs, validate_config

    cfg = _validated(_raw(tmp_path))
    names = ["kdep_all.seed0", "kdep_all.seed1", "kdep_all.seed2"]
    assert "kdep_all" not in cfg["pretrain"] and set(names) <= set(cfg["pretrain"])
    assert pretrain_groups(cfg) == {"kdep_all": dict(enumerate(names))}
    resolved = [resolve_run(cfg, name) for name in names]
    assert [r["training"]["seed"] for r in resolved] == [0, 1, 2]
    assert len({r.hash for r in resolved}) == 3  # three results, each its own identity ...

    def without_name_and_seed(identity):
        return {**identity, "name": None, "training": {**identity["training"], "seed": None}}

    # ... that differ in the name and the seed alone
    assert all(without_name_and_seed(r.identity) == without_name_and_seed(resolved[0].identity) for r in resolved)
    assert not any("replica_of" in r.identity for r in resolved)
    jobs = {(j["task"], j["run"], j["seed"]): j["student_run"] for j in transfer_jobs(cfg)}
    assert [jobs[("classification", "kdep_all", s)] for s in (0, 1, 2)] == names
    assert [jobs[("detection", "kdep_all", s)] for s in (0, 1)] == names[:2]
    assert jobs[("classification", "sup", 1)] == "sup" and jobs[("classification", "scratch", 2)] == "scratch"
    assert validate_config(copy.deepcopy(cfg))["pretrain"] == cfg["pretrain"]  # expanding twice changes nothing


@pytest.mark.parametrize("change, message", [
    (lambda raw: raw["pretrain"]["kdep_all"].update(seeds=[0, 1]),
     "config.transfer.grids.cls.seeds: [2] are not pre-training seeds of 'kdep_all' (its seeds: [0, 1])"),
    (lambda raw: raw["pretrain"]["scratch"].update(seeds=[0, 1, 2]),
     "config.pretrain.scratch.seeds: method 'scratch' does not pre-train"),
    (lambda raw: raw["pretrain"].update({"kdep_all.seed1": dict(raw["pretrain"]["sup"])}),
     "config.pretrain.kdep_all.seeds: pre-training seed 1 is run 'kdep_all.seed1', which the config already defines"),
    (lambda raw: raw["pretrain"]["sup"].update(replica_of="kdep_all"),
     "config.pretrain.sup.replica_of: set by kdflow"),
    (lambda raw: raw["pretrain"]["kdep_all"].update(teacher="t2"),
     "config.pretrain.kdep_all.teacher: 't2' is not a defined teacher"),
])
def test_a_bad_seeds_entry_is_refused_naming_the_key_the_user_wrote(tmp_path, change, message):
    from kdflow.config import ConfigError

    raw = _raw(tmp_path)
    change(raw)
    with pytest.raises(ConfigError) as err:
        _validated(raw)
    assert message in str(err.value)
    assert str(err.value).count(message) == 1  # once, not once per seed


def test_a_job_asking_for_the_group_by_name_is_told_its_runs(tmp_path):
    from kdflow.config import ConfigError, resolve_run

    with pytest.raises(ConfigError, match=r"'kdep_all' has pre-training seeds: it is pre-trained as "
                                          r"kdep_all\.seed0, kdep_all\.seed1, kdep_all\.seed2"):
        resolve_run(_validated(_raw(tmp_path)), "kdep_all")


def _write_transfer(root: Path, run: str, seed: int, value: float, run_hash: str) -> None:
    folder = root / "transfer" / "classification" / "cub200" / run / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "task": "classification", "dataset": "cub200", "run": run, "seed": seed, "protocol": "ft",
        "protocol_hash": "p" * 64, "run_config_hash": run_hash,
        "metrics": [{"metric": "top1", "value": value, "checkpoint": "final"}]}))
    (folder / "provenance.json").write_text(json.dumps({"wall_seconds": 60.0, "device": "cpu", "git_commit": "abc"}))


def test_the_report_folds_the_seeds_into_one_row_whose_spread_covers_pre_training(tmp_path):
    from kdflow.config import resolve_run
    from kdflow.jobs.report import report_plan
    from kdflow.report.build import make_tables, read_collection, write_collection
    from kdflow.report.collect import collect_results

    root = tmp_path / "results"
    cfg = _validated(_raw(root))
    cfg["transfer"]["grids"].pop("det")
    for seed, wall in enumerate((3000.0, 3600.0, 4200.0)):
        _write_pretrain(root, f"kdep_all.seed{seed}", wall, 400, val_top1=20.0 + seed)
    for run, wall in (("kdep_half", 3600.0), ("sup", 36000.0)):
        _write_pretrain(root, run, wall, 400)
    for run, values in TOP1.items():
        for seed, value in enumerate(values):
            # each transfer job records the hash of the run it fine-tuned: three different ones for kdep_all
            student = f"{run}.seed{seed}" if run == "kdep_all" else run
            run_hash = resolve_run(cfg, student).hash if run != "scratch" else "s" * 64
            _write_transfer(root, run, seed, value, run_hash)
    collection = collect_results(report_plan(cfg), [root])
    assert collection.missing == [] and collection.failed == []
    rows = collection.results[collection.results.run == "kdep_all"].sort_values("seed")
    assert list(rows.pretrain_run) == ["kdep_all.seed0", "kdep_all.seed1", "kdep_all.seed2"]
    assert list(rows.pretrain_seed) == [0, 1, 2] and list(rows.pretrain_wall_s) == [3000.0, 3600.0, 4200.0]
    tables = tmp_path / "tables"
    write_collection(collection, tables)
    make_tables(read_collection(tables), cfg["report"], REPO / "config" / "published", tables)
    stats = pd.read_csv(tables / "classification.csv").set_index("run")
    assert stats.loc["kdep_all", "n"] == 3 and stats.loc["kdep_all", "mean"] == pytest.approx(53.0)
    assert stats.loc["kdep_all", "std"] == pytest.approx(3.0)  # 50, 56, 53
    assert stats.loc["kdep_all", "pretrain_seeds"] == "0,1,2" and pd.isna(stats.loc["sup", "pretrain_seeds"])
    md = (tables / "classification.md").read_text()
    assert re.search(r"\| kdep_all \| 53\.00 ± 3\.00 \|", md)
    assert "row kdep_all is pre-trained once per seed and fine-tuning seed s starts from pre-training seed s" in md
    cost = pd.read_csv(tables / "cost.csv").set_index("run")
    assert cost.loc["kdep_all", "pretrain_wall_s"] == pytest.approx(3600.0)  # the mean over its seeds
    pretraining = (tables / "pretraining.md").read_text()
    assert all(f"kdep_all.seed{k}" in pretraining for k in range(3))  # each pre-training run's own row


def _dry_run_inputs(results: Path) -> dict[str, str]:
    """{output: input line} of every job of the demo's dry run."""
    out = subprocess.run([tool("snakemake"), "-n", "--cores", "2", "--config", f"results={results}"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = {}
    for block in out.stdout.split("\nrule ")[1:]:
        fields = dict(re.findall(r"^\s+(input|output): (.*)$", block, re.M))
        for output in fields.get("output", "").split(", "):
            jobs[output] = fields.get("input", "")
    return jobs


def test_the_demo_dag_fine_tunes_each_pre_training_seed_with_its_fine_tuning_seed(tmp_path):
    results = tmp_path / "results"
    jobs = _dry_run_inputs(results)
    for seed in (0, 1, 2):
        student = results / "pretrain" / f"kdep_r18_r18_in48.seed{seed}"
        cls = jobs[str(results / "transfer" / "classification" / "demo_shapes" / "kdep_r18_r18_in48" / f"seed{seed}"
                       / "metrics.json")]
        assert str(student / "student.safetensors") in cls.split(", ")
        seg = jobs[str(results / "transfer" / "segmentation" / "demo_seg" / "kdep_r18_r18_in48" / f"seed{seed}"
                       / "metrics.json")]
        assert str(student / "export" / "mmseg" / "backbone.pth") in seg.split(", ")
        assert str(results / "kdep_targets" / "demo_r18_in48_targets" / "store.json") in jobs[
            str(results / "pretrain" / f"kdep_replay_r18_r18_in48.seed{seed}" / "student.safetensors")].split(", ")
    assert not any("pretrain/kdep_r18_r18_in48/" in output for output in jobs)  # the group itself is not trained
