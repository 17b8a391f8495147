"""ImageFolder listing, manifests and the dataset that reads them.

A manifest is a TSV with a ``# root=<folder>`` comment line and the columns ``path`` (relative to
the root), ``class`` and ``index`` (position of the class in the sorted class list of the whole
split, so indices agree with the full dataset). Every stage that reads images reads a manifest.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from kdflow.io import write_text

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


class DatasetError(ValueError):
    """A dataset folder or manifest that cannot be used; the message names the path at fault."""


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the manifest root
    cls: str
    index: int


@dataclass
class Manifest:
    root: Path
    samples: list[Sample]
    classes: list[str]  # all classes of the split, index order

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)


def list_split(split_dir: str | Path, what: str = "dataset split") -> dict[str, list[str]]:
    """``{class: sorted file names}`` of an ImageFolder split; errors name the folder at fault."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DatasetError(f"{what} folder not found: {split_dir}")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{what} {split_dir} has no class sub-folders (expected <class>/<image>)")
    listing = {}
    for cls in classes:
        files = sorted(
            p.name for p in (split_dir / cls).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DatasetError(f"class folder {split_dir / cls} contains no images")
        listing[cls] = files
    return listing


def manifest_from_listing(root: Path, split: str, listing: dict[str, list[str]],
                          chosen: dict[str, Sequence[str]] | None = None) -> Manifest:
    classes = sorted(listing)
    index = {c: i for i, c in enumerate(classes)}
    chosen = chosen if chosen is not None else listing
    samples = [
        Sample(path=f"{split}/{cls}/{name}", cls=cls, index=index[cls])
        for cls in classes
        for name in sorted(chosen.get(cls, ()))
    ]
    return Manifest(root=Path(root), samples=samples, classes=classes)


def split_manifest(root: str | Path, split: str) -> Manifest:
    """Manifest of a whole split (``<root>/<split>/<class>/<image>``)."""
    root = Path(root)
    return manifest_from_listing(root, split, list_split(root / split, f"split {split!r}"))


def write_manifest(path: str | Path, manifest: Manifest) -> None:
    buf = io.StringIO()
    buf.write(f"# root={manifest.root}\n")
    buf.write("# classes=" + ",".join(manifest.classes) + "\n")
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["path", "class", "index"])
    for s in manifest.samples:
        writer.writerow([s.path, s.cls, s.index])
    write_text(path, buf.getvalue())


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"manifest not found: {path}")
    root = classes = None
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("# root="):
                root = Path(line[len("# root="):].rstrip("\n"))
            elif line.startswith("# classes="):
                classes = line[len("# classes="):].rstrip("\n").split(",")
            elif not line.startswith("#"):
                rows.append(line)
    reader = csv.reader(rows, delimiter="\t")
    header = next(reader, None)
    if header != ["path", "class", "index"] or root is None or classes is None:
        raise DatasetError(f"{path} is not a kdflow manifest (needs '# root=', '# classes=' and a header)")
    samples = [Sample(path=r[0], cls=r[1], index=int(r[2])) for r in reader if r]
    return Manifest(root=root, samples=samples, classes=classes)


class ManifestDataset:
    """A map-style dataset over a manifest: ``(transform(image), class index)``.

    A file that cannot be decoded raises an error naming its full path (never a silent skip).
    """

    def __init__(self, manifest: Manifest, transform: Callable | None = None):
        self.manifest = manifest
        self.transform = transform

    def __len__(self) -> int:
        return len(self.manifest.samples)

    def load(self, i: int):
        from PIL import Image, UnidentifiedImageError

        full = self.manifest.root / self.manifest.samples[i].path
        try:
            with Image.open(full) as img:
                return img.convert("RGB")
        except (OSError, UnidentifiedImageError, SyntaxError) as exc:
            raise DatasetError(f"cannot read image {full}: {exc}") from exc

    def __getitem__(self, i: int):
        img = self.load(i)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.manifest.samples[i].index
