"""Exporting a student to an mmsegmentation backbone: the exported backbone computes what the
student computes, every key is accounted for, and a file that does not match fails without
leaving an output behind."""

from __future__ import annotations

import re

import pickle

import pytest
import torch
from torch import nn

from conftest import save_student
from kdflow.export.mmseg import (backbone_channels, backbone_config, build_backbone, export_mmseg,
                                  load_exported_backbone, to_mmseg_names)
from kdflow.io import read_json, sha256_file
from kdflow.models.checkpoints import CheckpointError, load_strict, read_weights
from kdflow.models.network import InputSpec

ARCHS = ("resnet18", "resnet50", "mobilenetv2_100")
DILATED = dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _built(config: dict) -> nn.Module:
    """The backbone in eval mode (mmseg's ResNet/MobileNetV2 ``train()`` returns None, so
    ``build(...).eval()`` cannot be chained)."""
    backbone = build_backbone(config)
    backbone.eval()
    return backbone


def _outputs(tmp_path):
    return tmp_path / "export" / "backbone.pth", tmp_path / "export" / "report.json"


@pytest.mark.parametrize("arch", ARCHS)
def test_exported_backbone_computes_the_students_feature_map(tmp_path, students, arch):
    net, student_path = students(arch)
    out, report_path = _outputs(tmp_path)
    report = export_mmseg(student_path, out, report_path)

    weights = torch.load(out, map_location="cpu", weights_only=True)
    backbone = _built(backbone_config(arch))
    assert load_strict(backbone, weights, "test")["loaded"] == len(backbone.state_dict())
    images = net.normalise(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        expected = net.net.forward_features(images)
        outputs = backbone(images)
    assert [o.shape[1] for o in outputs] == backbone_channels(arch)
    assert outputs[-1].shape == expected.shape
    torch.testing.assert_close(outputs[-1], expected, atol=1e-5, rtol=0)

    student_keys = list(read_weights(student_path).state_dict)
    assert [e["source"] for e in report["keys"]] == student_keys  # each once, in the file's order
    assert all(e["target"] for e in report["keys"]) and report["counts"]["dropped"] == 0
    assert report["counts"]["mapped"] == len(weights) == report["verification"]["loaded"]
    on_disk = read_json(report_path)
    assert on_disk["arch"] == arch and on_disk["input"] == InputSpec().as_dict()
    assert on_disk["source"]["sha256"] == sha256_file(student_path)
    assert on_disk["output"]["sha256"] == sha256_file(out)
    assert on_disk["keys"] == report["keys"]


@pytest.mark.parametrize("arch, head", [("resnet18", "fc"), ("mobilenetv2_100", "classifier")])
def test_only_the_classifier_is_dropped_and_said_why(students, arch, head):
    net, _ = students(arch)
    full = net.net.state_dict()
    mapped, report = to_mmseg_names(arch, full)
    assert [e["source"] for e in report] == list(full)
    dropped = [e for e in report if e["target"] is None]
    assert {e["source"] for e in dropped} == {f"{head}.weight", f"{head}.bias"}
    assert all("classifier" in e["reason"] for e in dropped)
    assert len(mapped) == len(full) - 2


def test_mobilenetv2_names(students):
    """Spot checks of the map, including the first block (no expand conv, so its depthwise conv
    comes first and timm's ``conv_pw`` is the linear conv there)."""
    net, _ = students("mobilenetv2_100")
    mapped, report = to_mmseg_names("mobilenetv2_100", net.backbone_state_dict())
    names = {e["source"]: e["target"] for e in report}
    assert names["conv_stem.weight"] == "conv1.conv.weight"
    assert names["blocks.0.0.conv_dw.weight"] == "layer1.0.conv.0.conv.weight"
    assert names["blocks.0.0.conv_pw.weight"] == "layer1.0.conv.1.conv.weight"
    assert names["blocks.1.0.conv_pw.weight"] == "layer2.0.conv.0.conv.weight"
    assert names["blocks.6.0.bn3.running_var"] == "layer7.0.conv.2.bn.running_var"
    assert names["conv_head.weight"] == "conv_head.conv.weight"
    assert names["bn2.num_batches_tracked"] == "conv_head.bn.num_batches_tracked"


def test_renamed_key_fails_naming_it_and_leaves_no_output(tmp_path, students):
    _, student_path = students("resnet18")
    sd = dict(read_weights(student_path).state_dict)
    sd["layer1.0.convX.weight"] = sd.pop("layer1.0.conv1.weight")
    bad = save_student(tmp_path / "renamed.safetensors", "resnet18", sd)
    out, report_path = _outputs(tmp_path)
    out.parent.mkdir()
    out.write_bytes(b"an earlier export")  # must not survive as this student's export
    report_path.write_text("{}")
    with pytest.raises(CheckpointError, match=r"layer1\.0\.convX\.weight") as failure:
        export_mmseg(bad, out, report_path)
    assert "layer1.0.conv1.weight" in str(failure.value) and bad in str(failure.value)
    assert not out.exists() and not report_path.exists()
    assert not list(out.parent.iterdir())  # no temporary file either


@pytest.mark.parametrize("fault", ["missing", "extra"])
def test_a_missing_or_extra_key_fails_naming_it_and_leaves_no_output(tmp_path, students, fault):
    _, student_path = students("resnet18")
    sd = dict(read_weights(student_path).state_dict)
    if fault == "missing":
        del sd["layer2.1.conv2.weight"]
        key = "layer2.1.conv2.weight"
    else:
        sd["layer5.0.conv1.weight"] = torch.zeros(3)
        key = "layer5.0.conv1.weight"
    bad = save_student(tmp_path / f"{fault}.safetensors", "resnet18", sd)
    out, report_path = _outputs(tmp_path)
    with pytest.raises(CheckpointError, match=re.escape(key)):
        export_mmseg(bad, out, report_path)
    assert not out.exists() and not report_path.exists()


def test_wrong_shape_fails_naming_the_key_and_leaves_no_output(tmp_path, students):
    _, student_path = students("resnet18")
    sd = dict(read_weights(student_path).state_dict)
    sd["layer4.1.bn2.weight"] = torch.ones(7)
    bad = save_student(tmp_path / "shape.safetensors", "resnet18", sd)
    out, report_path = _outputs(tmp_path)
    with pytest.raises(CheckpointError, match=r"layer4\.1\.bn2\.weight"):
        export_mmseg(bad, out, report_path)
    assert not out.exists() and not report_path.exists()


def test_mobilenetv2_failures_name_the_students_keys(tmp_path, students):
    _, student_path = students("mobilenetv2_100")
    out, report_path = _outputs(tmp_path)
    sd = dict(read_weights(student_path).state_dict)
    unknown = save_student(tmp_path / "unknown.safetensors", "mobilenetv2_100",
                    {**sd, "blocks.2.1.conv_extra.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"blocks\.2\.1\.conv_extra\.weight"):
        export_mmseg(unknown, out, report_path)
    assert not out.exists() and not report_path.exists()

    sd["blocks.6.0.bn3.bias"] = torch.zeros(5)
    shape = save_student(tmp_path / "shape.safetensors", "mobilenetv2_100", sd)
    with pytest.raises(CheckpointError, match=r"layer7\.0\.conv\.2\.bn\.bias") as failure:
        export_mmseg(shape, out, report_path)
    assert "blocks.6.0.bn3.bias" in str(failure.value)
    assert not out.exists() and not report_path.exists()


def test_load_into_a_dilated_resnet(tmp_path, students):
    _, student_path = students("resnet18")
    out, report_path = _outputs(tmp_path)
    export_mmseg(student_path, out, report_path)
    backbone = _built(backbone_config("resnet18", **DILATED))
    result = load_exported_backbone(backbone, out)
    assert result["loaded"] == len(backbone.state_dict()) and not result["missing"]
    with torch.no_grad():
        assert backbone(torch.rand(1, 3, 64, 64))[-1].shape[-2:] == (8, 8)  # output stride 8


def test_load_refuses_what_is_not_a_plain_tensor_dict(tmp_path):
    backbone = build_backbone(backbone_config("resnet18"))
    path = tmp_path / "odd.pth"
    torch.save({"conv1.weight": torch.zeros(1), "note": "text"}, path)
    with pytest.raises(CheckpointError, match="odd.pth"):
        load_exported_backbone(backbone, path)
    with pytest.raises(CheckpointError, match="missing.pth"):
        load_exported_backbone(backbone, tmp_path / "missing.pth")
    path.write_bytes(pickle.dumps(object(), protocol=2))
    with pytest.raises(CheckpointError, match="odd.pth"):
        load_exported_backbone(backbone, path)


def test_mobilenetv2_backbone_options():
    """The head conv follows the stock strides/dilations and is output index 7; stock indices still work."""
    dilated = _built(backbone_config("mobilenetv2_100", strides=(1, 2, 2, 2, 1, 1, 1),
                                     dilations=(1, 1, 1, 1, 1, 2, 2), out_indices=(6, 7)))
    with torch.no_grad():
        layer7, head = dilated(torch.rand(1, 3, 64, 64))
    assert layer7.shape[1:] == (320, 4, 4) and head.shape[1:] == (1280, 4, 4)
    only_head = _built(backbone_config("mobilenetv2_100", out_indices=(7,)))
    with torch.no_grad():
        assert isinstance(only_head(torch.rand(1, 3, 32, 32)), tuple)
    with pytest.raises(ValueError, match="out_indices"):
        build_backbone(backbone_config("mobilenetv2_100", out_indices=(8,)))


def test_unknown_arch_lists_the_supported_ones():
    with pytest.raises(ValueError, match="resnet18.*mobilenetv2_100"):
        backbone_config("efficientnet_b0")
    with pytest.raises(ValueError, match="supported"):
        backbone_channels("vit_small_patch16_224")
