"""ImageFolder listing, manifests and the dataset that reads them.

A manifest is a TSV with the columns ``path``, ``class``, ``index`` (position of the class in the
sorted class list of the whole split, so indices agree with the full dataset) and ``bytes`` (the
file's size), after ``# dataset=<name>``, ``# base=<root|work>`` and ``# classes=...`` lines. It
is the dataset's identity: its content, not where it lies. ``path`` is relative to a base folder
that is resolved when a job reads the manifest: ``root`` (the dataset's configured folder, which
may move, e.g. to node-local storage) or ``work`` (the dataset's work folder under the results
root, for files kdflow derived, e.g. CIFAR's decoded PNGs). Every stage that reads images reads a
manifest.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from kdflow.io import write_text

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
BASES = ("root", "work")
FORMAT_LINE = "# kdflow manifest 2"


class DatasetError(ValueError):
    """A dataset folder or manifest that cannot be used; the message names the path at fault."""


@dataclass(frozen=True, slots=True)
class Sample:
    path: str  # relative to the manifest root
    cls: str
    index: int
    bytes: int | None = None  # file size (None until the manifest is written)


class SampleList:
    """What every manifest (classification, segmentation, detection) offers over its ``samples``
    and ``classes``."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class Manifest(SampleList):
    root: Path  # where ``path`` is relative to, for this process (resolved from ``base`` at job time)
    samples: list[Sample]
    classes: list[str]  # all classes of the split, index order
    base: str = "root"
    dataset: str | None = field(default=None, compare=False)


def _entries(folder: Path) -> list[Path]:
    """A folder's entries; a symbolic link that loops or points nowhere is named (``is_dir`` and
    ``is_file`` would quietly say False, and its images would be missing from the manifest)."""
    entries = list(folder.iterdir())
    for p in entries:
        if p.is_symlink() and not p.exists():
            raise DatasetError(f"{p} is a symbolic link that loops or points to nothing "
                               f"({os.readlink(p)}); fix or remove it")
    return entries


def list_split(split_dir: str | Path, what: str = "dataset split") -> dict[str, list[str]]:
    """``{class: sorted file names}`` of an ImageFolder split; errors name the folder at fault."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DatasetError(f"{what} folder not found: {split_dir}")
    classes = sorted(p.name for p in _entries(split_dir) if p.is_dir())
    if not classes:
        raise DatasetError(f"{what} {split_dir} has no class sub-folders (expected <class>/<image>)")
    listing = {}
    for cls in classes:
        # other files (a README, an annotation) are not images of the class: left out by suffix
        files = sorted(
            p.name for p in _entries(split_dir / cls)
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


def write_manifest(path: str | Path, manifest: Manifest, dataset: str) -> None:
    """Write ``manifest`` of ``dataset`` with every file's size (read from ``manifest.root``)."""
    if manifest.base not in BASES:
        raise ValueError(f"manifest base {manifest.base!r} is not one of {BASES}")
    buf = io.StringIO()
    buf.write(f"{FORMAT_LINE}\n# dataset={dataset}\n# base={manifest.base}\n")
    buf.write("# classes=" + ",".join(manifest.classes) + "\n")
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["path", "class", "index", "bytes"])
    for s in manifest.samples:
        size = s.bytes if s.bytes is not None else _size(manifest.root / s.path)
        writer.writerow([s.path, s.cls, s.index, size])
    write_text(path, buf.getvalue())


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc


def dataset_bases(dataset: Mapping) -> dict[str, Path]:
    """The folders a resolved dataset entry's manifests are relative to (``root`` and ``work``)."""
    return {"root": Path(dataset["root"]), "work": Path(dataset["work_dir"])}


def read_manifest_lines(path: Path, format_line: str, mismatch: Callable[[str], str]) -> tuple[dict[str, str], list]:
    """The ``# key=value`` header and the data lines of a kdflow manifest (classification,
    segmentation or detection) whose first line must be ``format_line``; ``mismatch(first line)``
    is the error message otherwise."""
    header: dict[str, str] = {}
    rows = []
    with open(path, encoding="utf-8") as fh:
        first = fh.readline().rstrip("\n")
        if first != format_line:
            raise DatasetError(mismatch(first))
        for line in fh:
            if line.startswith("# ") and "=" in line:
                key, value = line[2:].rstrip("\n").split("=", 1)
                header[key] = value
            elif not line.startswith("#"):
                rows.append(line)
    return header, rows


def read_manifest(path: str | Path, dataset: Mapping) -> Manifest:
    """Read a manifest, resolving its base folder from ``dataset`` (a resolved dataset entry of the
    job's config: its ``root`` and ``work_dir`` as configured now, wherever the files were when the
    manifest was written)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"manifest not found: {path}")
    header, rows = read_manifest_lines(path, FORMAT_LINE, lambda first: (
        f"{path} is not a kdflow manifest (version 2); a manifest written before kdflow recorded file sizes is "
        "converted by `python -m kdflow migrate`"))
    reader = csv.reader(rows, delimiter="\t")
    if next(reader, None) != ["path", "class", "index", "bytes"] or not {"dataset", "base", "classes"} <= set(header):
        raise DatasetError(f"{path}: a kdflow manifest needs dataset=, base=, classes= and a header line")
    if header["dataset"] != dataset["name"]:
        raise DatasetError(f"{path} lists dataset {header['dataset']!r}, read as dataset {dataset['name']!r}")
    root = dataset_bases(dataset)[header["base"]]
    samples = [Sample(path=r[0], cls=r[1], index=int(r[2]), bytes=int(r[3])) for r in reader if r]
    return Manifest(root=root, samples=samples, classes=header["classes"].split(","), base=header["base"],
                    dataset=header["dataset"])


class ManifestDataset:
    """A map-style dataset over a manifest: ``(transform(image), class index)``.

    A file that cannot be decoded raises an error naming its full path (never a silent skip).
    """

    def __init__(self, manifest: Manifest, transform: Callable | None = None):
        self.manifest = manifest
        self.transform = transform

    def __len__(self) -> int:
        return len(self.manifest.samples)

    def path(self, i: int) -> str:
        """Where item ``i``'s image is (a failing step names its batch's images by it)."""
        return str(self.manifest.root / self.manifest.samples[i].path)

    def load(self, i: int):
        from PIL import Image, UnidentifiedImageError

        full = self.path(i)
        try:
            with Image.open(full) as img:
                return to_rgb(img)
        except (OSError, UnidentifiedImageError, SyntaxError) as exc:
            raise DatasetError(f"cannot read image {full}: {exc}") from exc

    def __getitem__(self, i: int):
        img = self.load(i)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.manifest.samples[i].index


def to_rgb(img):
    """Any decodable image as 8-bit RGB. PIL's own ``convert("RGB")`` clips 16-bit greyscale
    (modes ``I;16*`` and ``I``) at 255, saturating almost every pixel: those are scaled from
    [0, 65535] instead. CMYK, palette and greyscale images convert as PIL does; an alpha channel
    is dropped (the colour under it is kept), as torchvision's ImageFolder loader does."""
    import numpy as np
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        wide = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")

