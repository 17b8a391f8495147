"""Exporting a student to detectron2: names and shapes are those of detectron2's own ResNet
backbone, tensors arrive unchanged, config.yaml follows the student's input spec, and a file that
does not match fails naming the key without leaving an output behind."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import yaml

from conftest import save_student
from kdflow.export.detectron2 import export_detectron2, recorded_parameters, to_detectron2_names
from kdflow.io import read_json
from kdflow.models.checkpoints import CheckpointError

RESNETS = ("resnet18", "resnet50")
BGR_CAFFE = {"mean": [0.4062, 0.4579, 0.4853], "std": [1 / 255, 1 / 255, 1 / 255], "channel_order": "BGR"}


def _outputs(tmp_path):
    out = tmp_path / "export"
    return out / "model.pkl", out / "report.json", out / "config.yaml"


@pytest.mark.parametrize("arch", (*RESNETS, "resnet34", "resnet101"))
def test_export_has_detectron2s_names_and_shapes_and_the_students_tensors(tmp_path, students, arch):
    net, student = students(arch)
    sd = net.backbone_state_dict()
    report = export_detectron2(student, *_outputs(tmp_path))
    with open(_outputs(tmp_path)[0], "rb") as fh:
        written = pickle.load(fh)
    assert written["__author__"] == "kdflow" and written["matching_heuristics"] is True
    model = written["model"]
    assert {k: tuple(v.shape) for k, v in model.items()} == recorded_parameters(arch)
    assert all(isinstance(v, np.ndarray) for v in model.values())
    renamed = {e["source"]: e["target"] for e in report["keys"]}
    assert renamed["conv1.weight"] == "stem.conv1.weight" and renamed["bn1.running_var"] == "stem.conv1.norm.running_var"
    assert renamed["layer1.0.bn2.weight"] == "res2.0.conv2.norm.weight"
    assert renamed["layer4.0.downsample.1.bias"] == "res5.0.shortcut.norm.bias"
    for source, target in renamed.items():
        if target is None:
            assert source.startswith("fc.")
            continue
        assert np.array_equal(model[target], sd[source].numpy()), source
    assert report["counts"]["mapped"] == len(recorded_parameters(arch))
    assert report["verification"]["missing"] == [] and report["verification"]["unexpected"] == []


def test_config_yaml_follows_the_students_input_spec(tmp_path, students):
    _, student = students("resnet18")
    export_detectron2(student, *_outputs(tmp_path / "rgb"))
    rgb = yaml.safe_load(_outputs(tmp_path / "rgb")[2].read_text())
    assert rgb == {"MODEL": {"PIXEL_MEAN": [123.675, 116.28, 103.53], "PIXEL_STD": [58.395, 57.12, 57.375],
                             "RESNETS": {"DEPTH": 18, "STRIDE_IN_1X1": False, "RES2_OUT_CHANNELS": 64}},
                   "INPUT": {"FORMAT": "RGB"}}
    bgr = save_student(tmp_path / "bgr.safetensors", "resnet50", students("resnet50")[0].backbone_state_dict(),
                       BGR_CAFFE)
    export_detectron2(bgr, *_outputs(tmp_path / "bgr"))
    config = yaml.safe_load(_outputs(tmp_path / "bgr")[2].read_text())
    assert config["INPUT"]["FORMAT"] == "BGR"
    assert config["MODEL"]["PIXEL_MEAN"] == pytest.approx([103.581, 116.7645, 123.7515], abs=1e-3)
    assert config["MODEL"]["PIXEL_STD"] == pytest.approx([1.0, 1.0, 1.0])
    assert config["MODEL"]["RESNETS"]["RES2_OUT_CHANNELS"] == 256
    assert read_json(_outputs(tmp_path / "bgr")[1])["config"] == config


@pytest.mark.parametrize("fault", ["renamed", "missing", "extra", "wrong_shape"])
def test_a_key_that_does_not_match_fails_naming_it_and_leaves_no_file(tmp_path, students, fault):
    sd = dict(students("resnet18")[0].backbone_state_dict())
    if fault == "renamed":
        sd["layer3.1.bn9.weight"] = sd.pop("layer3.1.bn2.weight")
        expected = "layer3.1.bn9.weight"
    elif fault == "missing":
        del sd["layer3.1.bn2.weight"]
        expected = r"missing keys \(1\): res4\.1\.conv2\.norm\.weight"  # its detectron2 name
    elif fault == "extra":
        sd["layer5.0.conv1.weight"] = torch.zeros(3)
        expected = r"layer5\.0\.conv1\.weight"
    else:
        sd["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
        expected = r"res3.0.conv1.weight: file \(128, 64, 1, 1\) vs model \(128, 64, 3, 3\)"
    student = save_student(tmp_path / "student.safetensors", "resnet18", sd)
    outputs = _outputs(tmp_path)
    outputs[0].parent.mkdir()
    outputs[0].write_bytes(b"an earlier export")  # must not survive as if it were this student's
    with pytest.raises(CheckpointError, match=expected):
        export_detectron2(student, *outputs)
    assert not any(path.exists() for path in outputs)


def test_mapping_refuses_an_architecture_without_a_detectron2_backbone():
    """Not a ResNet, and no feature maps at strides 4-32 for kdflow's backbone (a ViT)."""
    with pytest.raises(ValueError, match="no detectron2 export for student arch 'vit_tiny_patch16_224'"):
        to_detectron2_names("vit_tiny_patch16_224", {})


@pytest.mark.parametrize("arch", RESNETS)
def test_detectron2_loads_the_pkl_with_every_backbone_parameter_matched(tmp_path, students, arch):
    d2 = pytest.importorskip("detectron2", reason="detectron2 is not installed (clusters build it from source)")
    from detectron2.checkpoint import DetectionCheckpointer

    from kdflow.export.detectron2 import _real_backbone

    backbone = _real_backbone(arch)
    _, student = students(arch)
    export_detectron2(student, *_outputs(tmp_path))
    checkpointer = DetectionCheckpointer(backbone)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(_outputs(tmp_path)[0])))
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == [], d2.__file__
    with open(_outputs(tmp_path)[0], "rb") as fh:
        model = pickle.load(fh)["model"]
    for name, tensor in backbone.state_dict().items():
        assert np.array_equal(tensor.numpy(), model[name]), name
