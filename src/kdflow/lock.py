"""One Snakemake run per results root.

Snakemake locks its *working directory* (``.snakemake/locks``): two runs started from two
directories with the same ``results:`` would both schedule the same jobs and write the same
files. The Snakefile therefore takes this lock on the results root when it starts executing
(``onstart``: never for a dry run or a run with nothing to do) and releases it when it ends
(``onsuccess`` / ``onerror``). Jobs that Snakemake spawns (cluster jobs, ``--no-hooks``) do not
take it; scripts run by hand do not either.

The lock is a file, ``<results>/.kdflow.lock``, holding who took it (host, process, working
directory, command line, time), created complete in one step by ``os.link`` (atomic, also on NFS).
A lock left by a run that crashed is taken over when its process is known to be gone (same host,
process not running); one from another host cannot be checked, and is refused with how to clear it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

LOCK_NAME = ".kdflow.lock"


class ResultsLocked(RuntimeError):
    """Another Snakemake run holds the results root."""


def lock_path(results: str | os.PathLike) -> Path:
    return Path(results) / LOCK_NAME


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "workdir": os.getcwd(),
            "command": " ".join(sys.argv), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: treated as held by an unknown process


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _gone(holder: dict) -> bool:
    """Whether the holder's process is known to have ended (only checkable on its own host)."""
    return holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
        and not _running(holder["pid"])


def _describe(holder: dict) -> str:
    if not holder:
        return "an unreadable lock"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('since')} from "
            f"{holder.get('workdir')}: {holder.get('command')}")


def acquire(results: str | os.PathLike) -> Path:
    """Take the results root's lock, or raise ResultsLocked naming its holder and how to clear it."""
    path = lock_path(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{LOCK_NAME}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(_holder(), fh)
        for _ in range(2):
            try:
                os.link(tmp, path)  # fails if the lock exists: exclusive, and never half-written
                return path
            except FileExistsError:
                holder = _read(path)
                if holder is None:  # released meanwhile
                    continue
                if _gone(holder):
                    print(f"kdflow: {path} was left by {_describe(holder)}, which is no longer running; "
                          "taking it over", file=sys.stderr)
                    path.unlink(missing_ok=True)
                    continue
                raise ResultsLocked(
                    f"{path.parent} is in use by another Snakemake run ({_describe(holder)}). Two runs on "
                    f"one results root would write the same files; wait for it to end. If it is no longer "
                    f"running (it crashed, or its node is gone), delete {path} and start again.") from None
        raise ResultsLocked(f"could not take {path}: it keeps being re-created by another run")
    finally:
        os.unlink(tmp)


def release(results: str | os.PathLike) -> None:
    """Drop the lock if this process holds it (a run refused by ``acquire`` leaves the holder's)."""
    path = lock_path(results)
    holder = _read(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
