"""How a job's GPU count becomes processes: one process for 0 or 1 GPU, N torchrun ranks for a
training script given N > 1, and a clear refusal for a script that runs in one process."""

from __future__ import annotations

from argparse import Namespace

import pytest

from kdflow.jobs.common import _run_on_gpus
from kdflow.train import launch


def test_zero_or_one_gpu_runs_in_this_process():
    seen = []
    for gpus in (0, 1, None):
        _run_on_gpus("script.py", seen.append, Namespace(gpus=gpus), gpus, 2, multi_gpu=False, what="rule x")
    assert len(seen) == 3


def test_a_one_process_rule_given_several_gpus_is_refused():
    with pytest.raises(ValueError, match=r"rule fkd_soft_label_shard runs in one process .* gpu=2"):
        _run_on_gpus("script.py", lambda args: None, Namespace(), 2, 8, multi_gpu=False,
                     what="rule fkd_soft_label_shard")


def test_several_gpus_launch_torchrun_ranks(monkeypatch, tmp_path):
    calls = {}

    def fake_call(cmd, env):
        calls["cmd"], calls["env"] = cmd, env
        return 0

    monkeypatch.setattr(launch.subprocess, "call", fake_call)
    monkeypatch.setattr(launch, "check_devices", lambda n: "gloo")
    _run_on_gpus(str(tmp_path / "pretrain.py"), None, Namespace(run="r"), 4, 32, multi_gpu=True, what="rule pretrain")
    assert calls["cmd"][1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert calls["cmd"][5:7] == ["-m", "kdflow.train.worker"]
    assert calls["env"]["OMP_NUM_THREADS"] == "8"  # 32 threads shared by 4 ranks


def test_a_failed_rank_fails_the_job(monkeypatch, tmp_path):
    monkeypatch.setattr(launch.subprocess, "call", lambda cmd, env: 1)
    monkeypatch.setattr(launch, "check_devices", lambda n: "gloo")
    with pytest.raises(launch.LaunchError, match="torchrun exit 1"):
        launch.launch(tmp_path / "pretrain.py", Namespace(), 2, 2)


def test_fewer_visible_gpus_than_asked_fails_before_starting(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(launch.LaunchError, match=r"asked for 4 GPUs but sees 2 \(CUDA_VISIBLE_DEVICES=0,1"):
        launch.check_devices(4)
