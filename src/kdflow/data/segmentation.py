"""Semantic segmentation datasets: (image, mask) manifests, their preparers and layout checks.

A segmentation manifest is the counterpart of :mod:`kdflow.data.imagefolder`'s manifest: a TSV
whose rows pair an image with its mask (``image``, ``mask``, ``image_bytes``, ``mask_bytes``),
after ``# kdflow seg manifest 1`` and the lines ``# dataset=``, ``# image_base=``,
``# mask_base=``, ``# classes=`` (comma-separated, index = mask value), ``# reduce_zero_label=``
and ``# ignore_index=``. Images and masks have a base folder each, resolved when a job reads the
manifest (``root``: the configured folder; ``work``: the dataset's work folder), because images
are read where the user keeps them while masks are often derived (remapped, decoded from .mat)
into the work folder. A mask is a single-channel 8-bit PNG of class indices (a palette PNG counts
by its indices); ``ignore_index`` marks pixels of no class.

Formats (each preparer reads the layout as distributed and writes only under the work folder):

- ``mmseg``: ``img_dir/<split>/<stem>.<jpg|png>`` with ``ann_dir/<split>/<stem>.png`` and
  ``classes.txt`` (line k names mask value k, usually ``background`` first); splits from
  ``train_split``/``val_split``. The demo's segmentation set is written in this layout.
- ``cityscapes``: fine annotations, train (2975) and val (500, reported as test); the 19 classes of
  the official trainId table. ``*_gtFine_labelTrainIds.png`` are used where present for every
  image, else made from ``*_gtFine_labelIds.png`` into the work folder.
- ``voc_aug``: PASCAL VOC 2012 with SBD (``sbd_root``): train = "trainaug", (VOC train | SBD train
  | SBD val) - VOC val (10582), test = VOC val (1449). Every mask is written to the work folder as
  an index PNG: VOC's palette PNG where it has one, else SBD's ``cls/<id>.mat``.
- ``ade20k``: ADEChallengeData2016, training (20210) and validation (2000); mask value 0 is
  "other" (ignored: ``reduce_zero_label``), 1..150 the classes.

Torch- and mmseg-free at import: :mod:`kdflow.config` imports the layout checks, and the Snakefile
imports :mod:`kdflow.config`.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from kdflow.data.imagefolder import (BASES, IMAGE_SUFFIXES, DatasetError, SampleList, dataset_bases,
                                     read_manifest_lines)
from kdflow.data.prepare import preparer
from kdflow.io import read_json, write_json, write_text, write_with

FORMAT_LINE = "# kdflow seg manifest 1"
COLUMNS = ["image", "mask", "image_bytes", "mask_bytes"]
HEADER_KEYS = ("dataset", "image_base", "mask_base", "classes", "reduce_zero_label", "ignore_index")
SEGMENTATION_FORMATS = ("mmseg", "cityscapes", "voc_aug", "ade20k")
IGNORE_INDEX = 255
MASK_MODES = ("L", "P")  # single-channel 8-bit; a palette PNG's values are its indices
MAX_CLASSES = 255  # mask values 0..254, 255 is ignored
SHOWN = 5  # unmatched or missing files named in one error
KEY_HELP = {"root": "the dataset's folder", "sbd_root": "SBD's benchmark_RELEASE/dataset folder"}
CONVERTER_VERSION = 1  # part of each converted mask's record: a change of conversion redoes them all

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")
# The official labelId -> trainId table (cityscapesScripts' labels.py); every other id -> ignored.
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
ADE_CLASS_FILES = ("objectInfo150.txt", "objectInfo150.csv")
ADE_NUM_CLASSES = 150


# ----------------------------------------------------------------------------------- manifests
@dataclass(frozen=True)
class SegSample:
    image: str  # relative to the manifest's image root
    mask: str  # relative to the manifest's mask root
    image_bytes: int | None = None  # file sizes (None until the manifest is written)
    mask_bytes: int | None = None


@dataclass
class SegManifest(SampleList):
    image_root: Path  # where ``image`` paths are relative to, for this process
    mask_root: Path  # where ``mask`` paths are relative to
    samples: list[SegSample]
    classes: list[str]  # index = mask value (after reduce_zero_label)
    image_base: str = "root"
    mask_base: str = "root"
    reduce_zero_label: bool = False  # mask value 0 is ignored and k becomes class k - 1
    ignore_index: int = IGNORE_INDEX
    dataset: str | None = field(default=None, compare=False)

    def pairs(self) -> list[tuple[str, str]]:
        """(absolute image path, absolute mask path) of every sample, in manifest order."""
        image_root, mask_root = Path(self.image_root).absolute(), Path(self.mask_root).absolute()
        return [(str(image_root / s.image), str(mask_root / s.mask)) for s in self.samples]


def check_class_names(classes: Sequence[str], where: str) -> None:
    """Class names travel as one comma-separated header line: no commas, line breaks or tabs."""
    if not classes:
        raise DatasetError(f"{where}: no classes")
    if len(classes) > MAX_CLASSES:
        raise DatasetError(f"{where}: {len(classes)} classes; 8-bit masks hold at most {MAX_CLASSES} "
                           f"(value {IGNORE_INDEX} is ignored)")
    for k, name in enumerate(classes):
        if not name or name != name.strip() or any(c in name for c in ",\t\r\n"):
            raise DatasetError(f"{where}: class {k} {name!r} must be non-empty, without commas, tabs, line breaks "
                               "or surrounding spaces")
    repeated = sorted({c for c in classes if list(classes).count(c) > 1})
    if repeated:
        raise DatasetError(f"{where}: classes named more than once: {', '.join(repeated)}")


def write_seg_manifest(path: str | Path, manifest: SegManifest, dataset: str) -> None:
    """Write ``manifest`` of ``dataset`` with every file's size (read from its root), atomically."""
    for which, base in (("image", manifest.image_base), ("mask", manifest.mask_base)):
        if base not in BASES:
            raise ValueError(f"manifest {which} base {base!r} is not one of {BASES}")
    check_class_names(manifest.classes, f"segmentation manifest {path} of dataset {dataset!r}")
    buf = io.StringIO()
    buf.write(f"{FORMAT_LINE}\n# dataset={dataset}\n# image_base={manifest.image_base}\n"
              f"# mask_base={manifest.mask_base}\n# classes={','.join(manifest.classes)}\n"
              f"# reduce_zero_label={'true' if manifest.reduce_zero_label else 'false'}\n"
              f"# ignore_index={int(manifest.ignore_index)}\n")
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    for s in manifest.samples:
        image_bytes = s.image_bytes if s.image_bytes is not None else _size(Path(manifest.image_root) / s.image, "image")
        mask_bytes = s.mask_bytes if s.mask_bytes is not None else _size(Path(manifest.mask_root) / s.mask, "mask")
        writer.writerow([s.image, s.mask, image_bytes, mask_bytes])
    write_text(path, buf.getvalue())


def _size(path: Path, what: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError as exc:
        raise DatasetError(f"cannot read {what} {path}: {exc}") from exc


def is_seg_manifest(path: str | Path) -> bool:
    """Whether ``path`` is a segmentation manifest (by its first line; a classification manifest is not)."""
    try:
        with open(path, "rb") as fh:
            return fh.readline().rstrip(b"\r\n") == FORMAT_LINE.encode()
    except OSError as exc:
        raise DatasetError(f"cannot read manifest {path}: {exc}") from exc


def read_seg_manifest(path: str | Path, dataset: Mapping) -> SegManifest:
    """Read a segmentation manifest, resolving its base folders from ``dataset`` (a resolved dataset
    entry: its ``root`` and ``work_dir`` as configured now, wherever the files were when written)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"segmentation manifest not found: {path}")

    def mismatch(first: str) -> str:
        hint = " (it is a classification manifest)" if first.startswith("# kdflow manifest") else ""
        return (f"{path} is not a kdflow segmentation manifest: its first line is {first!r}, expected "
                f"{FORMAT_LINE!r}{hint}")

    header, rows = read_manifest_lines(path, FORMAT_LINE, mismatch)
    missing = [f"{key}=" for key in HEADER_KEYS if key not in header]
    if missing:
        raise DatasetError(f"{path}: a kdflow segmentation manifest needs the header lines {', '.join(missing)}")
    reader = csv.reader(rows, delimiter="\t")
    if next(reader, None) != COLUMNS:
        raise DatasetError(f"{path}: expected the column line {' '.join(COLUMNS)} (tab-separated) after the header")
    if header["dataset"] != dataset["name"]:
        raise DatasetError(f"{path} lists dataset {header['dataset']!r}, read as dataset {dataset['name']!r}")
    for key in ("image_base", "mask_base"):
        if header[key] not in BASES:
            raise DatasetError(f"{path}: {key}={header[key]} is not one of {', '.join(BASES)}")
    if header["reduce_zero_label"] not in ("true", "false"):
        raise DatasetError(f"{path}: reduce_zero_label={header['reduce_zero_label']} is not true or false")
    if not re.fullmatch(r"\d+", header["ignore_index"]):
        raise DatasetError(f"{path}: ignore_index={header['ignore_index']} is not a non-negative integer")
    samples = []
    for number, row in enumerate(reader, start=1):
        if not row:
            continue
        if len(row) != len(COLUMNS) or not row[2].isdigit() or not row[3].isdigit():
            raise DatasetError(f"{path}: sample {number} {row!r} is not image, mask and two sizes")
        samples.append(SegSample(image=row[0], mask=row[1], image_bytes=int(row[2]), mask_bytes=int(row[3])))
    bases = dataset_bases(dataset)
    return SegManifest(image_root=bases[header["image_base"]], mask_root=bases[header["mask_base"]],
                       samples=samples, classes=header["classes"].split(","), image_base=header["image_base"],
                       mask_base=header["mask_base"], reduce_zero_label=header["reduce_zero_label"] == "true",
                       ignore_index=int(header["ignore_index"]), dataset=header["dataset"])


# ----------------------------------------------------------------------------------- layout checks
def _layout(entry: Mapping) -> dict[str, list[tuple[str, str]]]:
    """``{config key: [(relative path, "folder" | "file")]}`` that a format needs to be prepared."""
    fmt = entry["format"]
    if fmt == "mmseg":
        splits = (entry.get("train_split", "train"), entry.get("val_split", "val"))
        return {"root": [(f"{top}/{split}", "folder") for top in ("img_dir", "ann_dir") for split in splits]
                + [("classes.txt", "file")]}
    if fmt == "cityscapes":
        return {"root": [(f"{top}/{split}", "folder") for top in ("leftImg8bit", "gtFine") for split in ("train", "val")]}
    if fmt == "voc_aug":
        return {"root": [("JPEGImages", "folder"), ("SegmentationClass", "folder"),
                         ("ImageSets/Segmentation/train.txt", "file"), ("ImageSets/Segmentation/val.txt", "file")],
                "sbd_root": [("cls", "folder"), ("train.txt", "file"), ("val.txt", "file")]}
    if fmt == "ade20k":
        return {"root": [(f"{top}/{split}", "folder") for top in ("images", "annotations")
                         for split in ("training", "validation")]}
    raise ValueError(f"{fmt!r} is not a segmentation format ({', '.join(SEGMENTATION_FORMATS)})")


def seg_layout_problems(entry: Mapping, name: str, unfilled: Callable[[str], bool] | None = None) -> list[str]:
    """The folders and index files a segmentation format needs that are missing (cheap: no image is
    listed or read); each problem names the config key and the path. A demo entry (generated by the
    pipeline) is not checked, nor a folder for which ``unfilled(value)`` holds (kdflow.config passes
    its ``<FILL ...>`` placeholder test: those are reported as unfilled, not as missing)."""
    if "root" not in entry:
        return []
    problems = []
    for key, needed in _layout(entry).items():
        where = f"config.datasets.{name}.{key}"
        value = entry.get(key)
        if value is None:
            problems.append(f"{where}: format {entry['format']} needs {key}, {KEY_HELP.get(key, 'a folder')}")
            continue
        if unfilled is not None and unfilled(value):
            continue
        base = Path(value)
        if not base.is_dir():
            problems.append(f"{where}: folder {base} does not exist")
            continue
        for rel, kind in needed:
            path = base / rel
            if not (path.is_dir() if kind == "folder" else path.is_file()):
                problems.append(f"{where}: {kind} {path} does not exist")
    return problems


# ----------------------------------------------------------------------------------- file helpers
def _header(path: Path, what: str) -> tuple[tuple[int, int], str]:
    """(width, height) and mode of an image file, from its header only."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size, img.mode
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot read {what} {path}: {exc}") from exc


def _pixels(path: Path, what: str) -> tuple[np.ndarray, str]:
    """The decoded values of an image file (a palette image's indices) and its mode."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img), img.mode
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot read {what} {path}: {exc}") from exc


def _check_pairs(manifest: SegManifest) -> None:
    """Every mask opens as a single-channel 8-bit image of its image's size (headers only: cheap)."""
    for s in manifest.samples:
        image, mask = Path(manifest.image_root) / s.image, Path(manifest.mask_root) / s.mask
        image_size = _header(image, "image")[0]
        mask_size, mode = _header(mask, "mask")
        if mode not in MASK_MODES:
            raise DatasetError(f"mask {mask} has mode {mode}; a mask is a single-channel 8-bit PNG of class indices "
                               f"(mode {' or '.join(MASK_MODES)})")
        if mask_size != image_size:
            raise DatasetError(f"mask {mask} is {mask_size[0]}x{mask_size[1]} but its image {image} is "
                               f"{image_size[0]}x{image_size[1]}")


def _require_all(paths: Sequence[Path], what: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(map(str, missing[:SHOWN]))
        raise DatasetError(f"{what}: {len(missing)} missing, e.g. {shown}")


def _id_list(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{what}: expected the list {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _files_by_stem(folder: Path, suffixes: set[str] | frozenset[str], what: str) -> dict[str, str]:
    """``{relative path without suffix: relative path}`` of the files under ``folder`` (recursive)."""
    if not folder.is_dir():
        raise DatasetError(f"{what} folder not found: {folder}")
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in suffixes and path.is_file():
            rel = path.relative_to(folder).as_posix()
            stem = rel[: -len(path.suffix)]
            if stem in found:
                raise DatasetError(f"{what}: {folder / found[stem]} and {path} have the same name; which one is meant?")
            found[stem] = rel
    if not found:
        raise DatasetError(f"{what} folder {folder} has no {'/'.join(sorted(suffixes))} files")
    return found


def _paired(root: Path, image_dir: str, mask_dir: str, classes: list[str], what: str,
            reduce_zero_label: bool = False) -> SegManifest:
    """The manifest of images in ``root/image_dir`` and masks of the same name (``.png``) in
    ``root/mask_dir``; every image needs its mask and every mask its image."""
    images = _files_by_stem(root / image_dir, IMAGE_SUFFIXES, f"{what} images")
    masks = _files_by_stem(root / mask_dir, {".png"}, f"{what} masks")
    problems = []
    lonely = sorted(set(images) - set(masks))
    if lonely:
        shown = ", ".join(f"{root / image_dir / images[k]} (expected {root / mask_dir / k}.png)" for k in lonely[:SHOWN])
        problems.append(f"{len(lonely)} image(s) without a mask: {shown}")
    lonely = sorted(set(masks) - set(images))
    if lonely:
        shown = ", ".join(str(root / mask_dir / masks[k]) for k in lonely[:SHOWN])
        problems.append(f"{len(lonely)} mask(s) without an image in {root / image_dir}: {shown}")
    if problems:
        raise DatasetError(f"{what}: " + "; ".join(problems))
    samples = [SegSample(image=f"{image_dir}/{images[k]}", mask=f"{mask_dir}/{masks[k]}") for k in sorted(images)]
    manifest = SegManifest(image_root=root, mask_root=root, samples=samples, classes=list(classes),
                           reduce_zero_label=reduce_zero_label)
    _check_pairs(manifest)
    return manifest


# ----------------------------------------------------------------------------------- derived masks
def _convert_masks(jobs: Sequence[tuple[Path, Path, str]], work_dir: Path, record_name: str,
                   decode: Callable[[Path], np.ndarray]) -> None:
    """Write ``decode(source)`` (a uint8 index array) as an 'L' PNG ``work_dir/<rel>`` for each
    ``(source, image, rel)``. Each mask is recorded with its source's name, size and mtime in
    ``work_dir/<record_name>.sources.json``; a re-run skips masks whose source and output are
    unchanged. The output depends on the source's pixels only, so skipping is exact and the files
    are the same whether converted now or before."""
    record_path = work_dir / f"{record_name}.sources.json"
    record = read_json(record_path) if record_path.is_file() else {}
    converted = 0
    try:
        for source, image, rel in jobs:
            out = work_dir / rel
            stat = source.stat()
            stamp = [CONVERTER_VERSION, source.name, stat.st_size, stat.st_mtime_ns]
            if out.is_file() and record.get(rel) == [*stamp, out.stat().st_size]:
                continue
            labels = decode(source)
            width, height = _header(image, "image")[0]
            if labels.shape != (height, width):
                raise DatasetError(f"mask {source} is {labels.shape[1]}x{labels.shape[0]} but its image {image} is "
                                   f"{width}x{height}")
            _save_mask(labels, out)
            record[rel] = [*stamp, out.stat().st_size]
            converted += 1
    finally:
        if converted:  # what was converted before a failure is kept
            write_json(record_path, record)


def _save_mask(labels: np.ndarray, out: Path) -> None:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
    write_with(out, lambda tmp: image.save(tmp, format="PNG"))


def _index_mask(path: Path, what: str) -> np.ndarray:
    """A single-channel 8-bit mask's values (a palette PNG's indices, not its colours)."""
    values, mode = _pixels(path, what)
    if mode not in MASK_MODES or values.ndim != 2:
        raise DatasetError(f"{what} {path} has mode {mode}; expected a single-channel 8-bit (or palette) PNG")
    return values


def _check_values(labels: np.ndarray, allowed_max: int, path: Path, what: str) -> np.ndarray:
    bad = np.unique(labels[(labels > allowed_max) & (labels != IGNORE_INDEX)])
    if bad.size:
        raise DatasetError(f"{what} {path} has values {', '.join(map(str, bad[:10].tolist()))} outside "
                           f"0..{allowed_max} and {IGNORE_INDEX}")
    return labels


# ----------------------------------------------------------------------------------- mmseg layout
def read_class_list(path: Path) -> list[str]:
    """``classes.txt``: one class name per line, line k (from 0) naming mask value k."""
    if not path.is_file():
        raise DatasetError(f"class list not found: {path} (one class name per line; line k names mask value k)")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise DatasetError(f"{path}: line {number} is empty (line k names mask value k - 1, so none may be left out)")
    classes = [line.strip() for line in lines]
    check_class_names(classes, str(path))
    return classes


@preparer("mmseg")
def mmseg_layout(dataset: dict, work_dir: Path) -> dict[str, SegManifest]:
    root = Path(dataset["root"])
    classes = read_class_list(root / "classes.txt")
    splits = {"train": dataset.get("train_split", "train"), "test": dataset.get("val_split", "val")}
    return {split: _paired(root, f"img_dir/{folder}", f"ann_dir/{folder}", classes,
                           f"dataset {dataset['name']!r} split {folder!r}")
            for split, folder in splits.items()}


# ----------------------------------------------------------------------------------- Cityscapes
def _cityscapes_train_ids() -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    table[list(CITYSCAPES_LABEL_IDS)] = np.arange(len(CITYSCAPES_LABEL_IDS), dtype=np.uint8)
    return table


def _cityscapes_images(root: Path, split: str) -> list[str]:
    """``<split>/<city>/<x>`` of every ``leftImg8bit/<split>/<city>/<x>_leftImg8bit.png``."""
    folder = root / "leftImg8bit" / split
    if not folder.is_dir():
        raise DatasetError(f"Cityscapes: expected the folder {folder}")
    keys = sorted(p.relative_to(root / "leftImg8bit").as_posix()[: -len("_leftImg8bit.png")]
                  for p in folder.glob("*/*_leftImg8bit.png"))
    if not keys:
        raise DatasetError(f"Cityscapes: no <city>/*_leftImg8bit.png under {folder}")
    return keys


@preparer("cityscapes")
def cityscapes(dataset: dict, work_dir: Path) -> dict[str, SegManifest]:
    root = Path(dataset["root"])
    keys = {"train": _cityscapes_images(root, "train"), "test": _cityscapes_images(root, "val")}
    every = [k for split in keys.values() for k in split]
    train_ids = [root / "gtFine" / f"{k}_gtFine_labelTrainIds.png" for k in every]
    if all(p.is_file() for p in train_ids):
        mask_root, mask_base = root, "root"
    else:  # made from labelIds with the official table, into the work folder
        label_ids = [root / "gtFine" / f"{k}_gtFine_labelIds.png" for k in every]
        _require_all(label_ids, f"Cityscapes {dataset['name']!r} fine annotations (*_gtFine_labelIds.png)")
        table = _cityscapes_train_ids()
        jobs = [(src, root / "leftImg8bit" / f"{k}_leftImg8bit.png", f"gtFine/{k}_gtFine_labelTrainIds.png")
                for src, k in zip(label_ids, every)]
        _convert_masks(jobs, work_dir, "gtFine", lambda src: table[_index_mask(src, "Cityscapes labelIds")])
        mask_root, mask_base = work_dir, "work"
    manifests = {}
    for split, split_keys in keys.items():
        samples = [SegSample(image=f"leftImg8bit/{k}_leftImg8bit.png", mask=f"gtFine/{k}_gtFine_labelTrainIds.png")
                   for k in split_keys]
        manifests[split] = SegManifest(image_root=root, mask_root=mask_root, samples=samples,
                                       classes=list(CITYSCAPES_CLASSES), mask_base=mask_base)
        _check_pairs(manifests[split])
    return manifests


# ----------------------------------------------------------------------------------- VOC + SBD
def _voc_or_sbd_mask(path: Path) -> np.ndarray:
    """Class indices 0..20 (255: border) of VOC's palette PNG or of SBD's ``GTcls.Segmentation``."""
    if path.suffix == ".mat":
        labels = _sbd_segmentation(path)
    else:
        labels = _index_mask(path, "VOC mask")
    return _check_values(labels, len(VOC_CLASSES) - 1, path, "mask")


def _sbd_segmentation(path: Path) -> np.ndarray:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        gt = loadmat(str(path), struct_as_record=False, squeeze_me=True)["GTcls"]
        labels = np.asarray(gt.Segmentation)
    except (MatReadError, OSError, ValueError, TypeError, KeyError, AttributeError, NotImplementedError) as exc:
        raise DatasetError(f"cannot read SBD mask {path} (a GTcls struct with a Segmentation field): "
                           f"{type(exc).__name__}: {exc}") from exc
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"SBD mask {path}: GTcls.Segmentation is a {labels.dtype} array of shape {labels.shape}, "
                           "expected a 2-d integer array")
    return labels


@preparer("voc_aug")
def voc_aug(dataset: dict, work_dir: Path) -> dict[str, SegManifest]:
    root, name = Path(dataset["root"]), dataset["name"]
    if not dataset.get("sbd_root"):
        raise DatasetError(f"dataset {name!r}: format voc_aug needs sbd_root (SBD's benchmark_RELEASE/dataset folder)")
    sbd = Path(dataset["sbd_root"])
    lists = root / "ImageSets" / "Segmentation"
    voc_train, voc_val = (set(_id_list(lists / f"{s}.txt", f"VOC2012 {name!r}")) for s in ("train", "val"))
    sbd_train, sbd_val = (set(_id_list(sbd / f"{s}.txt", f"SBD of {name!r}")) for s in ("train", "val"))
    ids = {"train": sorted((voc_train | sbd_train | sbd_val) - voc_val), "test": sorted(voc_val)}
    every = [i for split in ids.values() for i in split]
    _require_all([root / "JPEGImages" / f"{i}.jpg" for i in every], f"VOC2012 {name!r} images (JPEGImages/<id>.jpg)")
    jobs, unlabelled = [], []
    for i in every:
        voc = root / "SegmentationClass" / f"{i}.png"
        source = voc if voc.is_file() else sbd / "cls" / f"{i}.mat"
        if not source.is_file():
            unlabelled.append(f"{voc} or {source}")
        jobs.append((source, root / "JPEGImages" / f"{i}.jpg", f"SegmentationClassAug/{i}.png"))
    if unlabelled:
        raise DatasetError(f"VOC2012+SBD {name!r}: {len(unlabelled)} image(s) without a mask, e.g. expected "
                           + "; ".join(unlabelled[:SHOWN]))
    _convert_masks(jobs, work_dir, "SegmentationClassAug", _voc_or_sbd_mask)
    manifests = {}
    for split, split_ids in ids.items():
        samples = [SegSample(image=f"JPEGImages/{i}.jpg", mask=f"SegmentationClassAug/{i}.png") for i in split_ids]
        manifests[split] = SegManifest(image_root=root, mask_root=work_dir, samples=samples,
                                       classes=list(VOC_CLASSES), mask_base="work")
        _check_pairs(manifests[split])
    return manifests


# ----------------------------------------------------------------------------------- ADE20K
def ade_classes(root: Path) -> list[str]:
    """The 150 class names: from ``objectInfo150.txt``/``.csv`` under ``root`` (last column, first
    synonym), else mmseg's ADE20KDataset (imported only then: it needs torch)."""
    for file_name in ADE_CLASS_FILES:
        path = root / file_name
        if path.is_file():
            return _ade_class_file(path)
    from kdflow.openmmlab.compat import import_mmseg

    import_mmseg()
    from mmseg.datasets import ADE20KDataset

    return [c.strip() for c in ADE20KDataset.METAINFO["classes"]]


def _ade_class_file(path: Path) -> list[str]:
    """Rows Idx, Ratio, Train, Val, Name (after a header); Name lists synonyms ("building, edifice"
    in the .txt, "building;edifice" in the .csv), of which the first is the class name."""
    with open(path, encoding="utf-8", newline="") as fh:
        if path.suffix == ".csv":
            rows = [r for r in csv.reader(fh) if r]
        else:  # tab- (or space-) separated; the name, last, may hold spaces
            rows = [line.split(None, 4) for line in fh if line.strip()]
    if rows and rows[0][-1].strip() == "Name":
        rows = rows[1:]
    names = [re.split(r"[;,]", row[-1])[0].strip() for row in rows]
    indices = [row[0].strip() for row in rows]
    if indices != [str(k) for k in range(1, ADE_NUM_CLASSES + 1)]:
        raise DatasetError(f"{path}: expected rows Idx 1..{ADE_NUM_CLASSES} (Idx, Ratio, Train, Val, Name), "
                           f"found {len(rows)} rows")
    check_class_names(names, str(path))
    return names


@preparer("ade20k")
def ade20k(dataset: dict, work_dir: Path) -> dict[str, SegManifest]:
    root = Path(dataset["root"])
    classes = ade_classes(root)
    return {split: _paired(root, f"images/{folder}", f"annotations/{folder}", classes,
                           f"ADE20K {dataset['name']!r} {folder}", reduce_zero_label=True)
            for split, folder in (("train", "training"), ("test", "validation"))}
