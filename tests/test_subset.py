"""ImageNet subsets: deterministic whatever the listing order; clear errors naming the culprit."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from conftest import make_imagefolder
from kdflow.data.imagefolder import DatasetError, read_manifest, write_manifest
from kdflow.data.subset import make_subset, materialise_symlinks


@pytest.fixture
def dataset(tmp_path):
    return make_imagefolder(tmp_path / "ds", {"n01": 12, "n02": 9, "n03": 15})


def _paths(manifest):
    return [(s.path, s.cls, s.index) for s in manifest.samples]


def test_subset_is_independent_of_listing_order(dataset, monkeypatch):
    reference = make_subset(dataset, per_class=5, seed=7)
    original_iterdir = Path.iterdir

    for trial in range(3):
        shuffler = random.Random(trial)

        def shuffled_iterdir(self):
            entries = list(original_iterdir(self))
            shuffler.shuffle(entries)
            return iter(entries)

        monkeypatch.setattr(Path, "iterdir", shuffled_iterdir)
        again = make_subset(dataset, per_class=5, seed=7)
        monkeypatch.setattr(Path, "iterdir", original_iterdir)
        assert _paths(again) == _paths(reference)

    assert len(reference) == 15
    assert {s.cls for s in reference.samples} == {"n01", "n02", "n03"}
    assert [s.index for s in reference.samples if s.cls == "n02"] == [1] * 5


def test_seed_changes_selection_and_fraction_keeps_balance(dataset):
    a = make_subset(dataset, per_class=5, seed=0)
    b = make_subset(dataset, per_class=5, seed=1)
    assert _paths(a) != _paths(b)
    frac = make_subset(dataset, fraction=0.5, seed=0)
    counts = {c: sum(s.cls == c for s in frac.samples) for c in ("n01", "n02", "n03")}
    assert counts == {"n01": 6, "n02": 4, "n03": 8}  # round(0.5 * n) per class (9 * 0.5 rounds to even)


def test_manifest_round_trip_and_symlinks(dataset, tmp_path):
    manifest = make_subset(dataset, per_class=3, seed=0)
    write_manifest(tmp_path / "m.tsv", manifest, "in")
    assert str(dataset) not in (tmp_path / "m.tsv").read_text()  # where the files lie is not the identity
    back = read_manifest(tmp_path / "m.tsv", {"name": "in", "root": dataset, "work_dir": tmp_path / "work"})
    assert _paths(back) == _paths(manifest)
    assert back.classes == ["n01", "n02", "n03"] and back.root == dataset
    assert [s.bytes for s in back.samples] == [(dataset / s.path).stat().st_size for s in manifest.samples]
    tree = materialise_symlinks(back, tmp_path / "links")
    links = sorted(p for p in tree.rglob("*.JPEG"))
    assert len(links) == 9 and all(p.is_symlink() and p.resolve().is_file() for p in links)


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DatasetError, match="dataset root not found: .*nowhere"):
        make_subset(tmp_path / "nowhere", per_class=1)


def test_empty_class_folder_is_named(dataset):
    (dataset / "train" / "n04").mkdir()
    with pytest.raises(DatasetError, match=r"class folder .*n04 contains no images"):
        make_subset(dataset, per_class=1)


def test_class_with_too_few_images_is_named(dataset):
    with pytest.raises(DatasetError) as err:
        make_subset(dataset, per_class=10)
    message = str(err.value)
    assert "class n02 of " in message and "has 9 images, 10 asked" in message
    assert "class n01" not in message and "class n03" not in message  # only the short class is blamed


def test_corrupt_image_is_reported_with_its_path(dataset):
    from kdflow.data.imagefolder import ManifestDataset, split_manifest

    bad = dataset / "train" / "n01" / "n01_000.JPEG"
    bad.write_bytes(b"not a jpeg")
    ds = ManifestDataset(split_manifest(dataset, "train"))
    with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
        ds[0]


def _unusual_images(folder: Path) -> dict[str, tuple]:
    """One file per unusual kind, and the RGB value its first pixel must decode to."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    Image.fromarray(np.full((6, 6), 30000, np.uint16)).save(folder / "grey16.png")  # 16-bit greyscale
    Image.fromarray(np.full((6, 6), 100, np.uint8), "L").save(folder / "grey8.png")
    rgba = np.dstack([np.full((6, 6, 3), 200, np.uint8), np.full((6, 6), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=100)  # pure red
    palette = Image.new("P", (6, 6))
    palette.putpalette([10, 20, 30] * 256)
    palette.save(folder / "palette.png")
    Image.new("RGB", (6, 6), (1, 2, 3)).save(folder / "a name with spaces é.png")
    return {"grey16.png": (117, 117, 117), "grey8.png": (100, 100, 100), "alpha.png": (200, 200, 200),
            "cmyk.jpg": (255, 0, 0), "palette.png": (10, 20, 30), "a name with spaces é.png": (1, 2, 3)}


def test_unusual_but_decodable_images_are_converted_correctly(tmp_path):
    """16-bit greyscale is scaled, not saturated at 255 (PIL's convert clips it); greyscale, alpha,
    CMYK, palette images and a file name with spaces and non-ASCII letters all load as RGB."""
    import numpy as np

    from kdflow.data.imagefolder import ManifestDataset, split_manifest

    expected = _unusual_images(tmp_path / "ds" / "train" / "n01")
    ds = ManifestDataset(split_manifest(tmp_path / "ds", "train"))
    found = {}
    for i, sample in enumerate(ds.manifest.samples):
        image = ds.load(i)
        assert image.mode == "RGB" and image.size == (6, 6)
        found[Path(sample.path).name] = tuple(int(v) for v in np.asarray(image)[0, 0])
    assert found.keys() == expected.keys()
    for name, value in expected.items():
        tolerance = 2 if name.endswith(".jpg") else 0  # a JPEG's colour conversion rounds
        assert max(abs(a - b) for a, b in zip(found[name], value)) <= tolerance, (name, found[name])


def test_a_non_image_file_in_a_class_folder_is_left_out(dataset):
    (dataset / "train" / "n01" / "README.txt").write_text("not an image of the class")
    (dataset / "train" / "n01" / "labels.json").write_text("{}")
    manifest = read_manifest_of(dataset)
    assert len([s for s in manifest.samples if s.cls == "n01"]) == 12
    assert not any(s.path.endswith((".txt", ".json")) for s in manifest.samples)


@pytest.mark.parametrize("target", ["loop", "nowhere"])
def test_a_looping_or_dangling_symlink_is_named(dataset, target):
    link = dataset / "train" / "n02" / "n02_999.JPEG"
    if target == "loop":
        link.symlink_to(link)  # points at itself
    else:
        link.symlink_to(dataset / "moved" / "away.JPEG")
    with pytest.raises(DatasetError, match=rf"{link} is a symbolic link that loops or points to nothing"):
        read_manifest_of(dataset)
    (dataset / "train" / "n04").symlink_to(dataset / "train" / "n04")  # a class folder looping on itself
    link.unlink()
    with pytest.raises(DatasetError, match=r"n04 is a symbolic link that loops"):
        read_manifest_of(dataset)


def read_manifest_of(dataset):
    from kdflow.data.imagefolder import split_manifest

    return split_manifest(dataset, "train")


def _dataset_with_undecodable_files(tmp_path, policy: str):
    """An ImageFolder dataset (train and val) with a truncated JPEG and a zero-byte file among
    good and unusual-but-decodable images, and its resolved config entry under ``policy``."""
    import yaml

    from conftest import REPO
    from kdflow.config import resolve_dataset, validate_config

    root = make_imagefolder(tmp_path / "ds", {"n01": 4, "n02": 4}, size=16)
    make_imagefolder(root, {"n01": 2, "n02": 2}, split="val", size=16)
    for split in ("train", "val"):
        _unusual_images(root / split / "n03")
    good = (root / "train" / "n01" / "n01_000.JPEG").read_bytes()
    truncated = root / "train" / "n01" / "n01_001.JPEG"
    truncated.write_bytes(good[:len(good) // 2])
    empty = root / "val" / "n02" / "n02_000.JPEG"
    empty.write_bytes(b"")
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny_config.yaml").read_text())
    cfg["results"] = str(tmp_path / "results")
    cfg["datasets"]["photos"] = {"root": str(root), "image_check": {"policy": policy}}
    return resolve_dataset(validate_config(cfg), "photos"), [truncated, empty]


@pytest.mark.parametrize("workers", [1, 2])
def test_the_preparation_check_finds_every_undecodable_file_before_a_manifest_is_written(tmp_path, workers):
    """image_check policy fail: the prepare job fails naming every undecodable file of both splits
    and writes no manifest (nothing downstream starts); decodable-but-unusual images pass."""
    from kdflow.jobs.data import prepare_dataset

    dataset, bad = _dataset_with_undecodable_files(tmp_path, "fail")
    manifests = {split: tmp_path / "results" / f"{split}.tsv" for split in ("train", "test")}
    with pytest.raises(DatasetError) as err:
        prepare_dataset(dataset, manifests, workers=workers)
    assert re.search(rf"2 file\(s\) of 24 samples cannot be decoded:\n  {re.escape(str(bad[0]))}: OSError: Truncated "
                     rf"File Read\n  {re.escape(str(bad[1]))}: UnidentifiedImageError", str(err.value))
    assert "image_check: {policy: skip}" in str(err.value)
    assert not any(p.exists() for p in manifests.values())


def test_the_preparation_check_under_skip_leaves_them_out_and_names_them_in_provenance(tmp_path):
    import json

    from kdflow.jobs.data import prepare_dataset

    dataset, bad = _dataset_with_undecodable_files(tmp_path, "skip")
    manifests = {split: tmp_path / "results" / "datasets" / f"{split}.tsv" for split in ("train", "test")}
    counts = prepare_dataset(dataset, manifests, workers=2)
    assert counts == {"train": {"images": 13, "classes": 3}, "test": {"images": 9, "classes": 3}}
    listed = {split: manifests[split].read_text() for split in manifests}
    assert "n01_001.JPEG" not in listed["train"] and "grey16.png" in listed["train"]
    assert "n02_000.JPEG" not in listed["test"] and "n02_001.JPEG" in listed["test"]
    report = json.loads((manifests["train"].parent / "provenance.json").read_text())["image_check"]
    assert [p["path"] for p in report["train"]["undecodable"]] == [str(bad[0])]
    assert [p["path"] for p in report["test"]["undecodable"]] == [str(bad[1])]
    assert report["train"]["skipped"] == 1 and report["train"]["samples"] == 14 and report["train"]["policy"] == "skip"
