"""Atomic file writing and hashing.

Every file kdflow writes goes through these helpers: the content is written to a temporary file
in the destination folder, flushed to disk, and renamed over the final name. A crash therefore
never leaves a half-written file under a name that Snakemake (or a resuming job) would trust.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results are shared with a group
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # say where, and that nothing was lost
            kept = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
            raise OSError(exc.errno, f"{os.strerror(exc.errno)} while writing {path}; {kept}. Free space "
                                     "(or quota) there and re-run") from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_with(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Atomically create ``path`` by calling ``writer(tmp_path)``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def canonical_json(obj: Any) -> str:
    """A stable text form of plain data: sorted keys, no whitespace (the input of config hashes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def hash_data(obj: Any) -> str:
    """sha256 of the canonical JSON form of ``obj`` (used as the config hash of runs)."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- engine CSV logs
# An engine's per-iteration log grows by one appended row at a time (rewriting it atomically per
# row would cost O(rows) per row); a resumed job first drops the rows written after the state it
# resumes from, so the log reads as one uninterrupted run.
def append_csv_row(path: str | os.PathLike, fields: list[str], row: dict) -> None:
    """Append ``row`` (keys outside ``fields`` ignored) to the CSV at ``path``, header first."""
    import csv

    path = Path(path)
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def keep_csv_rows_through(path: str | os.PathLike, fields: list[str], iteration: int) -> None:
    """Drop the rows of the CSV at ``path`` whose ``iteration`` is past ``iteration``."""
    import csv

    path = Path(path)
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [row for row in csv.DictReader(fh) if int(row["iteration"]) <= iteration]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
