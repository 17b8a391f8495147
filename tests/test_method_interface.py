"""A test-only method plugs in through the method interface, with no edit to the trainer:
its own epoch accounting, input transform and trainable module are honoured, and the module
is saved in the resumable state but not in the exported student."""

from __future__ import annotations

import torch
from torch import nn

from conftest import make_imagefolder
from kdflow.data.imagefolder import split_manifest
from kdflow.distill.base import METHODS, Method, register_method
from kdflow.models.network import Network
from kdflow.train import distributed
from kdflow.train.run import train


class CentreFeatures(Method):
    """Pull the student's features towards a learnable vector; each pass counts as 2 epochs."""

    prepared = 0

    def __init__(self, context):
        super().__init__(context)
        self.target = nn.Linear(1, 96, bias=False)  # method-owned trainable module

    def trainable_modules(self):
        return {"target": self.target}

    def passes(self, epochs):
        return [2] * (epochs // 2)

    def prepare(self, batch):
        type(self).prepared += 1
        batch = super().prepare(batch)
        batch["image"] = batch["image"].flip(3)  # an input transform before the student sees it
        return batch

    def loss(self, student, batch):
        feats = student(batch["image"], output="features")
        goal = self.target.weight.view(1, -1)
        loss = (feats - goal).pow(2).mean()
        return loss, {"dist": loss.detach()}


def test_plugged_method_runs_through_generic_trainer(tmp_path):
    if "test_centre" not in METHODS:
        register_method("test_centre")(CentreFeatures)
    root = make_imagefolder(tmp_path / "ds", {"a": 10, "b": 10}, size=16)
    data = split_manifest(root, "train")
    training = {"epochs": 4, "batch_size": 8, "workers": 0, "seed": 0, "amp": False, "channels_last": False,
                "sync_bn": False, "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False,
                                            "weight_decay": 0.0},
                "schedule": {"name": "step", "step_epochs": 2, "gamma": 0.5, "warmup_epochs": 0},
                "augment": {"size": 16, "scale": [0.5, 1.0], "hflip": True, "color_jitter": 0.0, "lighting": 0.0},
                "eval": {"resize": 16, "crop": 16}, "eval_every": 0}
    torch.manual_seed(0)
    student = Network("test_resnet", num_classes=0)
    result = train("test_centre", student, data, training, seed=0, run_dir=tmp_path / "run",
                   state_dir=tmp_path / "state", config_hash="h", dist=distributed.setup())
    rows = result["rows"]
    assert [r["epoch"] for r in rows] == [2.0, 4.0]  # the method's epoch accounting
    assert [r["lr"] for r in rows] == [0.05, 0.025]  # the step schedule saw nominal epochs
    assert rows[-1]["dist"] < rows[0]["dist"]
    assert CentreFeatures.prepared == 2 * 2  # 2 passes x 2 batches of 8 (drop_last on 20 images)
    state = torch.load(tmp_path / "state" / "last.pt", weights_only=False)
    assert set(state["modules"]) == {"student", "target"}
    assert not any("target" in k for k in student.backbone_state_dict())
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,pass,lr,loss,dist") and len(log) == 3
