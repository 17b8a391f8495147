"""A test-only method plugs in through the method interface, with no edit to the trainer:
its own epoch accounting, input transform and trainable module are honoured, and the module
is saved in the resumable state but not in the exported student."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import REPO, make_imagefolder, training_config
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
    training = training_config(
        epochs=4, batch_size=8, workers=0, amp=False, channels_last=False,
        optim={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
        schedule={"name": "step", "step_epochs": 2, "gamma": 0.5},
        augment={"size": 16, "scale": [0.5, 1.0], "color_jitter": 0.0, "lighting": 0.0},
        eval={"resize": 16, "crop": 16})
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


def _string_literals(path):
    """Every quoted string of a Python or Snakemake file (comments and prose docstrings aside,
    a method name in a string is code that singles the method out)."""
    import io
    import tokenize

    text = path.read_text()
    if path.suffix == ".py":
        tokens = tokenize.generate_tokens(io.StringIO(text).readline)
        return [t.string for t in tokens if t.type == tokenize.STRING and not t.string.startswith('"""')]
    import re

    return re.findall(r"\"[^\"\n]*\"|'[^'\n]*'", "\n".join(line.split("#")[0] for line in text.splitlines()))


def test_no_method_is_named_by_the_config_the_rules_or_the_pretrain_job(repo):
    """A method is one module: config validation, the Snakefile's inputs and the pretrain job read
    its declaration, never its name."""
    from kdflow.distill.registry import declarations

    names = set(declarations())
    assert {"kdep", "fkd", "supervised", "scratch", "imported"} <= names
    files = [repo / "src" / "kdflow" / "config.py", repo / "src" / "kdflow" / "jobs" / "pretrain.py",
             repo / "workflow_scripts" / "pretrain.py", *sorted((repo / "rules").glob("*.smk"))]
    for path in files:
        named = {lit.strip("\"'") for lit in _string_literals(path)} & names
        assert not named, f"{path.name} names methods {sorted(named)}"


def test_reading_declarations_and_the_config_does_not_import_torch():
    """What the Snakefile imports to build the DAG stays light (snakemake -n is fast)."""
    import subprocess
    import sys

    code = ("import sys, kdflow.config as c, kdflow.paths, kdflow.tasks, kdflow.data.content; "
            "cfg = c.load_config('config/config.yaml'); [c.resolve_run(cfg, n).identity for n in cfg['pretrain']]; "
            "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_declaration_must_be_a_literal_and_consistent(tmp_path):
    from kdflow.distill.registry import DeclarationError, read_declaration

    bad = tmp_path / "bad.py"
    bad.write_text("NAME = 'x'\nDECLARATION = {'name': NAME}\n")
    with pytest.raises(DeclarationError, match="bad.py: DECLARATION must be a plain literal"):
        read_declaration(bad)
    bad.write_text("DECLARATION = {'name': 'x', 'artefacts': ['svd'], 'teacher': 'logits'}\n")
    with pytest.raises(DeclarationError, match="the svd artefact is made from a teacher's features"):
        read_declaration(bad)
    assert read_declaration(REPO / "tests" / "methods" / "logit_probe.py").teacher == "logits"


def test_a_config_naming_an_unknown_method_lists_the_declared_ones(repo):
    import copy

    import yaml

    from kdflow.config import ConfigError, validate_config

    cfg = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    bad = copy.deepcopy(cfg)
    bad["pretrain"]["supervised_in48"]["method"] = "crd"
    with pytest.raises(ConfigError, match=r"config.pretrain.supervised_in48.method: 'crd' is not one of"):
        validate_config(bad)
    bad = copy.deepcopy(cfg)
    bad["pretrain"]["supervised_in48"]["kdep"] = {"tau": 0.2}  # another method's option block
    with pytest.raises(ConfigError, match=r"supervised_in48.kdep: the option block of method .kdep., but the run.s "
                                          r"method is .supervised."):
        validate_config(bad)
    plugged = copy.deepcopy(cfg)
    plugged["method_modules"] = [str(repo / "tests" / "methods" / "logit_probe.py")]
    plugged["pretrain"]["probe"] = {"method": "logit_probe", "student": "r18", "teacher": "demo_r18",
                                    "data": "demo_in_48"}
    valid = validate_config(plugged)
    assert valid["pretrain"]["probe"]["logit_probe"] == {"temperature": 2.0}  # its defaults filled
    del plugged["pretrain"]["probe"]["teacher"]
    with pytest.raises(ConfigError, match=r"probe.teacher: method 'logit_probe' needs a teacher \(it reads its logits"):
        validate_config(plugged)


def test_every_declarable_artefact_is_wired_into_the_config():
    import kdflow.config as kcfg
    from kdflow.distill.registry import ARTEFACTS

    assert set(ARTEFACTS) == set(kcfg.ARTEFACTS)
