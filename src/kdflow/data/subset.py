"""Seeded, listing-order-independent ImageNet subsets (KDEP's ``imgnet_128k`` done reproducibly).

For every class the file names are sorted, then permuted by a generator seeded with
``(seed, class name)``; the first ``k`` files are kept. The choice therefore depends only on the
seed, the class name and the set of file names: not on the order the filesystem lists them, nor
on which other classes exist. ``fraction`` keeps ``max(1, round(fraction * n))`` images of each
class (class balance is preserved).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from kdflow.data.imagefolder import DatasetError, Manifest, list_split, manifest_from_listing


def _class_rng(seed: int, cls: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(cls.encode("utf-8"))]))


def choose_per_class(files: list[str], k: int, seed: int, cls: str) -> list[str]:
    ordered = sorted(files)
    order = _class_rng(seed, cls).permutation(len(ordered))
    return sorted(ordered[i] for i in order[:k])


def select_subset(manifest: Manifest, *, per_class: int | None = None, fraction: float | None = None,
                  seed: int = 0, source: str = "") -> Manifest:
    """Select from a (train) manifest; exactly one of ``per_class`` / ``fraction``."""
    if (per_class is None) == (fraction is None):
        raise ValueError("give exactly one of per_class and fraction")
    by_class: dict[str, list[str]] = {}
    for sample in manifest.samples:
        by_class.setdefault(sample.cls, []).append(sample.path)
    chosen: set[str] = set()
    short = []
    for cls in manifest.classes:
        files = by_class.get(cls, [])
        k = per_class if per_class is not None else max(1, round(fraction * len(files)))
        if k > len(files):
            short.append(f"class {cls} of {source or manifest.root} has {len(files)} images, {k} asked")
            continue
        chosen.update(choose_per_class(files, k, seed, cls))
    if short:
        raise DatasetError("classes with fewer images than the subset asks for:\n  " + "\n  ".join(short))
    samples = [s for s in manifest.samples if s.path in chosen]
    return Manifest(root=manifest.root, samples=samples, classes=manifest.classes, base=manifest.base)


def make_subset(root: str | Path, split: str = "train", *, per_class: int | None = None,
                fraction: float | None = None, seed: int = 0) -> Manifest:
    """Select a subset of the ImageFolder split ``<root>/<split>``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root not found: {root}")
    listing = list_split(root / split, f"split {split!r} of dataset {root}")
    manifest = manifest_from_listing(root, split, listing)
    return select_subset(manifest, per_class=per_class, fraction=fraction, seed=seed, source=str(root / split))


def materialise_symlinks(manifest: Manifest, dest: str | Path) -> Path:
    """A symlink tree ``dest/<split>/<class>/<file>`` pointing at the selected originals."""
    dest = Path(dest)
    for s in manifest.samples:
        link = dest / s.path
        link.parent.mkdir(parents=True, exist_ok=True)
        target = (manifest.root / s.path).resolve()
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(target, link)
    return dest
