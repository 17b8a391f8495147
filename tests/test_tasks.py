"""Tasks are a registry (kdflow.tasks): each names its rule, protocol schema, metric and table, so
segmentation and detection are additions; a config without any classification grid runs."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO


def test_every_task_has_its_rule_protocol_schema_and_script():
    from kdflow.config import effective_schema
    from kdflow.tasks import TASKS

    rules = "\n".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    schema = effective_schema()
    for task in TASKS.values():
        assert re.search(rf"^rule {task.rule}:", rules, re.M), task.rule
        assert (REPO / "workflow_scripts" / f"{task.rule}.py").is_file()
        assert task.protocol_schema in schema["$defs"]
        assert task.name in schema["$defs"]["protocol"]["properties"]["task"]["enum"]
        for name, protocol in task.builtin_protocols.items():
            assert protocol["task"] == task.name, name


def test_a_grid_whose_task_disagrees_with_its_protocol_is_refused():
    from kdflow.config import ConfigError, validate_config

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["transfer"]["grids"]["demo_cls"]["task"] = "segmentation"
    with pytest.raises(ConfigError, match=r"grids.demo_cls.task: 'segmentation', but protocol 'demo_ft' is a "
                                          r"'classification' protocol"):
        validate_config(cfg)
    cfg["transfer"]["grids"]["demo_cls"]["task"] = "keypoints"
    with pytest.raises(ConfigError, match=r"grids.demo_cls.task: 'keypoints' is not one of"):
        validate_config(cfg)


@pytest.mark.slow
def test_a_config_without_a_classification_grid_runs(tmp_path):
    from conftest import write_config
    from test_workflow import planned_jobs, snakemake

    raw = yaml.safe_load((REPO / "tests" / "data" / "tiny_config.yaml").read_text())
    raw["transfer"] = {}
    raw["pretrain"] = {"sup": raw["pretrain"]["sup"], "scratch": raw["pretrain"]["scratch"]}
    raw["soft_labels"] = {}
    raw["teachers"] = {}
    src = tmp_path / "src.yaml"
    src.write_text(yaml.safe_dump(raw))
    config = write_config(src, tmp_path)
    dry = snakemake(config, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    # The report stage runs for a pre-training-only config too: its pre-training table is all there is.
    assert planned_jobs(dry.stdout + dry.stderr) == {"demo_data": 1, "prepare_dataset": 1, "imagenet_subset": 1,
                                                     "pretrain": 1, "collect_results": 1, "tables": 1, "plots": 1,
                                                     "all": 1}
    done = snakemake(config)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "results" / "pretrain" / "sup" / "student.safetensors").is_file()
    tables = tmp_path / "results" / "tables"
    # No transfer results: no main, cost or per-task table; the pre-training and reference tables only.
    assert sorted(p.name for p in tables.glob("*.csv")) == ["all_results.csv", "pretrain_runs.csv",
                                                            "pretraining.csv", "published.csv"], \
        sorted(p.name for p in tables.iterdir())
