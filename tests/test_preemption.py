"""A stop signal (SLURM's pre-timeout signal, SIGTERM on scancel or preemption) makes the trainer
save its state mid-pass and stop; the re-run resumes at that step and ends exactly where an
uninterrupted run ends. The signal is real (os.kill to this process) and arrives at a known step."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdflow import paths
from kdflow.config import resolve_run
from kdflow.distill.base import get_method
from kdflow.jobs.pretrain import pretrain
from kdflow.train.preemption import Interrupted
from test_resume import _prepare

STEPS_PER_PASS = 100 // 8  # tin_25: 100 images, global batch 8


def _pretrain(cfg, run_name="sup"):
    results = cfg["results"]
    run = resolve_run(cfg, run_name)
    out = paths.pretrain_dir(results, run_name)
    pretrain(run, paths.subset_manifest(results, run["data"]["name"]), out,
             paths.state_dir(results, "pretrain", run_name),
             val_manifest_path=paths.dataset_manifest(results, "tin", "test"))
    return Path(out)


def _prepared(tmp_path, name, epochs=3):
    cfg_path, cfg = _prepare(tmp_path, name, epochs)
    cfg["pretrain"]["sup"]["training"]["batch_size"] = 8
    return cfg


def _signal_at_step(monkeypatch, step: int, sig: signal.Signals):
    """The supervised loss sends ``sig`` to this process while computing global step ``step``."""
    method = get_method("supervised")
    original = method.loss
    calls = {"n": 0}

    def loss(self, student, batch):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), sig)
        return original(self, student, batch)

    monkeypatch.setattr(method, "loss", loss)


def _rows(run_dir):
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")}
            for row in csv.DictReader(open(run_dir / "log.csv"))]


@pytest.mark.parametrize("sig", [signal.SIGURG, signal.SIGTERM], ids=lambda s: s.name)
def test_signal_mid_pass_saves_and_resume_equals_uninterrupted(tmp_path, monkeypatch, sig):
    torch.set_num_threads(1)
    reference = _pretrain(_prepared(tmp_path, "reference"))

    cfg = _prepared(tmp_path, "stopped")
    stop_step = STEPS_PER_PASS + 5  # inside the second pass
    with monkeypatch.context() as patch:
        _signal_at_step(patch, stop_step, sig)
        with pytest.raises(Interrupted, match=rf"stopped by {sig.name} after step 5/{STEPS_PER_PASS} of pass 2"):
            _pretrain(cfg)
    state = torch.load(Path(paths.state_dir(cfg["results"], "pretrain", "sup")) / "last.pt", weights_only=False)
    assert state["passes_done"] == 1 and state["within"]["step"] == 5
    stopped_dir = Path(paths.pretrain_dir(cfg["results"], "sup"))
    assert not (stopped_dir / "student.safetensors").exists()
    # the handlers are restored once training stops: the default action is back
    assert signal.getsignal(sig) == signal.SIG_DFL

    resumed = _pretrain(cfg)
    a, b = load_file(reference / "student.safetensors"), load_file(resumed / "student.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key
    assert _rows(resumed) == _rows(reference)  # the resumed pass's logged loss includes its first 5 steps
    provenance = json.loads((resumed / "provenance.json").read_text())
    assert [(s["signal"], s["passes_done"], s["step"]) for s in provenance["interruptions"]] == [(sig.name, 1, 5)]


def test_signal_in_the_last_step_of_a_pass_stops_at_the_pass_end(tmp_path, monkeypatch):
    cfg = _prepared(tmp_path, "edge")
    _signal_at_step(monkeypatch, STEPS_PER_PASS, signal.SIGURG)
    with pytest.raises(Interrupted, match="at the end of pass 1/3"):
        _pretrain(cfg)
    state = torch.load(Path(paths.state_dir(cfg["results"], "pretrain", "sup")) / "last.pt", weights_only=False)
    assert state["passes_done"] == 1 and state["within"] is None
