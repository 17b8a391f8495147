"""Multi-GPU inside one job: N processes on this node, one DDP rank each.

A job given N > 1 GPUs (the rule's ``gpu`` resource, or ``--gpus`` by hand) re-runs its workflow
script's ``run(args)`` under torchrun (``--standalone``: one node, a free port), so SLURM sees one
job with N GPUs, not N jobs. The trainer then runs DDP: NCCL on GPUs, gloo on CPU. The global
batch size and learning rate are the config's whatever N is (each rank takes 1/N of the batch).
Multi-node training is not supported: one job, one node.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from argparse import Namespace
from pathlib import Path

WORKER_MODULE = "kdflow.train.worker"


def set_threads(threads: int | None) -> None:
    """The job's ``threads`` reach torch (intra-op) so jobs sharing a node do not oversubscribe."""
    if not threads:
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        import torch
    except ImportError:  # the report environment has no torch and needs none
        return
    torch.set_num_threads(int(threads))


class LaunchError(RuntimeError):
    pass


def visible_devices() -> str:
    """What the scheduler gave this job, for error messages and the gpu_check rule."""
    keys = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")
    return ", ".join(f"{k}={os.environ[k]}" for k in keys if k in os.environ) or "no GPU variables set"


def check_devices(nprocs: int) -> str:
    """The backend the ranks will use; fails early when the job sees fewer GPUs than it asked for."""
    import torch

    if not torch.cuda.is_available():
        print(f"[launch] no CUDA device visible ({visible_devices()}): {nprocs} CPU processes with gloo",
              flush=True)
        return "gloo"
    count = torch.cuda.device_count()
    if count < nprocs:
        raise LaunchError(f"the job asked for {nprocs} GPUs but sees {count} ({visible_devices()}); "
                          "check the rule's gpu resource against what the partition gives")
    return "nccl"


def launch(script: str | Path, args: Namespace, nprocs: int, threads: int | None) -> None:
    """Run ``run(args)`` of ``script`` in ``nprocs`` torchrun processes; returns when all finished."""
    backend = check_devices(nprocs)
    per_rank = max(1, (threads or nprocs) // nprocs)
    spec = {"script": str(Path(script).resolve()), "args": args, "threads": per_rank}
    with tempfile.NamedTemporaryFile("wb", prefix="kdflow-launch-", suffix=".pkl", delete=False) as f:
        pickle.dump(spec, f)
    env = {**os.environ, "OMP_NUM_THREADS": str(per_rank)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nprocs}",
           "-m", WORKER_MODULE, f.name]
    print(f"[launch] {nprocs} ranks ({backend}), {per_rank} threads each: {' '.join(cmd)}", flush=True)
    try:
        code = subprocess.call(cmd, env=env)
    finally:
        os.unlink(f.name)
    if code:
        raise LaunchError(f"{nprocs}-process run of {Path(script).name} failed (torchrun exit {code}); "
                          "the failing rank's traceback is above")
