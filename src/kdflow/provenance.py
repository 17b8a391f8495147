"""Self-describing result folders: ``provenance.json`` beside every artefact.

A provenance record holds the resolved config slice (its identity: what the result depends on) and
its hash, the execution settings the job ran with (paths, workers, ...), seeds, what went in (sha256 of
files; size and mtime of dataset folders), package versions, git commit, host, device and wall
time. Tables and later stages trust these records, never file names alone.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from kdflow.io import hash_data, sha256_file, write_json

PACKAGES = ("kdflow", "torch", "torchvision", "timm", "numpy", "safetensors", "snakemake")
_HASH_LIMIT = 512 * 1024 * 1024  # files above this are recorded by size and mtime only


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(repo: Path | None = None) -> str | None:
    """HEAD's commit, with ``-dirty`` when the work tree differs from it. Untracked files count: a run
    made with a new, not yet added source file cannot be reproduced from the commit. Ignored files
    (results/, .snakemake/, .venv/) do not."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=normal"],
        capture_output=True, text=True, timeout=10,
    )
    suffix = "-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else ""
    return out.stdout.strip() + suffix


def describe_input(path: str | os.PathLike) -> dict[str, Any]:
    """Checksum of a file; entry count and mtime of a folder."""
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        entry: dict[str, Any] = {"path": str(path), "bytes": stat.st_size}
        if stat.st_size <= _HASH_LIMIT:
            entry["sha256"] = sha256_file(path)
        else:
            entry["mtime"] = stat.st_mtime
        return entry
    if path.is_dir():  # datasets are too large to hash or even walk: record the top level only
        stat = path.stat()
        return {"path": str(path.resolve()), "entries": sum(1 for _ in path.iterdir()), "mtime": stat.st_mtime}
    return {"path": str(path), "missing": True}


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"cpu ({os.cpu_count()} logical cores)"


class Provenance:
    """Collects a job's provenance and writes it when the job's work is done.

    Usage::

        prov = Provenance("pretrain", name=run_id, config=resolved, seeds={"training": 0})
        prov.add_inputs(paths)
        ...  # the work
        prov.write(out_dir / "provenance.json", extra={"epochs_done": 90})
    """

    def __init__(self, stage: str, name: str, config: Any, seeds: dict | None = None,
                 threads: int | None = None):
        self.started = time.time()
        identity = getattr(config, "identity", config)  # a kdflow.config.JobConfig, or plain identity data
        self.record: dict[str, Any] = {
            "stage": stage,
            "name": name,
            "config": identity,
            "config_hash": hash_data(identity),
            "execution": getattr(config, "execution", {}),
            "seeds": seeds or {},
            "inputs": [],
            "threads": threads,
        }

    @property
    def config_hash(self) -> str:
        return self.record["config_hash"]

    def add_inputs(self, paths: Iterable[str | os.PathLike]) -> None:
        self.record["inputs"].extend(describe_input(p) for p in paths)

    def write(self, path: str | os.PathLike, extra: dict | None = None) -> dict:
        finished = time.time()
        self.record.update(
            {
                "packages": package_versions(),
                "git_commit": git_commit(),
                "host": socket.gethostname(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "device": device_description(),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                # processes of the job (the launcher's WORLD_SIZE): device-hours = wall x GPUs
                "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                "started": _dt.datetime.fromtimestamp(self.started, _dt.timezone.utc).isoformat(),
                "finished": _dt.datetime.fromtimestamp(finished, _dt.timezone.utc).isoformat(),
                "wall_seconds": round(finished - self.started, 3),
            }
        )
        if extra:
            self.record.update(extra)
        write_json(path, self.record)
        return self.record
