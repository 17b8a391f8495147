"""config/methods.yaml: the method comparison a user launches on a cluster builds its DAG over
placeholders, every method from the one teacher on the one subset with one epoch budget."""

from __future__ import annotations

from conftest import REPO
from kdflow.config import load_config, method_of
from test_kdep_config import dry_run
from test_workflow import planned_jobs

METHODS = {"scratch", "supervised", "kd", "kdep", "fkd", "vkd", "funmatch"}


def test_comparison_grid_job_counts():
    out = dry_run("methods.yaml", "--config", "allow_placeholders=True")
    assert out.returncode == 0, out.stderr[-3000:]
    assert planned_jobs(out.stdout + out.stderr) == {
        "prepare_dataset": 5,  # ImageNet and the four transfer datasets
        "imagenet_subset": 1,  # the 128-per-class subset
        "teacher": 1,
        "teacher_eval": 1,  # every distilling method waits for SP-R50's checked top-1
        "svd_weights": 1,  # KDEP's basis
        "fkd_soft_label_shard": 8,
        "fkd_soft_labels": 1,
        "pretrain": 6,  # every method but scratch
        "transfer_cls": 7 * 4 * 2,  # 7 runs x 4 datasets x 2 seeds
        "collect_results": 1,
        "tables": 1,
        "plots": 1,
        "all": 1,
    }


def test_every_method_shares_the_teacher_subset_and_epoch_budget():
    cfg = load_config(REPO / "config" / "methods.yaml")  # placeholders are only checked by the workflow
    runs = cfg["pretrain"]
    assert {run["method"] for run in runs.values()} == METHODS
    trained = {name: run for name, run in runs.items() if method_of(cfg, name).trains}
    assert {run["data"] for run in trained.values()} == {"imgnet_128k"}
    assert {run["training"]["epochs"] for run in trained.values()} == {90}
    assert {run["teacher"] for run in trained.values() if "teacher" in run} == {"sp_r50"}
    assert cfg["soft_labels"]["spr50_128k_100"]["generate"]["teacher"] == "sp_r50"  # FKD's labels: the same teacher
    # teacher's signal only: no distilling method reads a label
    assert runs["kd_spr50_r18_in128k"]["kd"]["label_weight"] == 0
    assert runs["vkd_spr50_r18_in128k"]["vkd"]["label_weight"] == 0 == runs["vkd_spr50_r18_in128k"]["vkd"]["kd_weight"]
    grids = cfg["transfer"]["grids"].values()
    assert sorted(d for g in grids for d in g["datasets"]) == ["caltech256", "cifar100", "cub200", "dtd"]
    assert all(set(g["runs"]) == set(runs) and g["seeds"] == [0, 1] for g in grids)
