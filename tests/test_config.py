"""Config validation: defaults filled, and every error names the key path at fault."""

from __future__ import annotations

import copy

import pytest
import yaml

from kdflow.config import ConfigError, check_dataset_roots, load_config, resolve_run, transfer_jobs, validate_config


@pytest.fixture
def demo(repo):
    with open(repo / "config" / "config.yaml") as fh:
        return yaml.safe_load(fh)


def test_demo_config_is_valid_and_defaults_are_filled(demo):
    cfg = validate_config(copy.deepcopy(demo))
    run = cfg["pretrain"]["kdep_r18_r18_in48"]
    assert run["kdep"] == {"tau": 0.1, "power": 3, "loss_weight": 3.0}
    assert cfg["students"]["r18"]["input"]["channel_order"] == "RGB"
    assert cfg["report"]["checkpoint"] == "final"
    assert len(transfer_jobs(cfg)) == 15  # 5 runs x 3 seeds
    resolved = resolve_run(cfg, "kdep_r18_r18_in48")
    assert resolved["teacher"]["name"] == "demo_r18" and resolved["kdep"]["svd_subset"] == "demo_in_48"


def test_unknown_reference_names_key_path(demo):
    demo["pretrain"]["kdep_r18_r18_in48"]["teacher"] = "demo_r62"
    with pytest.raises(ConfigError) as err:
        validate_config(demo)
    assert ("config.pretrain.kdep_r18_r18_in48.teacher: 'demo_r62' is not a defined teacher "
            "(known: demo_r18, demo_r18_untrained)") in str(err.value)


def test_wrong_type_names_key_path(demo):
    demo["transfer"]["protocols"]["demo_ft"]["training"]["epochs"] = "fifteen"
    with pytest.raises(ConfigError) as err:
        validate_config(demo)
    assert "config.transfer.protocols.demo_ft.training.epochs: 'fifteen' is not of type 'integer'" in str(err.value)


def test_misspelt_key_names_key_path(demo):
    demo["pretrain"]["supervised_in48"]["trainng"] = {}
    with pytest.raises(ConfigError) as err:
        validate_config(demo)
    assert "config.pretrain.supervised_in48: unknown key" in str(err.value)
    assert "'trainng' was unexpected" in str(err.value)


def test_teacher_needs_exactly_one_source(demo):
    demo["teachers"]["demo_r18_untrained"]["pretrained"] = True
    with pytest.raises(ConfigError, match=r"config.teachers.demo_r18_untrained: needs exactly one of"):
        validate_config(demo)


def test_missing_dataset_folder_is_reported_before_jobs(demo, tmp_path):
    demo["datasets"]["imagenet"] = {"root": str(tmp_path / "imagenet")}
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    cfg = validate_config(demo)
    with pytest.raises(ConfigError) as err:
        check_dataset_roots(cfg, ["imagenet", "demo_in"])
    assert f"config.datasets.imagenet.val_split: folder {tmp_path / 'imagenet' / 'val'} does not exist" in str(err.value)


def test_load_config_reports_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
