"""Multi-GPU inside one job: ``--gpus 2`` runs the job's script in two torchrun processes (gloo on
CPU), each taking half of the configured global batch; a BatchNorm-free student then ends with
the weights of a one-process run, to float tolerance (per-item augmentation seeds make both runs
see the same crops)."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from conftest import REPO
from test_resume import _prepare

pytestmark = pytest.mark.slow


def _bn_free_run(tmp_path, name):
    cfg_path, _ = _prepare(tmp_path, name, 2)
    raw = yaml.safe_load(cfg_path.read_text())
    raw["students"]["gn"] = {"arch": "test_efficientnet_gn"}  # GroupNorm: no batch statistics
    raw["pretrain"]["sup"]["student"] = "gn"
    cfg_path.write_text(yaml.safe_dump(raw))
    return cfg_path


def _pretrain(cfg_path, *extra):
    cmd = [sys.executable, str(REPO / "workflow_scripts" / "pretrain.py"), "--config", str(cfg_path),
           "--run-id", "sup", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout + out.stderr, cfg_path.parent / "results" / "pretrain" / "sup"


def test_two_processes_split_the_global_batch_and_match_one_process(tmp_path):
    _, single = _pretrain(_bn_free_run(tmp_path, "single"), "--threads", "1")
    output, ddp = _pretrain(_bn_free_run(tmp_path, "ddp"), "--threads", "2", "--gpus", "2")
    assert "2 ranks (gloo), 1 threads each" in output

    rows = list(csv.DictReader(open(ddp / "log.csv")))
    # 100 images, global batch 16 -> each rank takes 50 in batches of 8, dropping the last 2
    assert [int(r["images"]) for r in rows] == [96, 96]
    reference_rows = list(csv.DictReader(open(single / "log.csv")))
    for mine, ref in zip(rows, reference_rows):  # the logged loss is the global batch's, not rank 0's
        assert float(mine["loss"]) == pytest.approx(float(ref["loss"]), rel=1e-4)

    a, b = load_file(single / "student.safetensors"), load_file(ddp / "student.safetensors")
    assert a.keys() == b.keys() and not any(k.startswith("classifier.") for k in a)
    for key in a:
        assert (a[key] - b[key]).abs().max().item() < 1e-4, key


def test_sync_bn_on_cpu_fails_naming_the_setting(tmp_path):
    cfg_path, _ = _prepare(tmp_path, "syncbn", 1)
    raw = yaml.safe_load(cfg_path.read_text())
    raw["pretrain"]["sup"]["training"]["sync_bn"] = True
    cfg_path.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, str(REPO / "workflow_scripts" / "pretrain.py"), "--config", str(cfg_path),
           "--run-id", "sup", "--threads", "2", "--gpus", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert "training.sync_bn needs CUDA devices" in out.stderr
