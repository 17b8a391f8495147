"""Optimiser options against hand computations on small modules (CPU): SGD by default exactly as
before, AdamW with its hyper-parameters, timm's weight-decay groups, gradient-norm clipping over
the student and the method's modules, the cosine floor, the schema's checks, and a resumed run
with all of them that ends where an uninterrupted one does."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
import yaml
from torch import nn

from conftest import REPO, make_imagefolder, training_config
from kdflow.config import ConfigError, validate_config
from kdflow.data.imagefolder import split_manifest
from kdflow.distill.base import Method, MethodContext
from kdflow.models.network import Network
from kdflow.train.preemption import Interrupted
from kdflow.train.trainer import Trainer, build_optimizer, lr_at


def _optim(**keys) -> dict:
    return training_config(optim=keys)["optim"]


class ConvNet(nn.Module):
    """Conv (with bias), BatchNorm, a 1-d layer scale and a linear head: every kind of parameter."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, bias=True)
        self.bn = nn.BatchNorm2d(3)
        self.scale = nn.Parameter(torch.full((3,), 0.5))
        self.fc = nn.Linear(3, 2)


def _convnet() -> ConvNet:
    torch.manual_seed(0)
    net = ConvNet()
    with torch.no_grad():  # BatchNorm starts at (1, 0): make its decay visible if it happened
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
    return net


# --------------------------------------------------------------------------- optimizers and groups
def test_default_is_sgd_with_one_group_that_steps_as_before():
    optim = _optim(lr=0.1)
    assert (optim["name"], optim["decay_norm_and_bias"], optim["clip_grad_norm"]) == ("sgd", True, None)
    new, old = _convnet(), _convnet()
    optimizer = build_optimizer(list(new.named_parameters()), optim)
    assert isinstance(optimizer, torch.optim.SGD) and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["params"] == list(new.parameters()) and group["weight_decay"] == 0.0005
    before = torch.optim.SGD(old.parameters(), lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0005)
    for step in range(3):  # the optimizer as built before these options: bit-identical weights
        for net, opt in ((new, optimizer), (old, before)):
            for k, p in enumerate(net.parameters()):
                p.grad = torch.full_like(p, 0.1 * (k + 1) * (step + 1))
            opt.step()
    for a, b in zip(new.parameters(), old.parameters()):
        assert a.equal(b)


def test_adamw_gets_its_hyperparameters_and_steps_as_by_hand():
    optim = _optim(name="adamw", lr=0.01, betas=[0.8, 0.99], eps=1e-6, weight_decay=0.05)
    p = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    optimizer = build_optimizer([("w", p)], optim)
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (0.01, (0.8, 0.99), 1e-6, 0.05)
    g = torch.tensor([0.5, 0.25, -4.0])
    p.grad = g.clone()
    optimizer.step()
    # first step: the bias-corrected moments are g and g^2, so the update is lr * g / (|g| + eps),
    # after the decoupled decay p * (1 - lr * wd)
    expected = torch.tensor([1.0, -2.0, 3.0]) * (1 - 0.01 * 0.05) - 0.01 * g / (g.abs() + 1e-6)
    assert torch.allclose(p.detach(), expected, rtol=0, atol=1e-6)


def test_norms_and_biases_are_not_decayed_when_asked():
    net = _convnet()
    named = list(net.named_parameters())
    optimizer = build_optimizer(named, _optim(name="adamw", lr=0.1, weight_decay=0.2, decay_norm_and_bias=False))
    exempt, decayed = optimizer.param_groups
    name_of = {id(p): n for n, p in named}
    assert exempt["weight_decay"] == 0.0 and decayed["weight_decay"] == 0.2
    assert [name_of[id(p)] for p in exempt["params"]] == ["scale", "conv.bias", "bn.weight", "bn.bias", "fc.bias"]
    assert [name_of[id(p)] for p in decayed["params"]] == ["conv.weight", "fc.weight"]

    before = {n: p.detach().clone() for n, p in named}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)  # a zero gradient: AdamW's only change is the weight decay
    optimizer.step()
    for name, p in named:
        if name in ("conv.weight", "fc.weight"):
            assert torch.allclose(p.detach(), before[name] * (1 - 0.1 * 0.2), rtol=0, atol=1e-6), name
            assert not p.detach().equal(before[name]), name
        else:
            assert p.detach().equal(before[name]), name


def test_a_name_ending_in_bias_is_exempt_whatever_its_shape():
    p = nn.Parameter(torch.ones(2, 2))
    exempt, decayed = build_optimizer([("student.pos.bias", p)], _optim(decay_norm_and_bias=False)).param_groups
    assert exempt["params"] == [p] and decayed["params"] == []


# --------------------------------------------------------------------------- clipping in a trainer step
A, B, C = torch.tensor([[1.0, 2.0, 2.0]]), torch.tensor([4.0]), torch.tensor([[12.0], [0.0]])
# gradient norms: the student's sqrt(1 + 4 + 4 + 16) = 5, with the method's head sqrt(25 + 144) = 13


class LinearLoss(Method):
    """loss = <student.weight, A> + <student.bias, B> + <head.weight, C>: constant gradients."""

    def __init__(self, context):
        super().__init__(context)
        self.head = nn.Linear(1, 2, bias=False)
        nn.init.constant_(self.head.weight, 0.5)

    def trainable_modules(self):
        return {"head": self.head}

    def loader(self, pass_index):
        return [{"image": torch.zeros(1, 1)}]  # one step of one sample per pass

    def loss(self, student, batch):
        loss = (student.weight * A).sum() + (student.bias * B).sum() + (self.head.weight * C).sum()
        return loss, {}


def _one_step(tmp_path, clip):
    training = training_config(epochs=1, workers=0, amp=False, channels_last=False, schedule={"name": "constant"},
                               optim={"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "clip_grad_norm": clip})
    student = nn.Linear(3, 1)
    nn.init.constant_(student.weight, 1.0)
    nn.init.constant_(student.bias, -1.0)
    method = LinearLoss(MethodContext(data=None, training=training, device=torch.device("cpu")))
    rows = Trainer(student, method, training, tmp_path / "run", tmp_path / "state", "h").fit()["rows"]
    return student, method.head, rows[0]


@pytest.mark.parametrize("clip", [6.5, 20.0, None])
def test_clipping_scales_every_trained_gradient_to_the_norm(tmp_path, clip):
    student, head, row = _one_step(tmp_path, clip)
    grads = [student.weight.grad, student.bias.grad, head.weight.grad]  # the step's, kept after it
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads)).item()
    scale = 1.0
    if clip is None:
        assert "grad_norm" not in row
    else:
        assert row["grad_norm"] == 13.0  # before clipping, the method's head included
        scale = min(1.0, clip / (13.0 + 1e-6))  # torch's clip_grad_norm_ coefficient
    if clip == 6.5:
        assert norm == pytest.approx(6.5, rel=1e-6)
    else:
        assert norm == 13.0 and student.weight.grad.equal(A) and head.weight.grad.equal(C)
    # plain SGD (no momentum, no decay): p - lr * scale * g
    assert torch.allclose(student.weight.detach(), 1.0 - 0.1 * scale * A, rtol=0, atol=1e-6)
    assert torch.allclose(student.bias.detach(), -1.0 - 0.1 * scale * B, rtol=0, atol=1e-6)
    assert torch.allclose(head.weight.detach(), 0.5 - 0.1 * scale * C, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- schedule
def test_cosine_warms_up_then_decays_to_min_lr():
    schedule = training_config(schedule={"name": "cosine", "warmup_epochs": 2, "min_lr": 0.01})["schedule"]
    lrs = {e: lr_at(e, 0.1, schedule, total_epochs=10) for e in (1, 2, 4, 6, 10, 11)}
    assert lrs[1] == pytest.approx(0.05)  # warm-up: 0.1 * 1/2
    assert lrs[2] == pytest.approx(0.1)  # the warm-up's end: base lr
    assert lrs[4] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi / 4)))  # a quarter of 8 epochs
    assert lrs[6] == pytest.approx(0.055)  # half-way: the mean of lr and min_lr
    assert lrs[10] == pytest.approx(0.01) and lrs[11] == pytest.approx(0.01)  # the floor, and beyond


def test_cosine_without_min_lr_is_todays_schedule_bit_for_bit():
    schedule = training_config(schedule={"name": "cosine", "warmup_epochs": 1})["schedule"]
    assert schedule["min_lr"] == 0
    for epoch in (1.0, 1.37, 4.5, 8.99, 9.0):
        before = 0.5 * 0.3 * (1 + math.cos(math.pi * min(max(epoch - 1, 0) / 8, 1.0)))
        assert lr_at(epoch, 0.3, schedule, total_epochs=9) == before


# --------------------------------------------------------------------------- config checks
def _tiny_config() -> dict:
    # through JSON: every run gets its own copy of the YAML-anchored training block
    return json.loads(json.dumps(yaml.safe_load((REPO / "tests" / "data" / "tiny_config.yaml").read_text())))


def test_new_options_are_filled_with_their_defaults():
    training = validate_config(_tiny_config())["pretrain"]["sup"]["training"]
    assert {k: training["optim"][k] for k in ("name", "betas", "eps", "decay_norm_and_bias", "clip_grad_norm")} == {
        "name": "sgd", "betas": [0.9, 0.999], "eps": 1e-8, "decay_norm_and_bias": True, "clip_grad_norm": None}
    assert training["schedule"]["min_lr"] == 0


@pytest.mark.parametrize("block, key, value, message", [
    ("optim", "name", "adam", "optim.name: 'adam' is not one of ['sgd', 'adamw']"),
    ("optim", "clip_grad_norm", -1.0, "optim.clip_grad_norm: -1.0 is less than or equal to the minimum of 0"),
    ("optim", "clip_grad_norm", 0, "optim.clip_grad_norm: 0 is less than or equal to the minimum of 0"),
    ("optim", "betas", [0.9], "optim.betas: [0.9] is too short"),
    ("schedule", "min_lr", -1e-6, "schedule.min_lr: -1e-06 is less than the minimum of 0"),
])
def test_invalid_option_fails_naming_the_key(block, key, value, message):
    cfg = _tiny_config()
    cfg["pretrain"]["sup"]["training"].setdefault(block, {})[key] = value
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert f"config.pretrain.sup.training.{message}" in str(err.value)


# --------------------------------------------------------------------------- resume
class PullFeatures(Method):
    """Pulls the student's features towards a learnable vector (a method module with a bias);
    sends itself SIGURG in loss call ``options["signal_at"]`` (a stop request at a known step)."""

    def __init__(self, context):
        super().__init__(context)
        self.target = nn.Linear(1, context.options["dim"])
        self.calls = 0

    def trainable_modules(self):
        return {"target": self.target}

    def loss(self, student, batch):
        self.calls += 1
        if self.calls == self.ctx.options["signal_at"]:
            os.kill(os.getpid(), signal.SIGURG)
        feats = student(batch["image"], output="features")
        return (feats - self.target(torch.ones(1, 1))).pow(2).mean(), {}


RESUMED = training_config(
    epochs=3, batch_size=8, workers=0, amp=False, channels_last=False,
    optim={"name": "adamw", "lr": 0.01, "weight_decay": 0.05, "decay_norm_and_bias": False, "clip_grad_norm": 0.05},
    schedule={"name": "cosine", "warmup_epochs": 1, "min_lr": 0.001},
    augment={"size": 16, "scale": [0.5, 1.0], "color_jitter": 0.0, "lighting": 0.0},
    eval={"resize": 16, "crop": 16})


def _fit(tmp_path, name, signal_at=None):
    data = split_manifest(tmp_path / "ds", "train")
    torch.manual_seed(0)
    student = Network("test_resnet", num_classes=0)
    ctx = MethodContext(data=data, training=RESUMED, device=torch.device("cpu"), seed=0,
                        options={"dim": student.num_features, "signal_at": signal_at})
    method = PullFeatures(ctx)
    result = Trainer(student, method, RESUMED, tmp_path / name, tmp_path / name / "state", "h").fit()
    return student, method.target, result["rows"]


def test_stopped_and_resumed_run_with_every_option_equals_uninterrupted(tmp_path):
    torch.set_num_threads(1)
    make_imagefolder(tmp_path / "ds", {"a": 12, "b": 12}, size=16)  # 3 steps of 8 per pass
    student, target, rows = _fit(tmp_path, "reference")
    with pytest.raises(Interrupted, match="after step 2/3 of pass 2"):
        _fit(tmp_path, "stopped", signal_at=5)
    state = torch.load(tmp_path / "stopped" / "state" / "last.pt", weights_only=False)
    assert [g["weight_decay"] for g in state["optimizer"]["param_groups"]] == [0.0, 0.05]
    resumed, resumed_target, resumed_rows = _fit(tmp_path, "stopped")

    assert all(row["grad_norm"] > 0.05 for row in rows)  # clipping was on in every pass
    timing = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed_rows] == \
        [{k: v for k, v in r.items() if k not in timing} for r in rows]
    for key, value in student.state_dict().items():
        assert resumed.state_dict()[key].equal(value), key
    assert resumed_target.weight.equal(target.weight) and resumed_target.bias.equal(target.bias)


# --------------------------------------------------------------------------- torch.compile
class SquaredOutput(Method):
    """loss = mean(student(x)^2) on one fixed batch per pass."""

    def loader(self, pass_index):
        return [{"image": torch.linspace(-1, 1, 12).view(4, 3)}]

    def loss(self, student, batch):
        return student(batch["image"]).pow(2).mean(), {}


def _trained(tmp_path, compile_model: bool) -> tuple[nn.Module, list[dict]]:
    training = training_config(epochs=3, workers=0, schedule={"name": "constant"}, compile=compile_model,
                               optim={"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0})
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    method = SquaredOutput(MethodContext(data=None, training=training, device=torch.device("cpu")))
    rows = Trainer(student, method, training, tmp_path / "run", tmp_path / "state", "h").fit()["rows"]
    return student, rows


def test_compiled_training_matches_eager_training(tmp_path):
    """training.compile runs the step through torch.compile (inductor) and trains the very weights
    the job saves; its numerics may differ from eager mode in the last bits only."""
    eager, eager_rows = _trained(tmp_path / "eager", False)
    compiled, compiled_rows = _trained(tmp_path / "compiled", True)
    assert [r["loss"] for r in compiled_rows] == pytest.approx([r["loss"] for r in eager_rows], rel=1e-5)
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_compile_is_an_identity_key_left_out_at_its_default():
    from kdflow.config import resolve_run

    cfg = validate_config(_tiny_config())
    assert cfg["pretrain"]["sup"]["training"]["compile"] is False
    assert "compile" not in resolve_run(cfg, "sup").identity["training"]  # existing runs re-run nothing
    cfg = _tiny_config()
    cfg["pretrain"]["sup"]["training"]["compile"] = True
    assert resolve_run(validate_config(cfg), "sup").identity["training"]["compile"] is True
