"""Dataset preparation: whatever layout a dataset comes in -> a ``train`` and a ``test`` manifest.

Every stage after this one (subsets, teacher checks, transfer) reads these two manifests and
nothing else, so supporting a new dataset layout is one preparer function here. A classification
preparer returns ``Manifest`` objects (kdflow.data.imagefolder), a segmentation preparer
``SegManifest`` objects (kdflow.data.segmentation), a detection preparer ``DetManifest`` objects
(kdflow.data.detection).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from kdflow.data.imagefolder import DatasetError, Manifest, split_manifest

if TYPE_CHECKING:
    from kdflow.data.segmentation import SegManifest

SPLITS = ("train", "test")
PREPARERS: dict[str, Callable[[dict, Path], dict[str, Manifest | SegManifest]]] = {}


def preparer(fmt: str):
    def register(fn):
        PREPARERS[fmt] = fn
        return fn

    return register


def prepare(dataset: dict, work_dir: str | Path) -> dict[str, Manifest | SegManifest]:
    """``dataset`` is a resolved dataset entry; ``work_dir`` may receive derived files (symlink
    trees, decoded images) that the manifests point into."""
    fmt = dataset["format"]
    if fmt not in PREPARERS:
        raise DatasetError(f"dataset {dataset['name']!r}: no preparer for format {fmt!r} "
                           f"(known: {', '.join(sorted(PREPARERS))})")
    root = Path(dataset["root"])
    if not root.is_dir():
        raise DatasetError(f"dataset {dataset['name']!r}: root folder not found: {root}")
    manifests = PREPARERS[fmt](dataset, Path(work_dir))
    if manifests["train"].classes != manifests["test"].classes:
        raise DatasetError(f"dataset {dataset['name']!r}: train and test have different classes")
    return manifests


@preparer("imagefolder")
def _imagefolder(dataset: dict, work_dir: Path) -> dict[str, Manifest]:
    root = Path(dataset["root"])
    return {"train": split_manifest(root, dataset["train_split"]),
            "test": split_manifest(root, dataset["val_split"])}


from kdflow.data import detection, formats, segmentation  # noqa: E402,F401  (register the dataset-specific preparers)
