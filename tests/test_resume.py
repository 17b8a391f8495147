"""A training job SIGKILLed mid-run and re-run ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

from conftest import REPO, write_config
from kdflow.config import load_config, resolve_subset
from kdflow.jobs.data import demo_data, imagenet_subset
from kdflow import paths

pytestmark = pytest.mark.slow


def _prepare(tmp_path, name, epochs):
    src = REPO / "tests" / "data" / "tiny_config.yaml"
    base = yaml.safe_load(src.read_text())
    (tmp_path / name).mkdir()
    base["pretrain"]["sup"]["training"] = {**base["pretrain"]["sup"]["training"], "epochs": epochs}
    cfg_path = tmp_path / name / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({**base, "results": str(tmp_path / name / "results")}))
    cfg = load_config(cfg_path)
    demo_data("tiny_in", cfg["demo"]["tiny_in"], paths.demo_dataset(cfg["results"], "tiny_in"))
    imagenet_subset(resolve_subset(cfg, "tin_25"), paths.subset_manifest(cfg["results"], "tin_25"))
    return cfg_path, cfg


def _command(cfg_path):
    return [sys.executable, str(REPO / "workflow_scripts" / "pretrain.py"), "--config", str(cfg_path),
            "--run", "sup", "--threads", "1"]


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    epochs = 8
    ref_cfg, ref = _prepare(tmp_path, "reference", epochs)
    subprocess.run(_command(ref_cfg), check=True, capture_output=True, timeout=600)

    cfg_path, cfg = _prepare(tmp_path, "killed", epochs)
    log_csv = tmp_path / "killed" / "results" / "pretrain" / "sup" / "log.csv"
    proc = subprocess.Popen(_command(cfg_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (log_csv.exists() and len(log_csv.read_text().splitlines()) >= 3) and time.time() < deadline:
        assert proc.poll() is None, "training finished before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before_kill = len(log_csv.read_text().splitlines()) - 1
    assert 2 <= done_before_kill < epochs
    student = tmp_path / "killed" / "results" / "pretrain" / "sup" / "student.safetensors"
    assert not student.exists()

    rerun = subprocess.run(_command(cfg_path), check=True, capture_output=True, text=True, timeout=600)
    assert f"resuming after pass {done_before_kill}/{epochs}" in rerun.stdout + rerun.stderr

    reference = load_file(tmp_path / "reference" / "results" / "pretrain" / "sup" / "student.safetensors")
    resumed = load_file(student)
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert reference[key].equal(resumed[key]), key
    rows = log_csv.read_text().splitlines()
    assert len(rows) == epochs + 1  # one row per epoch, none duplicated by the restart


def test_changed_config_refuses_stale_state(tmp_path):
    cfg_path, cfg = _prepare(tmp_path, "run", 2)
    subprocess.run(_command(cfg_path), check=True, capture_output=True, timeout=600)
    raw = yaml.safe_load(cfg_path.read_text())
    raw["pretrain"]["sup"]["training"]["optim"]["lr"] = 0.5
    cfg_path.write_text(yaml.safe_dump(raw))
    out = subprocess.run(_command(cfg_path), capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert "belongs to a run with a different config" in out.stderr
