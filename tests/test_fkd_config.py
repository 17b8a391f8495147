"""FKD in the config: the paper recipe (config/fkd.yaml) builds its DAG; references between soft
labels, teachers, subsets and runs are checked with the key at fault named."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO
from kdflow.config import ConfigError, load_config, resolve_run
from test_kdep_config import dry_run
from test_workflow import planned_jobs


def _dry_run(*extra):
    return dry_run("fkd.yaml", *extra)


def test_fkd_recipe_builds_its_dag():
    out = _dry_run("--config", "allow_placeholders=True")
    assert out.returncode == 0, out.stderr[-3000:]
    assert planned_jobs(out.stdout + out.stderr) == {
        "prepare_dataset": 1,
        "imagenet_subset": 1,
        "teacher": 1,
        "teacher_eval": 1,
        "fkd_soft_label_shard": 64 + 16,  # generated set in 64 jobs, the released set converted in 16
        "fkd_soft_labels": 2,
        "pretrain": 2,  # the ResNet-50 on each label set
        "collect_results": 1,  # the report: its pre-training table
        "tables": 1,
        "plots": 1,
        "all": 1,
    }
    cfg = load_config(REPO / "config" / "fkd.yaml")
    run = resolve_run(cfg, "fkd_r50_effl2")
    assert run["training"]["epochs"] == 300 and run["fkd"]["crops_per_visit"] == 4
    labels = run["soft_labels"]
    assert labels["generate"]["num_crops"] == 500 and labels["label"] == {"type": "marginal_smoothing", "k": 5}
    assert labels["generate"]["crop"]["scale"] == [0.08, 0.936] and run["student"]["arch"] == "resnet50"


def test_fkd_recipe_names_its_unfilled_paths():
    out = _dry_run()
    assert out.returncode != 0
    named = re.findall(r"^\s+(config\.[\w.]+): <FILL", out.stdout + out.stderr, re.M)
    assert sorted(named) == ["config.datasets.imagenet.root", "config.soft_labels.fkd_released_ms5.import.root"]


def _demo_with(tmp_path, edit):
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    edit(cfg)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["pretrain"]["fkd_r18_in48"]["fkd"].pop("soft_labels"),
     "config.pretrain.fkd_r18_in48.fkd.soft_labels: method 'fkd' needs a soft_labels entry"),
    (lambda c: c["pretrain"]["fkd_r18_in48"]["fkd"].update(soft_labels="nope"),
     "config.pretrain.fkd_r18_in48.fkd.soft_labels: 'nope' is not a defined soft-label set"),
    (lambda c: c["pretrain"]["fkd_r18_in48"].update(data="demo_in_all"),
     "config.pretrain.fkd_r18_in48.data: 'demo_in_all' differs from 'demo_in_48'"),
    (lambda c: c["soft_labels"]["demo_r18_in48"]["generate"].update(teacher="r99"),
     "config.soft_labels.demo_r18_in48.generate.teacher: 'r99' is not a defined teacher"),
    (lambda c: c["soft_labels"]["demo_r18_in48"]["label"].update(type="ori"),
     "config.soft_labels.demo_r18_in48.label.type"),
    (lambda c: c["soft_labels"]["demo_r18_in48"].update(source="x"),
     "config.soft_labels.demo_r18_in48: unknown key"),
])
def test_fkd_reference_errors_name_the_key(tmp_path, edit, message):
    with pytest.raises(ConfigError) as err:
        load_config(_demo_with(tmp_path, edit))
    assert message in str(err.value)


def test_a_missing_import_folder_is_reported_before_any_job(tmp_path):
    from kdflow.config import check_dataset_roots

    def add_import(c):
        c["soft_labels"]["released"] = {"data": "demo_in_48", "import": {"root": str(tmp_path / "absent")}}

    cfg = load_config(_demo_with(tmp_path, add_import))
    with pytest.raises(ConfigError, match=r"config\.soft_labels\.released\.import\.root: .*absent has no train/"):
        check_dataset_roots(cfg, [])
