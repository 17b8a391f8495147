"""What a job sees: for debugging a cluster (the gpu_check rule).

Every rank reports its host, devices, SLURM and CUDA variables and CPU affinity; under DDP the
ranks then sum their rank numbers with one all-reduce (the collective training depends on), and
rank 0 writes all reports to one JSON file and prints them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from kdflow.io import write_json
from kdflow.train import distributed

ENV_PREFIXES = ("SLURM_", "CUDA_", "NVIDIA_", "OMP_NUM_THREADS", "GPU_DEVICE_ORDINAL", "WORLD_SIZE",
                "LOCAL_RANK", "RANK", "MASTER_")


def rank_report(dist: distributed.DistInfo) -> dict:
    cuda = torch.cuda.is_available()
    return {
        "rank": dist.rank,
        "local_rank": dist.local_rank,
        "world_size": dist.world_size,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": str(dist.device),
        "cuda_available": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)},
    }


def gpu_check(out_path: str | Path) -> dict:
    dist = distributed.setup()
    report = rank_report(dist)
    reports = [report]
    all_reduce_ok = None
    if dist.world_size > 1:
        total = torch.tensor([float(dist.rank)], device=dist.device)
        torch.distributed.all_reduce(total)
        all_reduce_ok = total.item() == sum(range(dist.world_size))
        reports = [None] * dist.world_size
        torch.distributed.all_gather_object(reports, report)
    record = {"world_size": dist.world_size, "all_reduce_ok": all_reduce_ok, "ranks": reports}
    if dist.rank == 0:
        for r in reports:
            print(f"rank {r['rank']}/{r['world_size']} on {r['host']}: device {r['device']}, "
                  f"CUDA devices {r['cuda_devices'] or 'none'}, {len(r['cpu_affinity'])} CPUs, "
                  f"CUDA_VISIBLE_DEVICES={r['env'].get('CUDA_VISIBLE_DEVICES', 'unset')}, "
                  f"SLURM_JOB_ID={r['env'].get('SLURM_JOB_ID', 'unset')}", flush=True)
        if all_reduce_ok is not None:
            print(f"all-reduce over {dist.world_size} ranks: {'ok' if all_reduce_ok else 'WRONG SUM'}", flush=True)
        write_json(out_path, record)
    distributed.teardown()
    if all_reduce_ok is False:
        raise RuntimeError("the ranks' all-reduce returned a wrong sum: DDP training would be wrong here")
    return record
