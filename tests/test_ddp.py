"""DDP under torchrun: two CPU processes (gloo) train one run with the configured global batch."""

from __future__ import annotations

import csv
import subprocess

import pytest
from safetensors.torch import load_file

from conftest import REPO, tool
from test_resume import _prepare

pytestmark = pytest.mark.slow


def test_two_processes_split_the_global_batch(tmp_path):
    cfg_path, _ = _prepare(tmp_path, "ddp", 2)
    cmd = [tool("torchrun"), "--standalone", "--nproc-per-node", "2", str(REPO / "workflow_scripts" / "pretrain.py"),
           "--config", str(cfg_path), "--run-id", "sup", "--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    run_dir = tmp_path / "ddp" / "results" / "pretrain" / "sup"
    rows = list(csv.DictReader(open(run_dir / "log.csv")))
    assert len(rows) == 2
    # 100 images, global batch 16 -> each rank takes 50 in batches of 8, dropping the last 2
    assert [int(r["images"]) for r in rows] == [96, 96]
    weights = load_file(run_dir / "student.safetensors")
    assert "layer1.0.conv1.weight" in weights and not any(k.startswith("fc.") for k in weights)
