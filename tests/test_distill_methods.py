"""KD, VkD and FunMatch against hand computations on fixed tensors, and short real runs through the
generic trainer (a tiny ResNet teacher, tiny ResNet and ViT students, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import make_imagefolder, training_config
from kdflow.data.imagefolder import split_manifest
from kdflow.distill.base import MethodContext, get_method
from kdflow.distill.funmatch import FunMatch, TwoViews, mix_with_neighbour
from kdflow.distill.kd import hinton_kl
from kdflow.distill.vkd import orthogonal_projection, standardise, vkd_feature_loss
from kdflow.models.network import Network
from kdflow.train import distributed
from kdflow.train.run import train
from kdflow.train.trainer import Trainer


def _training(**over) -> dict:
    return training_config(**{
        "epochs": 1, "batch_size": 8, "workers": 0, "amp": False, "channels_last": False, "optim": {"lr": 0.05},
        "schedule": {"name": "constant"},
        "augment": {"size": 16, "scale": [0.5, 1.0], "color_jitter": 0.0, "lighting": 0.0},
        "eval": {"resize": 16, "crop": 16}, **over})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_imagefolder(tmp_path_factory.mktemp("ds"), {"a": 8, "b": 8}, size=16)
    return split_manifest(root, "train")


def _teacher(classes: int = 2) -> Network:
    torch.manual_seed(123)
    return Network("test_resnet", num_classes=classes).eval().requires_grad_(False)


def _options(method: str, **over) -> dict:
    from kdflow.distill.registry import declarations

    props = declarations()[method].options["properties"]
    return {**{k: v["default"] for k, v in props.items() if "default" in v}, **over}


# ------------------------------------------------------------------ KD: T^2-scaled KL, batch mean
def test_hinton_kl_matches_a_hand_computation():
    zs = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    zt = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    t = 2.0

    def softmax(row):
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    per_example = [sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(softmax(rt), softmax(rs)))
                   for rs, rt in zip(zs.tolist(), zt.tolist())]
    expected = t * t * sum(per_example) / 2  # summed over classes, averaged over the batch
    assert hinton_kl(zs, zt, t).item() == pytest.approx(expected, rel=1e-6)
    # batch mean, not sum: the same rows twice give the same value
    assert hinton_kl(zs.repeat(2, 1), zt.repeat(2, 1), t).item() == pytest.approx(expected, rel=1e-6)
    # T^2 factor: at T = 1 no scaling
    assert hinton_kl(zs, zt, 1.0).item() == pytest.approx(
        sum(sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in
                zip(torch.softmax(rt, 0).tolist(), torch.softmax(rs, 0).tolist())) for rs, rt in zip(zs, zt)) / 2,
        rel=1e-6)
    assert hinton_kl(zt, zt, t).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_student_head_has_the_teachers_classes_and_learns_from_logits_only(data, tmp_path):
    teacher = _teacher(classes=5)  # not the data's 2 classes: the label term is off by default
    method = get_method("kd")
    assert method.head_classes(data, {}, teacher, _options("kd")) == 5
    torch.manual_seed(0)
    student = Network("test_resnet", num_classes=5)
    result = train("kd", student, data, _training(epochs=2), seed=0, run_dir=tmp_path / "run",
                   state_dir=tmp_path / "state", config_hash="h", dist=distributed.setup(), teacher=teacher,
                   options=_options("kd"))
    rows = result["rows"]
    assert {"kl", "teacher_agree"} <= set(rows[0]) and "ce" not in rows[0]
    assert rows[-1]["loss"] == pytest.approx(rows[-1]["kl"])  # kd_weight 1, no label term
    with pytest.raises(ValueError, match="teacher's classes"):
        method(MethodContext(data=data, training=_training(), device=torch.device("cpu"), teacher=teacher,
                             options=_options("kd", label_weight=1.0)))


# ------------------------------------------------------------------ VkD
def test_smooth_l1_and_teacher_side_standardisation_by_hand():
    projection = nn.Identity()
    s = torch.tensor([[0.5, -2.0, 1.0, 0.0]])
    t = torch.tensor([[1.0, 3.0, -1.0, 5.0]])
    mean, var = sum(t[0].tolist()) / 4, sum((v - 2.0) ** 2 for v in t[0].tolist()) / 4
    target = [(v - mean) / math.sqrt(var + 1e-5) for v in t[0].tolist()]
    diffs = [a - b for a, b in zip(s[0].tolist(), target)]
    expected = sum(0.5 * d * d if abs(d) < 1 else abs(d) - 0.5 for d in diffs) / 4  # beta = 1, mean
    assert vkd_feature_loss(s, t, projection).item() == pytest.approx(expected, rel=1e-5)
    assert standardise(t).mean().item() == pytest.approx(0.0, abs=1e-6)
    # the teacher side is standardised: an affine change of t changes nothing ...
    assert vkd_feature_loss(s, 10 * t + 3, projection).item() == pytest.approx(expected, rel=1e-4)
    # ... the student side is not: scaling s changes the loss
    assert vkd_feature_loss(10 * s, t, projection).item() != pytest.approx(expected, rel=1e-2)


@pytest.mark.parametrize("orthogonal_map", [None, "matrix_exp", "cayley", "householder"])
@pytest.mark.parametrize("d_s, d_t", [(6, 10), (10, 6), (8, 8)])
def test_projection_stays_orthogonal_after_optimizer_steps(d_s, d_t, orthogonal_map):
    torch.manual_seed(0)
    projection = orthogonal_projection(d_s, d_t, orthogonal_map)
    optimizer = torch.optim.SGD(projection.parameters(), lr=0.5, momentum=0.9)
    s, t = torch.randn(16, d_s), torch.randn(16, d_t)
    before = projection.weight.detach().clone()
    for _ in range(10):
        optimizer.zero_grad()
        vkd_feature_loss(s, t, projection).backward()
        optimizer.step()
    w = projection.weight.detach()
    assert not torch.allclose(w, before)  # it trained
    gram = w.T @ w if d_s <= d_t else w @ w.T  # orthonormal columns, or rows for a wider student
    assert torch.allclose(gram, torch.eye(min(d_s, d_t)), atol=1e-5), (gram - torch.eye(min(d_s, d_t))).abs().max()


class _StopAfterFirstPass(Exception):
    pass


def _vkd_trainer(data, tmp_path, student_seed=0, stop_in_pass=None):
    teacher = _teacher()
    torch.manual_seed(student_seed)
    student = Network("test_resnet", num_classes=0)
    ctx = MethodContext(data=data, training=_training(epochs=3, eval_every=1), device=torch.device("cpu"), seed=0,
                        teacher=teacher, options=_options("vkd"), artefacts={"student_width": student.num_features})
    method = get_method("vkd")(ctx)
    passes = []

    def evaluate(model):
        passes.append(1)
        if len(passes) == stop_in_pass:
            raise _StopAfterFirstPass
        return {}

    trainer = Trainer(student, method, ctx.training, tmp_path / "run", tmp_path / "state", "h", evaluate=evaluate)
    return trainer, method, student


def test_resumed_vkd_run_restores_the_projection_exactly(data, tmp_path):
    reference, ref_method, ref_student = _vkd_trainer(data, tmp_path / "ref")
    reference.fit()
    # a run stopped during pass 2 (after pass 1's state was saved), then resumed in fresh objects
    stopped, _, _ = _vkd_trainer(data, tmp_path / "resumed", stop_in_pass=2)
    with pytest.raises(_StopAfterFirstPass):
        stopped.fit()
    state = torch.load(tmp_path / "resumed" / "state" / "last.pt", weights_only=False)
    assert state["passes_done"] == 1 and "parametrizations.weight.original" in state["modules"]["projection"]
    resumed, method, student = _vkd_trainer(data, tmp_path / "resumed", student_seed=99)  # other init: state wins
    resumed.fit()
    assert torch.equal(method.projection.weight, ref_method.projection.weight)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), ref_student.state_dict().values()))
    # the projection is the method's: never among the student's exported weights
    assert not any("parametrizations" in k or "projection" in k for k in student.backbone_state_dict())
    assert set(student.backbone_state_dict()) == set(Network("test_resnet", num_classes=0).backbone_state_dict())


def test_one_vkd_step_with_a_tiny_vit_student(data, tmp_path):
    teacher = _teacher()
    torch.manual_seed(0)
    student = Network("test_vit", num_classes=0, img_size=16, patch_size=8)
    tokens = student.net.forward_features(student.normalise(torch.rand(2, 3, 16, 16)))
    assert tokens.shape[1] == student.net.num_prefix_tokens + 4  # 2 x 2 patches
    x = torch.rand(2, 3, 16, 16)
    feats = student(x, output="features")
    expected = student.net.forward_features(student.normalise(x))[:, student.net.num_prefix_tokens:].mean(1)
    assert torch.allclose(feats, expected)  # the mean of patch tokens, class token excluded
    before = {k: v.clone() for k, v in student.state_dict().items()}
    result = train("vkd", student, data, _training(batch_size=16), seed=0, run_dir=tmp_path / "run",
                   state_dir=tmp_path / "state", config_hash="h", dist=distributed.setup(), teacher=teacher,
                   options=_options("vkd"), artefacts={"student_width": student.num_features})
    assert len(result["rows"]) == 1 and math.isfinite(result["rows"][0]["smooth_l1"])
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_vkd_head_only_when_a_logit_term_is_on(data):
    vkd, teacher = get_method("vkd"), _teacher(classes=7)
    assert vkd.head_classes(data, {}, teacher, _options("vkd")) == 0  # feature-only student, as KDEP's
    assert vkd.head_classes(data, {}, teacher, _options("vkd", kd_weight=1.0)) == 7
    assert vkd.head_classes(data, {}, teacher, _options("vkd", label_weight=1.0)) == data.num_classes


# ------------------------------------------------------------------ FunMatch
def test_mixup_pairs_image_i_with_image_i_minus_1():
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    mixed = mix_with_neighbour(x, 0.75)
    assert mixed[:, 0, 0, 0].tolist() == [0.75 * 0 + 0.25 * 3, 0.75 * 1 + 0.25 * 0, 0.75 * 2 + 0.25 * 1,
                                          0.75 * 3 + 0.25 * 2]


def _funmatch(data, **opts) -> FunMatch:
    return FunMatch(MethodContext(data=data, training=_training(), device=torch.device("cpu"), seed=0,
                                  teacher=_teacher(), options=_options("funmatch", **opts)))


def test_one_coefficient_at_least_half_per_step_and_the_same_tensor_for_both(data):
    method = _funmatch(data)
    torch.manual_seed(0)
    coefficients = []
    for _ in range(50):
        x = torch.rand(6, 3, 4, 4)
        batch = method.prepare({"image": x.clone(), "label": torch.zeros(6, dtype=torch.long)})
        c = batch["mix_coefficient"]
        coefficients.append(c)
        assert torch.allclose(batch["image"], c * x + (1 - c) * x.roll(1, 0))  # one c for the whole batch
        assert batch["teacher_image"] is batch["image"]
    assert min(coefficients) >= 0.5 and max(coefficients) > 0.9 and len(set(coefficients)) == 50


def test_teacher_and_student_see_the_identical_input_in_a_step(data):
    method = _funmatch(data)
    seen = {}

    class Recording(nn.Module):
        def __init__(self, who, net):
            super().__init__()
            self.who, self.net = who, net

        def forward(self, x, output="logits"):
            seen[self.who] = x
            return self.net(x, output=output)

    method.ctx.teacher = Recording("teacher", method.ctx.teacher)
    batch = next(iter(method.loader(0)))
    batch = method.prepare(batch)
    method.loss(Recording("student", Network("test_resnet", num_classes=2)), batch)
    assert torch.equal(seen["teacher"], seen["student"])


def test_independent_teacher_view_gives_different_tensors(data):
    method = _funmatch(data, teacher_view="independent")
    loader = method.loader(0)
    assert isinstance(loader.dataset.dataset, TwoViews)
    batch = method.prepare(next(iter(loader)))
    assert batch["teacher_image"].shape == batch["image"].shape
    assert not torch.equal(batch["teacher_image"], batch["image"])
    # and the same view for both when not asked otherwise (mixup off: the loader's tensor itself)
    same = _funmatch(data, mixup=False)
    batch = same.prepare(next(iter(same.loader(0))))
    assert batch["teacher_image"] is batch["image"] and "mix_coefficient" not in batch


def test_funmatch_trains_without_labels(data, tmp_path):
    torch.manual_seed(0)
    student = Network("test_resnet", num_classes=2)
    teacher = _teacher()
    # labels that contradict the teacher must not matter: the loss reads no label
    result = train("funmatch", student, data, _training(epochs=2), seed=0, run_dir=tmp_path / "run",
                   state_dir=tmp_path / "state", config_hash="h", dist=distributed.setup(), teacher=teacher,
                   options=_options("funmatch"))
    rows = result["rows"]
    assert rows[-1]["loss"] == pytest.approx(rows[-1]["kl"]) and "ce" not in rows[-1]
