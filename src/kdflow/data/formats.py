"""Preparers for the datasets of KDEP's protocols, as their authors distribute them.

Each reads the original layout (never modifying it) and returns ``train``/``test`` manifests;
anything derived (decoded images) goes to the dataset's work folder. Every check
names the file or folder it expected.

- ``imagenet``: ``train/<wnid>/*.JPEG`` as distributed; ``val/`` either already in class folders
  or flat, labelled (in the manifest; nothing is moved or linked) from a ground-truth file: the official devkit
  (``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt``, whose ILSVRC2012_IDs
  are mapped to wnids by the devkit's ``meta.mat``), Kaggle's ``LOC_val_solution.csv``, or a list
  with one wnid per line in file-name order (``imagenet_2012_validation_synset_labels.txt``).
- ``cifar100``: the python-version archive (``cifar-100-python.tar.gz`` or its extracted folder),
  decoded to PNG files in the dataset's work folder (manifest base ``work``); class index = CIFAR's
  fine label.
- ``dtd``: split 1, train = ``train1.txt`` + ``val1.txt``, test = ``test1.txt``.
- ``caltech256``: 257 classes (clutter included); the first 60 images of each class in index
  order (file number) train, the rest test.
- ``cub200``: the official split from ``train_test_split.txt``.
"""

from __future__ import annotations

import csv
import pickle
import re
import tarfile
from pathlib import Path

from kdflow.data.imagefolder import IMAGE_SUFFIXES, DatasetError, Manifest, Sample, list_split, split_manifest
from kdflow.data.prepare import preparer

DEVKIT_GROUND_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
IMAGENET_VAL_LABEL_FILES = (DEVKIT_GROUND_TRUTH, "LOC_val_solution.csv", "imagenet_2012_validation_synset_labels.txt")
CALTECH_TRAIN_PER_CLASS = 60


def manifest_from_pairs(root: Path, pairs: list[tuple[str, str]], classes: list[str], what: str,
                        base: str = "root") -> Manifest:
    """A manifest from (relative path, class) pairs with a given class order."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for _, c in pairs if c not in index})
    if unknown:
        raise DatasetError(f"{what}: classes not in the class list: {', '.join(unknown[:10])}")
    samples = [Sample(path=p, cls=c, index=index[c]) for p, c in pairs]
    return Manifest(root=Path(root), samples=samples, classes=list(classes), base=base)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{what}: expected {path}")
    return path


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ ImageNet
@preparer("imagenet")
def imagenet(dataset: dict, work_dir: Path) -> dict[str, Manifest]:
    root = Path(dataset["root"])
    train = split_manifest(root, "train")
    val_dir = _require(root / "val", f"ImageNet {dataset['name']!r} validation folder")
    if any(p.is_dir() for p in val_dir.iterdir()):
        test = split_manifest(root, "val")
    else:  # flat: each file labelled from the ground truth, read in place
        labels = _val_labels(dataset, root, val_dir)
        pairs = [(f"val/{name}", wnid) for name, wnid in sorted(labels.items(), key=lambda item: (item[1], item[0]))]
        test = manifest_from_pairs(root, pairs, train.classes, f"ImageNet val labels of {dataset['name']!r}")
    return {"train": train, "test": test}


def _val_labels(dataset: dict, root: Path, val_dir: Path) -> dict[str, str]:
    """{val file name: wnid} from the configured or a known ground-truth file."""
    candidates = [Path(dataset["val_labels"])] if dataset.get("val_labels") else [root / n for n in IMAGENET_VAL_LABEL_FILES]
    label_file = next((p for p in candidates if p.is_file()), None)
    if label_file is None:
        raise DatasetError(
            f"ImageNet {dataset['name']!r}: {val_dir} is flat and no ground-truth file was found "
            f"(looked for {', '.join(map(str, candidates))}); set datasets.{dataset['name']}.val_labels")
    files = sorted(p.name for p in val_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if label_file.suffix == ".csv":  # Kaggle: ImageId,PredictionString ("<wnid> x y x y ...")
        with open(label_file, newline="") as fh:
            by_id = {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(fh)}
        labels = {}
        for name in files:
            if Path(name).stem not in by_id:
                raise DatasetError(f"{label_file}: no label for {val_dir / name}")
            labels[name] = by_id[Path(name).stem]
        return labels
    if label_file.name == Path(DEVKIT_GROUND_TRUTH).name:
        id_to_wnid = _devkit_wnids(_require(label_file.parent / "meta.mat", "ImageNet devkit"))
        wnids = [id_to_wnid[int(i)] for i in _lines(label_file)]  # ILSVRC2012_IDs, file-name order
    else:
        wnids = _lines(label_file)  # one wnid per line, in file-name order
    if len(wnids) != len(files):
        raise DatasetError(f"{label_file}: {len(wnids)} labels for {len(files)} images in {val_dir}")
    return dict(zip(files, wnids))


def _devkit_wnids(meta_path: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the 1000 leaf synsets (those without children) in ``meta.mat``."""
    from scipy.io import loadmat

    synsets = loadmat(str(meta_path), squeeze_me=True)["synsets"]
    return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}


# ------------------------------------------------------------------------------------ CIFAR-100
@preparer("cifar100")
def cifar100(dataset: dict, work_dir: Path) -> dict[str, Manifest]:
    from PIL import Image
    import numpy as np

    folder = _cifar_folder(Path(dataset["root"]), work_dir)
    meta = _unpickle(_require(folder / "meta", "CIFAR-100 python version"))
    classes = [c.decode() for c in meta[b"fine_label_names"]]
    manifests = {}
    for split in ("train", "test"):
        batch = _unpickle(_require(folder / split, "CIFAR-100 python version"))
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        pairs = []
        for k, (pixels, label, name) in enumerate(zip(data, batch[b"fine_labels"], batch[b"filenames"])):
            rel = f"images/{split}/{classes[label]}/{k:05d}_{Path(name.decode()).stem}.png"
            path = work_dir / rel
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
            pairs.append((rel, classes[label]))
        manifests[split] = manifest_from_pairs(work_dir, pairs, classes, f"CIFAR-100 {split}", base="work")
    return manifests


def _cifar_folder(root: Path, work_dir: Path) -> Path:
    if (root / "meta").is_file():
        return root
    if (root / "cifar-100-python" / "meta").is_file():
        return root / "cifar-100-python"
    archive = root / "cifar-100-python.tar.gz"
    if archive.is_file():
        with tarfile.open(archive) as tar:
            tar.extractall(work_dir, filter="data")
        return work_dir / "cifar-100-python"
    raise DatasetError(f"CIFAR-100: expected {archive} or its extracted folder cifar-100-python/ under {root}")


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="bytes")  # CIFAR's own format: a pickled dict of arrays


# ------------------------------------------------------------------------------------ DTD
@preparer("dtd")
def dtd(dataset: dict, work_dir: Path) -> dict[str, Manifest]:
    root = Path(dataset["root"])
    images = _require(root / "images", "DTD")
    classes = sorted(p.name for p in images.iterdir() if p.is_dir())
    split_files = {"train": ["train1.txt", "val1.txt"], "test": ["test1.txt"]}
    manifests = {}
    for split, names in split_files.items():
        pairs = []
        for name in names:
            for rel in _lines(_require(root / "labels" / name, "DTD split 1")):
                _require(images / rel, f"DTD {name}")
                pairs.append((f"images/{rel}", rel.split("/")[0]))
        manifests[split] = manifest_from_pairs(root, pairs, classes, f"DTD {split}")
    return manifests


# ------------------------------------------------------------------------------------ Caltech-256
@preparer("caltech256")
def caltech256(dataset: dict, work_dir: Path) -> dict[str, Manifest]:
    root = Path(dataset["root"])
    base = root / "256_ObjectCategories" if (root / "256_ObjectCategories").is_dir() else root
    listing = list_split(base, "Caltech-256 categories")
    if len(listing) != 257:
        raise DatasetError(f"Caltech-256: {base} has {len(listing)} category folders, expected 257")
    prefix = base.relative_to(root).as_posix()
    pairs = {"train": [], "test": []}
    for cls, files in listing.items():
        for k, name in enumerate(sorted(files, key=_file_number)):
            split = "train" if k < CALTECH_TRAIN_PER_CLASS else "test"
            rel = f"{cls}/{name}" if prefix == "." else f"{prefix}/{cls}/{name}"
            pairs[split].append((rel, cls))
    classes = sorted(listing)
    return {split: manifest_from_pairs(root, p, classes, f"Caltech-256 {split}") for split, p in pairs.items()}


def _file_number(name: str) -> tuple[int, str]:
    match = re.match(r"\d+_(\d+)", name)  # 001_0001.jpg: category 001, image 0001
    return (int(match.group(1)) if match else 1 << 30, name)


# ------------------------------------------------------------------------------------ CUB-200-2011
@preparer("cub200")
def cub200(dataset: dict, work_dir: Path) -> dict[str, Manifest]:
    root = Path(dataset["root"])
    images = dict(line.split(maxsplit=1) for line in _lines(_require(root / "images.txt", "CUB-200-2011")))
    is_train = dict(line.split() for line in _lines(_require(root / "train_test_split.txt", "CUB-200-2011")))
    class_of = dict(line.split() for line in _lines(_require(root / "image_class_labels.txt", "CUB-200-2011")))
    class_names = dict(line.split(maxsplit=1) for line in _lines(_require(root / "classes.txt", "CUB-200-2011")))
    classes = [class_names[k] for k in sorted(class_names, key=int)]
    pairs = {"train": [], "test": []}
    for image_id in sorted(images, key=int):
        rel = images[image_id]
        _require(root / "images" / rel, f"CUB-200-2011 image {image_id}")
        split = "train" if is_train[image_id] == "1" else "test"
        pairs[split].append((f"images/{rel}", class_names[class_of[image_id]]))
    return {split: manifest_from_pairs(root, p, classes, f"CUB-200-2011 {split}") for split, p in pairs.items()}
