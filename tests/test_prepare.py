"""Dataset preparation on tiny fake copies of each original layout (the right names and index
files, a few real images): the manifests follow each dataset's official split."""

from __future__ import annotations

import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from kdflow.data.imagefolder import DatasetError, ManifestDataset
from kdflow.data.prepare import prepare


def _jpeg(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _entry(name, root, fmt, **extra):
    return {"name": name, "root": str(root), "format": fmt, "train_split": "train", "val_split": "val", **extra}


def _pairs(manifest):
    return [(s.path, s.cls, s.index) for s in manifest.samples]


@pytest.mark.parametrize("label_file", ["LOC_val_solution.csv", "imagenet_2012_validation_synset_labels.txt"])
def test_imagenet_flat_val_is_labelled_in_place(tmp_path, label_file):
    root = tmp_path / "imagenet"
    for wnid in ("n01440764", "n01443537"):
        for k in range(2):
            _jpeg(root / "train" / wnid / f"{wnid}_{k}.JPEG")
    truth = {"ILSVRC2012_val_00000001": "n01443537", "ILSVRC2012_val_00000002": "n01440764",
             "ILSVRC2012_val_00000003": "n01443537"}
    for stem in truth:
        _jpeg(root / "val" / f"{stem}.JPEG")
    if label_file.endswith(".csv"):
        rows = [f"{stem},{wnid} 10 20 30 40" for stem, wnid in truth.items()]
        (root / label_file).write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    else:
        (root / label_file).write_text("\n".join(truth[s] for s in sorted(truth)) + "\n")
    before = sorted(p.name for p in (root / "val").iterdir())

    out = prepare(_entry("in1k", root, "imagenet"), tmp_path / "work")
    assert out["train"].classes == ["n01440764", "n01443537"] and len(out["train"]) == 4
    assert _pairs(out["test"]) == [  # relative to the dataset's root: the manifest holds no folder of its own
        ("val/ILSVRC2012_val_00000002.JPEG", "n01440764", 0),
        ("val/ILSVRC2012_val_00000001.JPEG", "n01443537", 1),
        ("val/ILSVRC2012_val_00000003.JPEG", "n01443537", 1),
    ]
    assert out["test"].base == "root" and not (tmp_path / "work").exists()  # nothing linked or copied
    assert sorted(p.name for p in (root / "val").iterdir()) == before  # the original stays untouched
    image, label = ManifestDataset(out["test"])[2]
    assert label == 1 and image.size == (8, 8)


def test_imagenet_devkit_ground_truth_goes_through_meta_mat(tmp_path):
    """The devkit's IDs are not in wnid order (ID 1 is not the first wnid): meta.mat maps them."""
    from scipy.io import savemat

    root = tmp_path / "imagenet"
    for wnid in ("n01440764", "n02119789"):
        _jpeg(root / "train" / wnid / f"{wnid}_0.JPEG")
    for k in (1, 2, 3):
        _jpeg(root / "val" / f"ILSVRC2012_val_{k:08d}.JPEG")
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    synsets = np.array([(1, "n02119789", "kit fox", 0), (2, "n01440764", "tench", 0), (1001, "n00001740", "entity", 5)],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("2\n1\n1\n")

    out = prepare(_entry("in1k", root, "imagenet"), tmp_path / "work")
    assert [(s.path.split("/")[-1], s.cls) for s in out["test"].samples] == [
        ("ILSVRC2012_val_00000001.JPEG", "n01440764"),
        ("ILSVRC2012_val_00000002.JPEG", "n02119789"),
        ("ILSVRC2012_val_00000003.JPEG", "n02119789"),
    ]


def test_imagenet_flat_val_without_labels_says_what_it_looked_for(tmp_path):
    root = tmp_path / "imagenet"
    _jpeg(root / "train" / "n01" / "a.JPEG")
    _jpeg(root / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DatasetError, match="is flat and no ground-truth file was found .*LOC_val_solution.csv"):
        prepare(_entry("in1k", root, "imagenet"), tmp_path / "work")


def _cifar_batch(n, labels):
    rng = np.random.default_rng(n)
    return {b"data": rng.integers(0, 255, size=(n, 3072), dtype=np.uint8), b"fine_labels": labels,
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def test_cifar100_python_archive(tmp_path):
    src = tmp_path / "src" / "cifar-100-python"
    src.mkdir(parents=True)
    names = [b"apple", b"aquarium_fish", b"baby"]
    for fname, obj in {"meta": {b"fine_label_names": names},
                       "train": _cifar_batch(5, [0, 2, 2, 1, 0]), "test": _cifar_batch(3, [1, 0, 2])}.items():
        with open(src / fname, "wb") as fh:
            pickle.dump(obj, fh)
    root = tmp_path / "cifar"
    root.mkdir()
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar-100-python")

    out = prepare(_entry("c100", root, "cifar100"), tmp_path / "work")
    assert out["train"].classes == ["apple", "aquarium_fish", "baby"]
    assert [s.index for s in out["train"].samples] == [0, 2, 2, 1, 0]
    assert [s.cls for s in out["test"].samples] == ["aquarium_fish", "apple", "baby"]
    image, label = ManifestDataset(out["train"])[1]
    expected = _cifar_batch(5, [0])[b"data"][1].reshape(3, 32, 32).transpose(1, 2, 0)
    assert label == 2 and np.array_equal(np.asarray(image), expected)  # lossless, channel order kept


def test_dtd_split_one(tmp_path):
    root = tmp_path / "dtd"
    files = {"banded": ["banded_0001.jpg", "banded_0002.jpg", "banded_0003.jpg"],
             "zigzagged": ["zigzagged_0001.jpg", "zigzagged_0002.jpg", "zigzagged_0003.jpg"]}
    for cls, names in files.items():
        for name in names:
            _jpeg(root / "images" / cls / name)
    (root / "labels").mkdir()
    (root / "labels" / "train1.txt").write_text("banded/banded_0001.jpg\nzigzagged/zigzagged_0002.jpg\n")
    (root / "labels" / "val1.txt").write_text("banded/banded_0003.jpg\n")
    (root / "labels" / "test1.txt").write_text("banded/banded_0002.jpg\nzigzagged/zigzagged_0001.jpg\n")
    (root / "labels" / "train2.txt").write_text("zigzagged/zigzagged_0003.jpg\n")  # another split: ignored

    out = prepare(_entry("dtd", root, "dtd"), tmp_path / "work")
    assert [s.path for s in out["train"].samples] == [
        "images/banded/banded_0001.jpg", "images/zigzagged/zigzagged_0002.jpg", "images/banded/banded_0003.jpg"]
    assert [(s.cls, s.index) for s in out["test"].samples] == [("banded", 0), ("zigzagged", 1)]


def test_caltech256_first_60_per_class_in_index_order(tmp_path):
    base = tmp_path / "caltech" / "256_ObjectCategories"
    for c in range(1, 258):
        name = f"{c:03d}.clutter" if c == 257 else f"{c:03d}.cat{c}"
        count = 62 if c in (1, 257) else 1
        for i in range(1, count + 1):
            (base / name).mkdir(parents=True, exist_ok=True)
            (base / name / f"{c:03d}_{i:04d}.jpg").write_bytes(b"")  # contents are not read here
    (base / "001.cat1" / "notes.txt").write_text("not an image")

    out = prepare(_entry("c256", tmp_path / "caltech", "caltech256"), tmp_path / "work")
    train, test = out["train"], out["test"]
    assert train.num_classes == 257 and train.classes[-1] == "257.clutter"
    first = [s.path for s in train.samples if s.cls == "001.cat1"]
    assert len(first) == 60 and first[0].endswith("001_0001.jpg") and first[-1].endswith("001_0060.jpg")
    assert [s.path for s in test.samples if s.cls == "001.cat1"] == [
        "256_ObjectCategories/001.cat1/001_0061.jpg", "256_ObjectCategories/001.cat1/001_0062.jpg"]
    assert len(train) == 60 * 2 + 255 and len(test) == 4


def test_caltech256_needs_257_classes(tmp_path):
    (tmp_path / "c" / "001.a").mkdir(parents=True)
    (tmp_path / "c" / "001.a" / "001_0001.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="has 1 category folders, expected 257"):
        prepare(_entry("c256", tmp_path / "c", "caltech256"), tmp_path / "work")


def test_cub200_official_split(tmp_path):
    root = tmp_path / "CUB_200_2011"
    images = {1: "001.Black_footed_Albatross/a_1.jpg", 2: "001.Black_footed_Albatross/a_2.jpg",
              3: "002.Laysan_Albatross/b_1.jpg", 4: "002.Laysan_Albatross/b_2.jpg"}
    for k, rel in images.items():
        _jpeg(root / "images" / rel, seed=k)
    (root / "images.txt").write_text("".join(f"{k} {rel}\n" for k, rel in images.items()))
    (root / "train_test_split.txt").write_text("1 1\n2 0\n3 0\n4 1\n")
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n4 2\n")
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")

    out = prepare(_entry("cub", root, "cub200"), tmp_path / "work")
    assert _pairs(out["train"]) == [("images/001.Black_footed_Albatross/a_1.jpg", "001.Black_footed_Albatross", 0),
                                    ("images/002.Laysan_Albatross/b_2.jpg", "002.Laysan_Albatross", 1)]
    assert [s.index for s in out["test"].samples] == [0, 1]


def test_cub200_missing_index_file_is_named(tmp_path):
    (tmp_path / "CUB_200_2011").mkdir()
    with pytest.raises(DatasetError, match=r"CUB-200-2011: expected .*CUB_200_2011/images.txt"):
        prepare(_entry("cub", tmp_path / "CUB_200_2011", "cub200"), tmp_path / "work")
