"""Object detection datasets: box manifests, their preparers (COCO, PASCAL VOC) and layout checks.

A detection manifest is the counterpart of the classification and segmentation manifests: a TSV
after ``# kdflow det manifest 1`` and the header lines ``# dataset=``, ``# image_base=`` and
``# classes=`` (comma-separated, index = class index), one row per image: ``image`` (relative to
the image base), ``image_bytes``, ``width``, ``height``, ``image_id`` and ``boxes``, a JSON list of
``[x, y, w, h, class, flag]`` in pixels (COCO's box convention: x, y of the top-left corner).
``flag`` is 0 for an object, 1 for a COCO crowd region and 2 for a VOC "difficult" object.

What the flags mean downstream (kdflow.transfer.detection): crowd regions are never training
targets; difficult objects are (as detectron2 trains on VOC), and both are ignore regions at
evaluation (a detection on them is neither a true nor a false positive), as COCO's and VOC's own
evaluations treat them. :func:`to_coco` turns a manifest into a COCO ``instances`` dict, the
ground truth pycocotools evaluates against.

Formats (each preparer reads the layout as distributed and writes only under the work folder):

- ``coco``: ``<root>/annotations/instances_<split>.json`` with images in ``<root>/<split>/``,
  splits from ``train_split``/``val_split`` (COCO 2017: ``train2017``, ``val2017``). Categories
  keep COCO's id order (80 classes in 2017); images without annotations are kept (the evaluation
  counts them; training skips them).
- ``voc``: PASCAL VOC 07+12 as distributed, ``root`` = the ``VOCdevkit`` folder: training =
  VOC2007 trainval + VOC2012 trainval (16551 images), test = VOC2007 test (4952), the 20 classes.
  Each image's XML (``Annotations/<id>.xml``) is converted once into the manifest; the test split
  is also written as a COCO json (``<work>/voc07_test_instances.json``) for other tools. VOC's
  1-based inclusive pixel boxes become ``x = xmin - 1``, ``w = xmax - xmin + 1`` (detectron2's
  conversion), so IoUs agree with VOC's own evaluation.

Torch-free at import: kdflow.config imports the layout checks.
"""

from __future__ import annotations

import csv
import io
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from kdflow.data.imagefolder import BASES, DatasetError, SampleList, dataset_bases, read_manifest_lines
from kdflow.data.prepare import preparer
from kdflow.io import write_json, write_text

FORMAT_LINE = "# kdflow det manifest 1"
COLUMNS = ["image", "image_bytes", "width", "height", "image_id", "boxes"]
HEADER_KEYS = ("dataset", "image_base", "classes")
DETECTION_FORMATS = ("coco", "voc")
OBJECT, CROWD, DIFFICULT = 0, 1, 2
SHOWN = 5

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
VOC_TRAIN = (("VOC2007", "trainval"), ("VOC2012", "trainval"))
VOC_TEST = (("VOC2007", "test"),)


@dataclass(frozen=True)
class DetSample:
    image: str  # relative to the manifest's image root
    width: int
    height: int
    image_id: int
    boxes: tuple = ()  # ((x, y, w, h, class, flag), ...)
    image_bytes: int | None = None


@dataclass
class DetManifest(SampleList):
    image_root: Path
    samples: list[DetSample]
    classes: list[str]
    image_base: str = "root"
    dataset: str | None = field(default=None, compare=False)

    def path(self, sample: DetSample) -> str:
        return str(Path(self.image_root).absolute() / sample.image)


# ----------------------------------------------------------------------------------- manifests
def write_det_manifest(path: str | Path, manifest: DetManifest, dataset: str) -> None:
    """Write ``manifest`` of ``dataset`` with every image's size in bytes (read from its root), atomically."""
    from kdflow.data.segmentation import check_class_names

    if manifest.image_base not in BASES:
        raise ValueError(f"manifest image base {manifest.image_base!r} is not one of {BASES}")
    check_class_names(manifest.classes, f"detection manifest {path} of dataset {dataset!r}")
    buf = io.StringIO()
    buf.write(f"{FORMAT_LINE}\n# dataset={dataset}\n# image_base={manifest.image_base}\n"
              f"# classes={','.join(manifest.classes)}\n")
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    for s in manifest.samples:
        size = s.image_bytes if s.image_bytes is not None else _size(Path(manifest.image_root) / s.image)
        boxes = json.dumps([[round(float(v), 3) for v in b[:4]] + [int(b[4]), int(b[5])] for b in s.boxes],
                           separators=(",", ":"))
        writer.writerow([s.image, size, s.width, s.height, s.image_id, boxes])
    write_text(path, buf.getvalue())


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc


def read_det_manifest(path: str | Path, dataset: Mapping) -> DetManifest:
    """Read a detection manifest, resolving its image base from ``dataset`` (a resolved entry)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"detection manifest not found: {path}")
    header, rows = read_manifest_lines(path, FORMAT_LINE, lambda first: (
        f"{path} is not a kdflow detection manifest: its first line is {first!r}, expected {FORMAT_LINE!r}"))
    missing = [f"{key}=" for key in HEADER_KEYS if key not in header]
    if missing:
        raise DatasetError(f"{path}: a kdflow detection manifest needs the header lines {', '.join(missing)}")
    if header["dataset"] != dataset["name"]:
        raise DatasetError(f"{path} lists dataset {header['dataset']!r}, read as dataset {dataset['name']!r}")
    if header["image_base"] not in BASES:
        raise DatasetError(f"{path}: image_base={header['image_base']} is not one of {', '.join(BASES)}")
    reader = csv.reader(rows, delimiter="\t")
    if next(reader, None) != COLUMNS:
        raise DatasetError(f"{path}: expected the column line {' '.join(COLUMNS)} (tab-separated) after the header")
    classes = header["classes"].split(",")
    samples = []
    for number, row in enumerate(reader, start=1):
        if not row:
            continue
        try:
            image, size, width, height, image_id, boxes = row
            boxes = tuple(tuple(b) for b in json.loads(boxes))
            sample = DetSample(image=image, image_bytes=int(size), width=int(width), height=int(height),
                               image_id=int(image_id), boxes=boxes)
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"{path}: image {number} {row[:1]} is not image, bytes, width, height, id and a "
                               f"JSON box list ({exc})") from None
        bad = [b for b in boxes if len(b) != 6 or not 0 <= int(b[4]) < len(classes)]
        if bad:
            raise DatasetError(f"{path}: image {image} has boxes {bad[:3]} that are not [x, y, w, h, class, flag] "
                               f"with a class in 0..{len(classes) - 1}")
        samples.append(sample)
    return DetManifest(image_root=dataset_bases(dataset)[header["image_base"]], samples=samples, classes=classes,
                       image_base=header["image_base"], dataset=header["dataset"])


def to_coco(manifest: DetManifest) -> dict:
    """A COCO ``instances`` dict of the manifest: category ids 1..K in class order, crowd and
    difficult boxes as ``iscrowd`` (ignore) regions, ``difficult`` kept as its own field."""
    images, annotations = [], []
    for s in manifest.samples:
        images.append({"id": s.image_id, "file_name": s.image, "width": s.width, "height": s.height})
        for x, y, w, h, cls, flag in s.boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": s.image_id, "category_id": int(cls) + 1,
                                "bbox": [x, y, w, h], "area": float(w) * float(h),
                                "iscrowd": int(flag != OBJECT), "difficult": int(flag == DIFFICULT)})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(manifest.classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


# ----------------------------------------------------------------------------------- layout checks
def _layout(entry: Mapping) -> list[tuple[str, str]]:
    fmt = entry["format"]
    if fmt == "coco":
        splits = (entry.get("train_split", "train"), entry.get("val_split", "val"))
        return [item for split in splits
                for item in ((f"annotations/instances_{split}.json", "file"), (split, "folder"))]
    if fmt == "voc":
        needed = []
        for year, image_set in (*VOC_TRAIN, *VOC_TEST):
            needed += [(f"{year}/ImageSets/Main/{image_set}.txt", "file"), (f"{year}/Annotations", "folder"),
                       (f"{year}/JPEGImages", "folder")]
        return list(dict.fromkeys(needed))
    raise ValueError(f"{fmt!r} is not a detection format ({', '.join(DETECTION_FORMATS)})")


def det_layout_problems(entry: Mapping, name: str) -> list[str]:
    """The annotation files and folders a detection format needs that are missing (cheap: nothing
    is listed or parsed), each naming the config key and the path."""
    if "root" not in entry:
        return []
    where, root = f"config.datasets.{name}.root", Path(entry["root"])
    if not root.is_dir():
        return [f"{where}: folder {root} does not exist"]
    return [f"{where}: {kind} {root / rel} does not exist" for rel, kind in _layout(entry)
            if not ((root / rel).is_dir() if kind == "folder" else (root / rel).is_file())]


def _require_images(root: Path, samples: list[DetSample], what: str) -> None:
    missing = [str(root / s.image) for s in samples if not (root / s.image).is_file()]
    if missing:
        raise DatasetError(f"{what}: {len(missing)} image(s) missing, e.g. {', '.join(missing[:SHOWN])}")


# ----------------------------------------------------------------------------------- COCO
def read_coco_split(root: Path, split: str, what: str) -> DetManifest:
    """One split of a COCO-layout dataset: ``annotations/instances_<split>.json`` + ``<split>/``."""
    path = root / "annotations" / f"instances_{split}.json"
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{what}: cannot read {path}: {exc}") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{what}: {path} has no {key!r} list (a COCO instances file has images, "
                               "annotations and categories)")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    index = {c["id"]: k for k, c in enumerate(categories)}
    boxes: dict[int, list] = {}
    for ann in data["annotations"]:
        if ann["category_id"] not in index:
            raise DatasetError(f"{what}: {path}: annotation {ann.get('id')} has category_id {ann['category_id']}, "
                               "which is not among the file's categories")
        x, y, w, h = ann["bbox"]
        flag = CROWD if ann.get("iscrowd") else OBJECT
        boxes.setdefault(ann["image_id"], []).append((x, y, w, h, index[ann["category_id"]], flag))
    samples = [DetSample(image=f"{split}/{img['file_name']}", width=int(img["width"]), height=int(img["height"]),
                         image_id=int(img["id"]), boxes=tuple(boxes.get(img["id"], ())))
               for img in sorted(data["images"], key=lambda i: i["id"])]
    if not samples:
        raise DatasetError(f"{what}: {path} lists no images")
    _require_images(root, samples, what)
    return DetManifest(image_root=root, samples=samples, classes=[c["name"].strip() for c in categories])


@preparer("coco")
def coco_layout(dataset: dict, work_dir: Path) -> dict[str, DetManifest]:
    root, name = Path(dataset["root"]), dataset["name"]
    manifests = {split: read_coco_split(root, dataset[key], f"COCO dataset {name!r} split {dataset[key]!r}")
                 for split, key in (("train", "train_split"), ("test", "val_split"))}
    if manifests["train"].classes != manifests["test"].classes:
        raise DatasetError(f"COCO dataset {name!r}: the train and val annotation files list different categories")
    return manifests


# ----------------------------------------------------------------------------------- PASCAL VOC
def read_voc_xml(path: Path, classes: tuple[str, ...] = VOC_CLASSES) -> tuple[int, int, tuple]:
    """(width, height, boxes) of one VOC annotation file; boxes as the manifest's."""
    try:
        tree = ET.parse(path).getroot()
        size = tree.find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))
        boxes = []
        for obj in tree.findall("object"):
            label = (obj.findtext("name") or "").strip()
            if label not in classes:
                raise DatasetError(f"{path}: object class {label!r} is not one of VOC's classes")
            box = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            flag = DIFFICULT if int(obj.findtext("difficult") or 0) else OBJECT
            boxes.append((xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1, classes.index(label), flag))
    except (OSError, ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"cannot read VOC annotation {path} (size/width, size/height and object/bndbox "
                           f"xmin..ymax): {type(exc).__name__}: {exc}") from exc
    return width, height, tuple(boxes)


def read_voc_sets(root: Path, sets, what: str, first_id: int = 1) -> DetManifest:
    """The images of ``sets`` ((year folder, image set), ...) with their converted XML boxes."""
    samples = []
    for year, image_set in sets:
        ids_path = root / year / "ImageSets" / "Main" / f"{image_set}.txt"
        if not ids_path.is_file():
            raise DatasetError(f"{what}: expected the image list {ids_path}")
        ids = [line.split()[0] for line in ids_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        missing = [str(root / year / "Annotations" / f"{i}.xml") for i in ids
                   if not (root / year / "Annotations" / f"{i}.xml").is_file()]
        if missing:
            raise DatasetError(f"{what}: {len(missing)} annotation file(s) listed in {ids_path} are missing, "
                               f"e.g. {', '.join(missing[:SHOWN])}")
        for i in ids:
            width, height, boxes = read_voc_xml(root / year / "Annotations" / f"{i}.xml")
            samples.append(DetSample(image=f"{year}/JPEGImages/{i}.jpg", width=width, height=height,
                                     image_id=first_id + len(samples), boxes=boxes))
    _require_images(root, samples, what)
    return DetManifest(image_root=root, samples=samples, classes=list(VOC_CLASSES))


@preparer("voc")
def voc_layout(dataset: dict, work_dir: Path) -> dict[str, DetManifest]:
    root, name = Path(dataset["root"]), dataset["name"]
    manifests = {"train": read_voc_sets(root, VOC_TRAIN, f"VOC dataset {name!r} (07+12 trainval)"),
                 "test": read_voc_sets(root, VOC_TEST, f"VOC dataset {name!r} (07 test)")}
    write_json(Path(work_dir) / "voc07_test_instances.json", to_coco(manifests["test"]))
    return manifests
