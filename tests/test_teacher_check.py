"""teacher_eval: a teacher far below its threshold stops the pipeline with a message that says why."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_imagefolder
from kdflow.data.imagefolder import split_manifest, write_manifest
from kdflow.jobs.teacher import TeacherCheckFailed, check_teacher
from kdflow.models.network import InputSpec, Network
from kdflow.models.teacher import save_teacher

CHECK = {"batch_size": 8, "eval": {"resize": 16, "crop": 16}}


def _check(teacher, folder, min_top1):
    """A resolved teacher check (kdflow.config.resolve_teacher_check) for the test set below."""
    dataset = {"name": "val_set", "root": folder / "ds", "work_dir": folder / "work"}
    return {"teacher": teacher, **CHECK, "min_top1": min_top1, "dataset": dataset}


@pytest.fixture
def files(tmp_path):
    root = make_imagefolder(tmp_path / "ds", {"a": 4, "b": 4, "c": 4}, split="val", size=16)
    write_manifest(tmp_path / "test.tsv", split_manifest(root, "val"), "val_set")
    torch.manual_seed(0)
    teacher = Network("test_resnet", num_classes=3, input_spec=InputSpec(channel_order="BGR"))
    save_teacher(tmp_path / "t.safetensors", teacher, "ms_r50", "random_init")
    return tmp_path


def test_teacher_below_threshold_stops_with_a_clear_message(files):
    with pytest.raises(TeacherCheckFailed) as err:
        check_teacher(_check("ms_r50", files, 99.0), files / "t.safetensors", files / "test.tsv",
                      files / "check.json")
    msg = str(err.value)
    assert "teacher 'ms_r50' reaches top-1" in msg and "below check.min_top1 = 99.0%" in msg
    assert "channel_order BGR" in msg
    assert not (files / "check.json").exists()


def test_teacher_above_threshold_records_its_accuracy(files):
    record = check_teacher(_check("ms_r50", files, 0.0), files / "t.safetensors", files / "test.tsv",
                           files / "check.json")
    assert json.loads((files / "check.json").read_text()) == record
    assert record["images"] == 12 and 0 <= record["top1"] <= 100


def test_class_count_mismatch_is_reported(files, tmp_path):
    torch.manual_seed(0)
    save_teacher(tmp_path / "t1000.safetensors", Network("test_resnet", num_classes=10), "in1k", "random_init")
    with pytest.raises(TeacherCheckFailed, match="has 10 outputs, .* has 3 classes"):
        check_teacher(_check("in1k", files, 0.0), tmp_path / "t1000.safetensors", files / "test.tsv",
                      files / "check.json")
