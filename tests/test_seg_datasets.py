"""Segmentation datasets on tiny hand-made copies of each original layout (the right names and
index files, a few 8x8 images): manifests with the official splits and mask values, nothing
written under the user's folders, layout checks naming the missing path, and the demo scenes."""

from __future__ import annotations

import copy
import os
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from kdflow.config import ConfigError, check_dataset_roots, is_placeholder, validate_config
from kdflow.data import demo
from kdflow.data.imagefolder import DatasetError, Manifest, Sample, write_manifest
from kdflow.data.prepare import prepare
from kdflow.data.segmentation import (CITYSCAPES_CLASSES, VOC_CLASSES, SegManifest, SegSample, is_seg_manifest,
                                      read_seg_manifest, seg_layout_problems, write_seg_manifest)

SIZE = 8


def _image(path, seed=0, size=(SIZE, SIZE)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _mask(path, values, palette=False):
    """A single-channel PNG of ``values``; ``palette``: a P-mode PNG whose colours differ from its indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(values, dtype=np.uint8))
    if palette:
        img.putpalette([(7 * i + 40) % 256 for i in range(256 * 3)])
    img.save(path)
    return path


def _values(*row_values):
    """An 8x8 mask whose rows cycle through ``row_values``."""
    return np.array([[row_values[r % len(row_values)]] * SIZE for r in range(SIZE)], dtype=np.uint8)


def _read(path):
    return np.asarray(Image.open(path))


def _entry(name, root, fmt, work, **extra):
    return {"name": name, "root": str(root), "format": fmt, "work_dir": str(work), **extra}


def _listing(*folders):
    """Every file under ``folders`` with its size and modification time."""
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                  for folder in folders for p in folder.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------- mmseg layout
def _mmseg_tree(root, train=3, val=2):
    (root).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    for split, n in (("train", train), ("val", val)):
        for k in range(n):
            _image(root / "img_dir" / split / f"{k:03d}.jpg", seed=k)
            _mask(root / "ann_dir" / split / f"{k:03d}.png", _values(0, 1, 2, k % 3))
    return root


def test_mmseg_layout_prepares_in_place(tmp_path):
    root = _mmseg_tree(tmp_path / "toy")
    before = _listing(root)
    out = prepare(_entry("toy", root, "mmseg", tmp_path / "work"), tmp_path / "work")
    train, test = out["train"], out["test"]
    assert isinstance(train, SegManifest) and (len(train), len(test)) == (3, 2)
    assert train.classes == ["background", "cat", "dog"] and train.num_classes == 3
    assert (train.image_base, train.mask_base, train.reduce_zero_label, train.ignore_index) == ("root", "root", False, 255)
    assert [(s.image, s.mask) for s in test.samples] == [("img_dir/val/000.jpg", "ann_dir/val/000.png"),
                                                         ("img_dir/val/001.jpg", "ann_dir/val/001.png")]
    assert test.pairs()[1] == (str(root / "img_dir/val/001.jpg"), str(root / "ann_dir/val/001.png"))
    assert _listing(root) == before and not (tmp_path / "work").exists()  # nothing derived, nothing written


def test_mmseg_custom_splits(tmp_path):
    root = _mmseg_tree(tmp_path / "toy")
    shutil.copytree(root / "img_dir" / "val", root / "img_dir" / "test")
    shutil.copytree(root / "ann_dir" / "val", root / "ann_dir" / "test")
    out = prepare(_entry("toy", root, "mmseg", tmp_path / "work", train_split="val", val_split="test"), tmp_path / "w")
    assert [s.image for s in out["train"].samples] == ["img_dir/val/000.jpg", "img_dir/val/001.jpg"]
    assert [s.image for s in out["test"].samples] == ["img_dir/test/000.jpg", "img_dir/test/001.jpg"]


def test_mmseg_image_without_mask_is_named(tmp_path):
    root = _mmseg_tree(tmp_path / "toy")
    (root / "ann_dir" / "train" / "001.png").unlink()
    with pytest.raises(DatasetError) as err:
        prepare(_entry("toy", root, "mmseg", tmp_path / "work"), tmp_path / "work")
    assert f"{root / 'img_dir/train/001.jpg'} (expected {root / 'ann_dir/train/001.png'})" in str(err.value)
    assert "1 image(s) without a mask" in str(err.value)


def test_mmseg_mask_without_image_is_named(tmp_path):
    root = _mmseg_tree(tmp_path / "toy")
    (root / "img_dir" / "val" / "000.jpg").unlink()
    with pytest.raises(DatasetError, match=f"mask\\(s\\) without an image .*{root / 'ann_dir/val/000.png'}"):
        prepare(_entry("toy", root, "mmseg", tmp_path / "work"), tmp_path / "work")


def test_corrupt_mask_is_named(tmp_path):
    root = _mmseg_tree(tmp_path / "toy")
    bad = root / "ann_dir" / "train" / "002.png"
    bad.write_bytes(b"this is no PNG at all")
    with pytest.raises(DatasetError, match=f"cannot read mask {bad}"):
        prepare(_entry("toy", root, "mmseg", tmp_path / "work"), tmp_path / "work")


def test_mask_of_another_size_or_in_colour_is_named(tmp_path):
    root = _mmseg_tree(tmp_path / "toy")
    small = _mask(root / "ann_dir" / "val" / "001.png", np.zeros((4, 4)))
    with pytest.raises(DatasetError, match=f"mask {small} is 4x4 but its image .*001.jpg is 8x8"):
        prepare(_entry("toy", root, "mmseg", tmp_path / "work"), tmp_path / "work")
    _image(small, size=(SIZE, SIZE))  # an RGB mask: colours, not class indices
    with pytest.raises(DatasetError, match=f"mask {small} has mode RGB"):
        prepare(_entry("toy", root, "mmseg", tmp_path / "work"), tmp_path / "work")


def test_class_list_without_gaps_or_commas(tmp_path):
    root = _mmseg_tree(tmp_path / "toy")
    (root / "classes.txt").write_text("background\n\ncat\n")
    with pytest.raises(DatasetError, match="classes.txt: line 2 is empty"):
        prepare(_entry("toy", root, "mmseg", tmp_path / "work"), tmp_path / "work")
    (root / "classes.txt").write_text("background\ncat, tabby\n")
    with pytest.raises(DatasetError, match="classes.txt: class 1 'cat, tabby' must be .*without commas"):
        prepare(_entry("toy", root, "mmseg", tmp_path / "work"), tmp_path / "work")


# ----------------------------------------------------------------------------------- manifest file
def test_manifest_round_trip_follows_a_moved_root(tmp_path):
    root = _mmseg_tree(tmp_path / "toy")
    entry = _entry("toy", root, "mmseg", tmp_path / "work")
    prepared = prepare(entry, entry["work_dir"])
    write_seg_manifest(tmp_path / "train.tsv", prepared["train"], "toy")
    assert is_seg_manifest(tmp_path / "train.tsv")
    read = read_seg_manifest(tmp_path / "train.tsv", entry)
    assert read.samples[0].image_bytes == (root / "img_dir/train/000.jpg").stat().st_size
    assert read.samples[0].mask_bytes == (root / "ann_dir/train/000.png").stat().st_size
    assert [(s.image, s.mask) for s in read.samples] == [(s.image, s.mask) for s in prepared["train"].samples]
    assert (read.classes, read.dataset, read.reduce_zero_label) == (["background", "cat", "dog"], "toy", False)

    moved = shutil.move(str(root), str(tmp_path / "elsewhere"))
    again = read_seg_manifest(tmp_path / "train.tsv", {**entry, "root": moved})
    assert again.samples == read.samples
    assert all(os.path.isfile(image) and os.path.isfile(mask) for image, mask in again.pairs())
    assert again.pairs()[0][0].startswith(moved)


def test_manifest_kinds_and_header_errors_name_the_file(tmp_path):
    entry = _entry("toy", tmp_path / "toy", "mmseg", tmp_path / "work")
    cls = tmp_path / "cls.tsv"
    write_manifest(cls, Manifest(root=tmp_path, samples=[Sample("a.jpg", "x", 0, 1)], classes=["x"]), "toy")
    assert not is_seg_manifest(cls)
    with pytest.raises(DatasetError, match=f"{cls} is not a kdflow segmentation manifest.*classification manifest"):
        read_seg_manifest(cls, entry)

    seg = tmp_path / "seg.tsv"
    write_seg_manifest(seg, SegManifest(tmp_path, tmp_path, [], ["background", "x"], reduce_zero_label=True), "toy")
    assert read_seg_manifest(seg, entry).reduce_zero_label
    with pytest.raises(DatasetError, match=f"{seg} lists dataset 'toy', read as dataset 'other'"):
        read_seg_manifest(seg, {**entry, "name": "other"})
    seg.write_text("".join(line for line in seg.read_text().splitlines(True) if not line.startswith("# mask_base")))
    with pytest.raises(DatasetError, match=f"{seg}: .*needs the header lines mask_base="):
        read_seg_manifest(seg, entry)
    with pytest.raises(DatasetError, match=f"cannot read image {tmp_path / 'gone.jpg'}"):
        write_seg_manifest(seg, SegManifest(tmp_path, tmp_path, [SegSample("gone.jpg", "gone.png")], ["x"]), "toy")


# ----------------------------------------------------------------------------------- Cityscapes
CITY_IDS = (7, 26, 33, 0, 6, 30, 24, 255)  # road, car, bicycle, unlabeled, ground, trailer, person, ?
CITY_TRAIN_IDS = (0, 13, 18, 255, 255, 255, 11, 255)


def _cityscapes_tree(root, train_ids=False):
    layout = {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 1}}
    for split, cities in layout.items():
        for city, n in cities.items():
            for k in range(n):
                stem = f"{city}_{k:06d}_000019"
                _image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed=k)
                _mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", _values(*CITY_IDS))
                _mask(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", _values(1))  # not read
                if train_ids:
                    _mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", _values(*CITY_TRAIN_IDS))
    return root


def test_cityscapes_label_ids_become_train_ids_in_the_work_dir(tmp_path):
    root, work = _cityscapes_tree(tmp_path / "cityscapes"), tmp_path / "work"
    before = _listing(root)
    out = prepare(_entry("city", root, "cityscapes", work), work)
    train, test = out["train"], out["test"]
    assert train.classes == list(CITYSCAPES_CLASSES) and train.num_classes == 19
    assert (len(train), len(test), train.mask_base, train.image_base) == (3, 1, "work", "root")
    assert test.samples[0].image == "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png"
    assert test.samples[0].mask == "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelTrainIds.png"
    mask = _read(work / test.samples[0].mask)
    assert mask.shape == (SIZE, SIZE) and [int(v) for v in mask[: len(CITY_IDS), 0]] == list(CITY_TRAIN_IDS)
    assert _listing(root) == before

    converted = _listing(work)
    prepare(_entry("city", root, "cityscapes", work), work)
    assert _listing(work) == converted  # nothing converted twice
    source = root / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png"
    _mask(source, _values(26))
    prepare(_entry("city", root, "cityscapes", work), work)
    assert (_read(work / test.samples[0].mask) == 13).all()  # a changed source is converted again


def test_cityscapes_label_train_ids_are_used_in_place(tmp_path):
    root, work = _cityscapes_tree(tmp_path / "cityscapes", train_ids=True), tmp_path / "work"
    out = prepare(_entry("city", root, "cityscapes", work), work)
    assert out["train"].mask_base == "root" and not work.exists()
    assert out["train"].pairs()[0][1] == str(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png")

    (root / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelTrainIds.png").unlink()  # not for every image
    out = prepare(_entry("city", root, "cityscapes", work), work)
    assert out["train"].mask_base == out["test"].mask_base == "work" and len(list(work.rglob("*_labelTrainIds.png"))) == 4


def test_cityscapes_missing_label_ids_are_named(tmp_path):
    root = _cityscapes_tree(tmp_path / "cityscapes")
    missing = root / "gtFine/train/bochum/bochum_000000_000019_gtFine_labelIds.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=f"1 missing, e.g. {missing}"):
        prepare(_entry("city", root, "cityscapes", tmp_path / "work"), tmp_path / "work")


# ----------------------------------------------------------------------------------- VOC + SBD
def _voc_tree(tmp_path):
    """VOC train a b, val c d; SBD train b e c, val f; masks: VOC for a b c d, SBD for b c e f."""
    from scipy.io import savemat

    voc, sbd = tmp_path / "VOCdevkit" / "VOC2012", tmp_path / "benchmark_RELEASE" / "dataset"
    ids = {i: f"2008_00000{k}" for k, i in enumerate("abcdef")}
    for k, i in enumerate("abcdef"):
        _image(voc / "JPEGImages" / f"{ids[i]}.jpg", seed=k)
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text(f"{ids['a']}\n{ids['b']}\n")
    (lists / "val.txt").write_text(f"{ids['d']}\n{ids['c']}\n")
    for i, values in {"a": (0, 15, 255), "b": (1, 2), "c": (20, 0), "d": (3,)}.items():
        _mask(voc / "SegmentationClass" / f"{ids[i]}.png", _values(*values), palette=True)
    (sbd / "cls").mkdir(parents=True)
    (sbd / "train.txt").write_text(f"{ids['b']}\n{ids['e']}\n{ids['c']}\n")
    (sbd / "val.txt").write_text(f"{ids['f']}\n")
    for i, values in {"b": (9,), "c": (9,), "e": (5, 0, 7), "f": (11,)}.items():
        gt = {"Segmentation": _values(*values), "CategoriesPresent": np.array(sorted(set(values) - {0}), dtype=np.uint8)}
        savemat(sbd / "cls" / f"{ids[i]}.mat", {"GTcls": gt})
    return voc, sbd, ids


def test_voc_aug_is_trainaug_with_index_masks_in_the_work_dir(tmp_path):
    voc, sbd, ids = _voc_tree(tmp_path)
    work = tmp_path / "work"
    before = _listing(voc, sbd)
    out = prepare(_entry("voc", voc, "voc_aug", work, sbd_root=str(sbd)), work)
    train, test = out["train"], out["test"]
    # (VOC train | SBD train | SBD val) - VOC val, sorted; test = VOC val
    assert [s.image for s in train.samples] == [f"JPEGImages/{ids[i]}.jpg" for i in "abef"]
    assert [s.mask for s in test.samples] == [f"SegmentationClassAug/{ids[i]}.png" for i in "cd"]
    assert train.classes == list(VOC_CLASSES) and train.num_classes == 21
    assert (train.image_base, train.mask_base) == ("root", "work")
    masks = {i: _read(work / "SegmentationClassAug" / f"{ids[i]}.png") for i in "abcdef"}
    assert [int(v) for v in masks["a"][:3, 0]] == [0, 15, 255]  # palette indices, not colours
    assert (masks["b"][:2, 0] == [1, 2]).all()  # VOC's own mask wins over SBD's
    assert [int(v) for v in masks["e"][:3, 0]] == [5, 0, 7] and (masks["f"] == 11).all()  # from SBD's .mat
    assert all(Image.open(work / "SegmentationClassAug" / f"{ids[i]}.png").mode == "L" for i in "abcdef")
    assert _listing(voc, sbd) == before


def test_voc_aug_mask_problems_are_named(tmp_path):
    voc, sbd, ids = _voc_tree(tmp_path)
    entry = _entry("voc", voc, "voc_aug", tmp_path / "work", sbd_root=str(sbd))
    (sbd / "cls" / f"{ids['f']}.mat").unlink()
    with pytest.raises(DatasetError, match=f"1 image\\(s\\) without a mask, e.g. expected .*{ids['f']}.png or "
                                           f"{sbd / 'cls' / ids['f']}.mat"):
        prepare(entry, entry["work_dir"])
    (sbd / "cls" / f"{ids['f']}.mat").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=f"cannot read SBD mask {sbd / 'cls' / ids['f']}.mat"):
        prepare(entry, entry["work_dir"])
    _mask(voc / "SegmentationClass" / f"{ids['f']}.png", _values(0, 21), palette=True)
    with pytest.raises(DatasetError, match=f"mask .*{ids['f']}.png has values 21 outside 0..20 and 255"):
        prepare(entry, entry["work_dir"])


# ----------------------------------------------------------------------------------- ADE20K
def _ade_tree(root, class_file="objectInfo150.csv"):
    for folder, n in (("training", 3), ("validation", 2)):
        for k in range(1, n + 1):
            stem = f"ADE_{'train' if folder == 'training' else 'val'}_{k:08d}"
            _image(root / "images" / folder / f"{stem}.jpg", seed=k)
            _mask(root / "annotations" / folder / f"{stem}.png", _values(0, 1, 150))
    names = ["wall", "building, edifice" if class_file.endswith(".txt") else "building;edifice"]
    names += [f"thing{k}" for k in range(3, 151)]
    if class_file.endswith(".csv"):
        text = "Idx,Ratio,Train,Val,Name\n" + "".join(f'{k},0.1,10,1,"{n}"\n' for k, n in enumerate(names, 1))
    else:
        text = "Idx\tRatio\tTrain\tVal\tName\n" + "".join(f"{k}\t0.1\t10\t1\t{n}\n" for k, n in enumerate(names, 1))
    (root / class_file).write_text(text)
    return root


@pytest.mark.parametrize("class_file", ["objectInfo150.csv", "objectInfo150.txt"])
def test_ade20k_reduces_the_zero_label(tmp_path, class_file):
    root = _ade_tree(tmp_path / "ADEChallengeData2016", class_file)
    before = _listing(root)
    out = prepare(_entry("ade", root, "ade20k", tmp_path / "work"), tmp_path / "work")
    train, test = out["train"], out["test"]
    assert (len(train), len(test)) == (3, 2) and train.reduce_zero_label and test.reduce_zero_label
    assert train.num_classes == 150 and train.classes[:3] == ["wall", "building", "thing3"]
    assert test.samples[1].mask == "annotations/validation/ADE_val_00000002.png"
    assert _listing(root) == before and not (tmp_path / "work").exists()


def test_ade20k_class_file_needs_150_rows(tmp_path):
    root = _ade_tree(tmp_path / "ADEChallengeData2016")
    lines = (root / "objectInfo150.csv").read_text().splitlines(True)
    (root / "objectInfo150.csv").write_text("".join(lines[:-1]))
    with pytest.raises(DatasetError, match="objectInfo150.csv: expected rows Idx 1..150"):
        prepare(_entry("ade", root, "ade20k", tmp_path / "work"), tmp_path / "work")


@pytest.mark.slow
def test_ade20k_class_names_from_mmseg_without_a_class_file(tmp_path):
    root = _ade_tree(tmp_path / "ADEChallengeData2016")
    (root / "objectInfo150.csv").unlink()
    out = prepare(_entry("ade", root, "ade20k", tmp_path / "work"), tmp_path / "work")
    assert out["train"].num_classes == 150 and out["train"].classes[:8] == [
        "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed"]


# ----------------------------------------------------------------------------------- layout checks
LAYOUTS = {  # format: {key: [(relative path, folder?)]}: what seg_layout_problems looks at
    "mmseg": {"root": [("img_dir/train", True), ("img_dir/val", True), ("ann_dir/train", True), ("ann_dir/val", True),
                       ("classes.txt", False)]},
    "cityscapes": {"root": [("leftImg8bit/train", True), ("leftImg8bit/val", True), ("gtFine/train", True),
                            ("gtFine/val", True)]},
    "voc_aug": {"root": [("JPEGImages", True), ("SegmentationClass", True),
                         ("ImageSets/Segmentation/train.txt", False), ("ImageSets/Segmentation/val.txt", False)],
                "sbd_root": [("cls", True), ("train.txt", False), ("val.txt", False)]},
    "ade20k": {"root": [("images/training", True), ("images/validation", True), ("annotations/training", True),
                        ("annotations/validation", True)]},
}
MISSING = [("mmseg", "root", "ann_dir/val"), ("mmseg", "root", "classes.txt"),
           ("cityscapes", "root", "gtFine/val"), ("cityscapes", "root", "leftImg8bit/train"),
           ("voc_aug", "root", "ImageSets/Segmentation/val.txt"), ("voc_aug", "sbd_root", "cls"),
           ("voc_aug", "sbd_root", "train.txt"), ("ade20k", "root", "annotations/training")]


def _layout_entry(tmp_path, fmt):
    entry = {"format": fmt, "root": str(tmp_path / "data")}
    if fmt == "voc_aug":
        entry["sbd_root"] = str(tmp_path / "sbd")
    for key, needed in LAYOUTS[fmt].items():
        for rel, folder in needed:
            path = tmp_path / ("sbd" if key == "sbd_root" else "data") / rel
            if folder:
                path.mkdir(parents=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("")
    return entry


@pytest.mark.parametrize(("fmt", "key", "rel"), MISSING)
def test_layout_check_names_the_one_missing_path(tmp_path, fmt, key, rel):
    entry = _layout_entry(tmp_path, fmt)
    assert seg_layout_problems(entry, "seg") == []
    missing = tmp_path / ("sbd" if key == "sbd_root" else "data") / rel
    shutil.rmtree(missing) if missing.is_dir() else missing.unlink()
    kind = "file" if "." in rel else "folder"
    expected = f"config.datasets.seg.{key}: {kind} {missing} does not exist"
    assert seg_layout_problems(entry, "seg") == [expected]
    with pytest.raises(ConfigError) as err:
        check_dataset_roots({"datasets": {"seg": entry}, "soft_labels": {}}, ["seg"])
    assert expected in str(err.value)


def test_layout_check_of_sbd_root(tmp_path):
    entry = _layout_entry(tmp_path, "voc_aug")
    shutil.rmtree(tmp_path / "sbd")
    assert seg_layout_problems(entry, "voc") == [f"config.datasets.voc.sbd_root: folder {tmp_path / 'sbd'} does not exist"]
    entry["sbd_root"] = "<FILL: SBD's benchmark_RELEASE/dataset>"
    assert seg_layout_problems(entry, "voc", unfilled=is_placeholder) == []  # reported by check_placeholders
    check_dataset_roots({"datasets": {"voc": entry}, "soft_labels": {}}, ["voc"])
    del entry["sbd_root"]
    assert seg_layout_problems(entry, "voc") == ["config.datasets.voc.sbd_root: format voc_aug needs sbd_root, "
                                                 "SBD's benchmark_RELEASE/dataset folder"]
    assert seg_layout_problems({"format": "mmseg", "demo": "scenes"}, "demo_seg") == []  # generated by the pipeline


@pytest.fixture
def demo_cfg(repo):
    with open(repo / "config" / "config.yaml") as fh:
        return yaml.safe_load(fh)


def test_sbd_root_belongs_to_voc_aug_only(demo_cfg, tmp_path):
    cfg = copy.deepcopy(demo_cfg)
    cfg["datasets"]["voc"] = {"root": str(tmp_path / "VOC2012"), "format": "voc_aug"}
    cfg["datasets"]["ade"] = {"root": str(tmp_path / "ade"), "format": "ade20k", "sbd_root": str(tmp_path / "sbd")}
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert "config.datasets.voc.sbd_root: format voc_aug needs SBD's benchmark_RELEASE/dataset folder" in str(err.value)
    assert ("config.datasets.ade.sbd_root: only a voc_aug dataset reads SBD's folder (this one's format is 'ade20k')"
            in str(err.value))
    cfg["datasets"]["voc"]["sbd_root"] = str(tmp_path / "sbd")
    del cfg["datasets"]["ade"]
    assert validate_config(cfg)["datasets"]["voc"]["format"] == "voc_aug"


def test_segmentation_demo_has_at_most_eight_classes(demo_cfg):
    cfg = copy.deepcopy(demo_cfg)
    cfg["demo"]["scenes9"] = {"kind": "segmentation", "classes": 9}
    with pytest.raises(ConfigError, match="config.demo.scenes9.classes: 9 is greater than the maximum of 8"):
        validate_config(cfg)


# ----------------------------------------------------------------------------------- demo scenes
def _generate(out, seed=3, classes=4):
    return demo.generate(out, kind="segmentation", classes=classes, train_per_class=24, val_per_class=6,
                         image_size=32, seed=seed)


def test_demo_scenes_are_deterministic_and_prepare_as_mmseg(tmp_path):
    summary = _generate(tmp_path / "a")
    assert summary["images"] == {"train": 24, "val": 6} and list(summary["classes"])[:2] == ["background", "disk"]
    _generate(tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 * 30 + 1
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    _generate(tmp_path / "c", seed=4)
    assert (tmp_path / "a/img_dir/train/00000.png").read_bytes() != (tmp_path / "c/img_dir/train/00000.png").read_bytes()

    out = prepare(_entry("scenes", tmp_path / "a", "mmseg", tmp_path / "work"), tmp_path / "work")
    assert (len(out["train"]), len(out["test"])) == (24, 6)
    assert out["train"].classes == ["background", "disk", "ring", "square", "diamond"]


def test_demo_scenes_have_several_objects_and_shape_labels(tmp_path):
    _generate(tmp_path / "scenes", classes=4)
    masks = [_read(p) for p in sorted((tmp_path / "scenes" / "ann_dir").rglob("*.png"))]
    assert all(m.dtype == np.uint8 and m.shape == (32, 32) for m in masks)
    assert set(np.unique(np.concatenate([m.ravel() for m in masks]))) == {0, 1, 2, 3, 4}
    several = sum(len(set(np.unique(m).tolist()) - {0}) >= 2 for m in masks)
    assert several >= 0.9 * len(masks)
    assert all((m == 0).mean() > 0.2 for m in masks)  # background is left around the objects
    image = _read(tmp_path / "scenes" / "img_dir" / "train" / "00000.png")
    assert image.shape == (32, 32, 3)


def test_pair_labelled_scenes_name_the_downstream_classes_one_object_each(tmp_path, demo_cfg):
    cfg = copy.deepcopy(demo_cfg)
    cfg["demo"]["pairs10"] = {"kind": "segmentation", "classes": 10, "labels": "pair", "objects": [1, 1]}
    validate_config(cfg)  # more than 8 classes: pairs are not limited to the 8 shape kinds
    summary = demo.generate(tmp_path / "pairs", kind="segmentation", classes=10, train_per_class=24, val_per_class=6,
                            image_size=32, seed=3, labels="pair", objects=(1, 1))
    pairs = [f"{shape}_{texture}" for shape, texture in demo.class_pairs("downstream", 10)]
    assert list(summary["classes"]) == ["background", *pairs]  # the classification demo's downstream classes
    assert (tmp_path / "pairs" / "classes.txt").read_text().split() == ["background", *pairs]
    masks = [_read(p) for p in sorted((tmp_path / "pairs" / "ann_dir").rglob("*.png"))]
    objects = [set(np.unique(m).tolist()) - {0} for m in masks]
    assert all(len(found) == 1 for found in objects)  # one object per scene
    assert len(set().union(*objects)) >= 6 and set().union(*objects) <= set(range(1, 11))
    assert all(0.2 < (m > 0).mean() < 0.8 for m in masks)  # posed as a classification image's object


def test_scene_object_counts_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"objects \[3, 2\]: give the fewest and the most"):
        demo.generate(tmp_path, kind="segmentation", classes=4, train_per_class=2, val_per_class=1, image_size=32,
                      seed=0, objects=(3, 2))
