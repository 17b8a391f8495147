"""One-time migration of a results folder made before config keys had roles (identity/execution).

Results made by earlier kdflow versions have (a) manifests that embed their dataset's folder and
lack file sizes, and (b) Snakemake records of the old ``params`` (whole config slices, paths and
workers included), so the first run after upgrading would re-run every job. ``migrate``

1. rewrites every old manifest under ``<results>/datasets`` and ``<results>/subsets`` in the
   current format (each file's base folder and size), keeping its modification time, so nothing
   downstream looks outdated; and
2. runs ``snakemake --touch`` with the same config, which records the current ``params`` and code
   of every job whose outputs exist, without running anything.

Use it on a results folder that was complete and up to date before the upgrade (``snakemake -n``
with the old version said "Nothing to be done"): ``--touch`` marks every existing output as up to
date, whatever changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kdflow import paths
from kdflow.config import load_config, resolve_dataset
from kdflow.data.imagefolder import FORMAT_LINE, Manifest, Sample, write_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _old_manifest(path: Path) -> tuple[Path, list[str], list[tuple[str, str, int]]] | None:
    """(root, classes, rows) of a manifest in the first format (``# root=...``), else None."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("# root="):
        return None
    root = Path(lines[0][len("# root="):])
    classes = lines[1][len("# classes="):].split(",")
    rows = [line.split("\t") for line in lines[3:] if line]
    return root, classes, [(r[0], r[1], int(r[2])) for r in rows]


def _locate(full: Path, bases: dict[str, Path]) -> tuple[str, str] | None:
    """(base, relative path) of a file under one of the base folders, as written or resolved."""
    for candidate in (full.absolute(), full.resolve()):
        for name, folder in bases.items():
            for form in (folder.absolute(), folder.resolve()):
                if candidate.is_relative_to(form):
                    return name, candidate.relative_to(form).as_posix()
    return None


def _rebase(dataset: dict, old_root: Path, classes: list[str], rows, where: Path) -> Manifest:
    """The same files, relative to the dataset's configured root or to its work folder."""
    bases = {"root": Path(dataset["root"]), "work": Path(dataset["work_dir"])}
    samples, used = [], set()
    for rel, cls, index in rows:
        full = old_root / rel
        found = _locate(full, bases)
        if found is None:
            raise ValueError(f"{where}: {full} is under neither {bases['root']} nor {bases['work']}; "
                             "set the dataset's root to where its files are, then migrate")
        used.add(found[0])
        samples.append(Sample(found[1], cls, index, bytes=full.stat().st_size))
    if len(used) > 1:
        raise ValueError(f"{where}: its files lie both under the dataset's root and its work folder")
    base = used.pop() if used else "root"
    return Manifest(root=bases[base], samples=samples, classes=classes, base=base)


def convert_manifests(cfg: dict) -> list[str]:
    """Rewrite every first-format manifest of ``cfg``'s datasets and subsets; returns their paths."""
    results = cfg["results"]
    targets = [(Path(paths.dataset_manifest(results, name, split)), name)
               for name in cfg["datasets"] for split in ("train", "test")]
    targets += [(Path(paths.subset_manifest(results, name)), sub["dataset"]) for name, sub in cfg["subsets"].items()]
    done = []
    for path, dataset_name in targets:
        if not path.is_file() or path.read_text(encoding="utf-8").startswith(FORMAT_LINE):
            continue
        old = _old_manifest(path)
        if old is None:
            raise ValueError(f"{path}: neither a current manifest nor one of the first format ('# root=' line); "
                             "delete it and let prepare_dataset / imagenet_subset write it again")
        old_root, classes, rows = old
        manifest = _rebase(resolve_dataset(cfg, dataset_name), old_root, classes, rows, path)
        stat = path.stat()
        write_manifest(path, manifest, dataset_name)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # downstream results stay up to date
        done.append(str(path))
    return done


def migrate(config_path: str | Path, snakemake_args: list[str], touch: bool = True) -> int:
    cfg = load_config(config_path)
    for path in convert_manifests(cfg):
        print(f"[migrate] manifest rewritten: {path}", flush=True)
    if not touch:
        return 0
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [str(snakemake) if snakemake.exists() else "snakemake", "--touch", "--cores", "1",
           "--snakefile", str(REPO_ROOT / "Snakefile"), "--configfile", str(config_path), *snakemake_args]
    print(f"[migrate] recording the current params of existing results: {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd)
