"""Weight files: strict loading names every key at fault; KDEP's robustness format loads."""

from __future__ import annotations

import re

import pytest
import torch

from kdflow.models.checkpoints import CheckpointError, load_strict, read_weights, save_weights
from kdflow.models.network import Network
from kdflow.models.teacher import from_checkpoint, load_teacher, save_teacher


def _net(seed=0, num_classes=5):
    torch.manual_seed(seed)
    return Network("test_resnet", num_classes=num_classes)


def test_renamed_key_fails_naming_it(tmp_path):
    sd = _net().net.state_dict()
    sd["layer1.0.conv_one.weight"] = sd.pop("layer1.0.conv1.weight")
    torch.save(sd, tmp_path / "w.pth")
    weights = read_weights(tmp_path / "w.pth")
    with pytest.raises(CheckpointError) as err:
        load_strict(_net(1).net, weights.state_dict, source=str(tmp_path / "w.pth"))
    msg = str(err.value)
    assert "missing keys (1): layer1.0.conv1.weight" in msg
    assert "unexpected keys (1): layer1.0.conv_one.weight" in msg
    assert str(tmp_path / "w.pth") in msg


def test_shape_mismatch_and_allowances(tmp_path):
    src = _net(num_classes=5).net.state_dict()
    target = _net(num_classes=7).net
    with pytest.raises(CheckpointError, match=r"shape mismatches \(2\): fc.bias: file \(5,\) vs model \(7,\)"):
        load_strict(target, src, source="x")
    no_head = {k: v for k, v in src.items() if not k.startswith("fc.")}
    report = load_strict(target, no_head, source="x", allow_missing=["fc.*"])
    assert report["missing"] == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(target.state_dict()["layer1.0.conv1.weight"], src["layer1.0.conv1.weight"])


def _robustness_file(path, net, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), student=False):
    """A file laid out as KDEP / robustness write them (AttackerModel + optional DummyModel)."""
    inner = "model.model." if student else "model."
    sd = {}
    for k, v in net.net.state_dict().items():
        sd[f"module.{inner}{k}"] = v.clone()
        sd[f"module.attacker.{inner}{k}"] = v.clone()
    for prefix in ("module.normalizer.", "module.attacker.normalizer."):
        sd[prefix + "new_mean"] = torch.tensor(mean).view(3, 1, 1)
        sd[prefix + "new_std"] = torch.tensor(std).view(3, 1, 1)
    torch.save({"model": sd, "epoch": 90}, path)


@pytest.mark.parametrize("student", [False, True])
def test_robustness_format_loads_strictly(tmp_path, student):
    source = _net(3)
    path = tmp_path / "kdep.pt"
    _robustness_file(path, source, student=student)
    weights = read_weights(path)
    assert weights.naming == "robustness"
    assert weights.normaliser["mean"] == pytest.approx([0.485, 0.456, 0.406])
    cfg = {"name": "sp_r50", "arch": "test_resnet", "input": {},
           "checkpoint": {"path": str(path), "naming": "auto", "trust_pickle": False,
                          "allow_missing": [], "allow_unexpected": []}}
    net, extra = from_checkpoint(cfg)
    assert net.net.num_classes == 5 and extra["file_naming"] == "robustness"
    for k, v in source.net.state_dict().items():
        assert torch.equal(net.net.state_dict()[k], v), k


def test_robustness_normaliser_must_match_declared_input(tmp_path):
    path = tmp_path / "bgr.pt"
    _robustness_file(path, _net(), mean=(0.406, 0.456, 0.485))
    cfg = {"name": "ms_r50", "arch": "test_resnet", "input": {"mean": [0.485, 0.456, 0.406]},
           "checkpoint": {"path": str(path), "naming": "auto", "trust_pickle": False,
                          "allow_missing": [], "allow_unexpected": []}}
    with pytest.raises(CheckpointError, match="normaliser mean .* differs from teacher 'ms_r50'"):
        from_checkpoint(cfg)


def test_non_tensor_pickle_needs_trust(tmp_path):
    import argparse

    path = tmp_path / "pickled.pt"  # robustness checkpoints carry their argparse namespace
    torch.save({"model": _net().net.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match="trust_pickle: true"):
        read_weights(path)


def test_teacher_file_round_trip_keeps_input_spec(tmp_path):
    from kdflow.models.network import InputSpec

    torch.manual_seed(0)
    net = Network("test_resnet", num_classes=4, input_spec=InputSpec(channel_order="BGR"))
    save_teacher(tmp_path / "t.safetensors", net, "t", "random_init")
    loaded = load_teacher(tmp_path / "t.safetensors")
    assert loaded.input_spec.channel_order == "BGR" and not loaded.training
    x = torch.rand(2, 3, 16, 16)
    net.eval()
    torch.testing.assert_close(loaded(x, output="features"), net(x, output="features"))
    # BGR is honoured: the same tensor with channels swapped gives the RGB network's features
    rgb = Network("test_resnet", num_classes=4)
    rgb.net.load_state_dict(net.net.state_dict())
    rgb.eval()
    torch.testing.assert_close(loaded(x, output="features"), rgb(x.flip(1), output="features"))


def test_student_export_has_metadata_and_no_head(tmp_path):
    net = _net()
    save_weights(tmp_path / "s.safetensors", net.backbone_state_dict(),
                 {"kind": "student", "arch": "test_resnet", "naming": "timm", "input": net.input_spec.as_dict()})
    weights = read_weights(tmp_path / "s.safetensors")
    assert weights.metadata["arch"] == "test_resnet" and weights.metadata["input"]["channel_order"] == "RGB"
    assert not any(k.startswith("fc.") for k in weights.state_dict)


def test_pretrained_teacher_offline_gives_a_clear_message(monkeypatch):
    from kdflow.models.teacher import from_pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="'test_resnet' are not in the local Hugging Face cache"):
        from_pretrained({"name": "hub_teacher", "arch": "test_resnet", "input": {}})


def test_torchvision_mobilenetv2_maps_onto_timm_and_computes_the_same(tmp_path):
    """KDEP's MobileNetV2 students use torchvision-style names; timm's differ in every key."""
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2(num_classes=10).eval()
    for m in tv.modules():  # non-trivial BN statistics, so a mis-mapped buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "kdep_mnv2.pt"
    sd = {f"module.model.model.{k}": v for k, v in tv.state_dict().items()}
    sd.update({f"module.attacker.model.model.{k}": v for k, v in tv.state_dict().items()})
    torch.save({"model": sd}, path)
    cfg = {"name": "mnv2", "arch": "mobilenetv2_100", "input": {},
           "checkpoint": {"path": str(path), "naming": "auto", "trust_pickle": False,
                          "allow_missing": [], "allow_unexpected": []}}
    net, _ = from_checkpoint(cfg)
    net.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = tv(net.normalise(x))
        torch.testing.assert_close(net(x, output="logits"), expected, rtol=1e-4, atol=1e-5)


def test_positional_map_refuses_a_different_architecture(tmp_path):
    import torchvision

    path = tmp_path / "r18_as_mnv2.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    cfg = {"name": "x", "arch": "mobilenetv2_100", "input": {}, "num_classes": 1000,
           "checkpoint": {"path": str(path), "naming": "auto", "trust_pickle": False,
                          "allow_missing": [], "allow_unexpected": []}}
    with pytest.raises(CheckpointError, match="tensors in the file, .* in timm's EfficientNet"):
        from_checkpoint(cfg)


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_a_truncated_safetensors_file_is_named_with_its_size(tmp_path, keep):
    """A weight file cut short (a crash while copying it; an empty file) fails naming the file."""
    path = tmp_path / "student.safetensors"
    save_weights(path, _net().backbone_state_dict(), {"kind": "student", "naming": "timm"})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=rf"student.safetensors: not a readable safetensors file .* "
                                              rf"{int(len(data) * keep)} bytes"):
        read_weights(path)


def test_a_timm_checkpoint_of_another_resnet_is_refused_naming_keys_and_shapes(tmp_path):
    """A ResNet-50 file given for a ResNet-18 teacher (both in timm naming): the strict load names
    the keys only one of them has and the tensors of different shapes."""
    import timm

    path = tmp_path / "resnet50.safetensors"
    save_weights(path, timm.create_model("resnet50", num_classes=10).state_dict(), {"naming": "timm"})
    cfg = {"name": "t", "arch": "resnet18", "input": {}, "num_classes": 10,
           "checkpoint": {"path": str(path), "naming": "auto", "trust_pickle": False,
                          "allow_missing": [], "allow_unexpected": []}}
    with pytest.raises(CheckpointError) as err:
        from_checkpoint(cfg)
    message = str(err.value)
    assert str(path) in message and "layer1.0.conv3.weight" in message  # a Bottleneck key ResNet-18 lacks
    assert re.search(r"layer1\.0\.conv1\.weight: file \(64, 64, 1, 1\) vs model \(64, 64, 3, 3\)", message), message
