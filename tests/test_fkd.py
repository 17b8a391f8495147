"""FKD: label quantisation and recovery, the sharded soft-label store (resume, sharding, checksums),
the importer of FKD's published files, replayed crops, soft cross-entropy and epoch accounting."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from kdflow.config import JobConfig
from kdflow.data.imagefolder import Manifest, ManifestDataset, Sample, write_manifest
from kdflow.data.multicrop import INTERPOLATIONS, sample_crops
from kdflow.distill.fkd import soft_cross_entropy
from kdflow.distill.replay import ReplayDataset, replay_passes
from kdflow.distill.softlabels import (
    LABEL_TYPES,
    LabelCodec,
    ShardWriter,
    SoftLabelError,
    SoftLabelStore,
    assemble_store,
    record_tensors,
    shard_file,
)
from kdflow.jobs.softlabels import ImageCrops, soft_label_shard, soft_label_store
from kdflow.models.network import Network
from kdflow.models.teacher import save_teacher

C = 10


def teacher_like_probs(n=64, classes=C, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, classes, generator=g) * 3, dim=1)


# --------------------------------------------------------------------------- quantisation


def through_a_store(codec: LabelCodec, probs: torch.Tensor, folder) -> torch.Tensor:
    """Quantise -> write a one-shard store (4 crops per image) -> read it back -> recover."""
    crops, images = 4, len(probs) // 4
    writer = ShardWriter(folder / "state", 0, 0, images, codec, crops, spec_hash="x")
    records = codec.encode(probs)
    for i in range(images):
        writer.append(records[i * crops:(i + 1) * crops], 32, 24)
    writer.finish(shard_file(folder, 0, "bin"), shard_file(folder, 0, "npz"), np.arange(images, dtype=np.uint64),
                  extra={"crops_per_image": crops, "codec": codec.as_dict()})
    assemble_store(folder, 1, {"codec": codec.as_dict(), "crops_per_image": crops,
                               "images": {"count": images, "sha256": "-", "manifest": "-"}})
    store = SoftLabelStore(folder)
    assert store.meta["bytes_per_crop"] == codec.bytes_per_crop
    read_back = np.concatenate([store.records(i) for i in range(images)])
    assert read_back.tobytes() == records.tobytes()
    return codec.decode(record_tensors(read_back))


@pytest.mark.parametrize("label_type", LABEL_TYPES)
def test_quantise_store_recover_each_label_type(label_type, tmp_path):
    p = teacher_like_probs()
    codec = LabelCodec(label_type, 3, C)
    q = through_a_store(codec, p, tmp_path)
    assert q.shape == p.shape
    assert torch.allclose(q.sum(1), torch.ones(len(p)), atol=1e-5)  # every type recovers a distribution
    top_vals, top_idx = p.sort(1, descending=True)
    rows = torch.arange(len(p))[:, None]
    if label_type == "hard":
        assert torch.equal(q.argmax(1), p.argmax(1)) and torch.equal(q.max(1).values, torch.ones(len(p)))
    elif label_type == "full":
        assert (q - p).abs().max() < 1e-3  # float16
    elif label_type == "marginal_renorm":
        kept = top_idx[:, :3]
        expected = top_vals[:, :3] / top_vals[:, :3].sum(1, keepdim=True)
        assert (q[rows, kept] - expected).abs().max() <= 2 / 255 + 1e-6
        assert q.sum(1).sub(q[rows, kept].sum(1)).abs().max() < 1e-6  # nothing outside the top-k
    else:  # smoothing = top-1, marginal_smoothing = top-3
        k = 1 if label_type == "smoothing" else 3
        kept = top_idx[:, :k]
        assert (q[rows, kept] - top_vals[:, :k]).abs().max() <= 1 / 255 + 1e-6  # the stated precision
        rest = (1 - q[rows, kept].sum(1)) / (C - k)
        mask = torch.ones_like(q, dtype=torch.bool)
        mask[rows, kept] = False
        assert torch.allclose(q[mask].view(len(p), C - k), rest[:, None].expand(-1, C - k), atol=1e-6)
        assert (q[rows, kept].sum(1) - top_vals[:, :k].sum(1)).abs().max() <= 0.5 / 255 + 1e-6


def test_bytes_per_crop_meets_the_goal():
    assert LabelCodec("marginal_smoothing", 5, 1000).bytes_per_crop == 15  # <= 16 B (FKD: 57 fp32, 28 fp16)
    assert LabelCodec("marginal_smoothing", 5, 100).bytes_per_crop == 10
    assert LabelCodec("hard", 5, 1000).bytes_per_crop == 2
    assert LabelCodec("full", 5, 1000).bytes_per_crop == 2000
    assert LabelCodec("marginal_smoothing", 5, 1000, explicit_boxes=True).bytes_per_crop == 24


def test_codec_rejects_impossible_settings():
    with pytest.raises(SoftLabelError, match="k < 5"):
        LabelCodec("marginal_smoothing", 5, 5)
    with pytest.raises(SoftLabelError, match="unknown label type"):
        LabelCodec("ori", 5, 10)


def test_soft_cross_entropy_against_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    target = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.25, 0.75]])
    for t in (1.0, 2.0):
        expected = 0.0
        for z, q in zip(logits.tolist(), target.tolist()):
            log_norm = math.log(sum(math.exp(v / t) for v in z))
            expected += -sum(qc * (zc / t - log_norm) for zc, qc in zip(z, q))
        assert soft_cross_entropy(logits, target, t).item() == pytest.approx(expected / 2, rel=1e-6)


def test_fkd_epoch_accounting():
    assert replay_passes(300, 4, 4) == [4] * 74 + [1] * 4  # FKD: 74 four-crop passes + 4 single-crop
    assert sum(replay_passes(10, 4, 4)) == 10
    assert replay_passes(8, 4, 0) == [4, 4]
    assert replay_passes(3, 4, 4) == [1, 1, 1]


# --------------------------------------------------------------------------- the store


@pytest.fixture(scope="module")
def labelled_images(tmp_path_factory):
    """12 images of varied, non-square sizes, a manifest and a 3-class teacher file."""
    from PIL import Image

    root = tmp_path_factory.mktemp("fkd_images")
    rng = np.random.default_rng(0)
    samples = []
    for i in range(12):
        cls = f"n0{i % 3}"
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(20, 48)), int(rng.integers(20, 48))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "train" / cls / f"img{i}.png")
        samples.append(Sample(f"train/{cls}/img{i}.png", cls, i % 3))
    manifest = Manifest(root=root, samples=samples, classes=["n00", "n01", "n02"])
    write_manifest(root / "subset.tsv", manifest, "imgs")
    torch.manual_seed(0)
    save_teacher(root / "teacher.safetensors", Network("test_resnet", num_classes=3), "t", "random_init")
    return root


def _dataset(images) -> dict:
    return {"name": "imgs", "root": images, "work_dir": images / "work"}


def job(spec: dict, images) -> JobConfig:
    """``spec`` as the soft-label jobs get it (kdflow.config.resolve_soft_labels): its subset's
    dataset resolved; workers and commit_every are execution settings, outside its identity."""
    identity = {k: v for k, v in spec.items() if k not in ("workers", "commit_every")}
    return JobConfig({**spec, "data": {"name": "sub", "dataset": _dataset(images)}},
                     identity={**identity, "data": {"name": "sub", "dataset": {"name": "imgs"}}})


def generation_spec(shards: int, label_type: str = "marginal_smoothing", k: int = 2) -> dict:
    return {"name": "t", "label": {"type": label_type, "k": k}, "shards": shards, "workers": 0, "seed": 7,
            "commit_every": 2,
            "generate": {"teacher": {"name": "t"}, "num_crops": 8, "teacher_batch": 5, "temperature": 2.0,
                         "crop": {"size": 16, "scale": [0.2, 1.0], "ratio": [0.75, 4 / 3],
                                  "interpolation": "bicubic"}}}


def build_store(images, out, spec) -> SoftLabelStore:
    spec = job(spec, images)
    for k in range(spec["shards"]):
        soft_label_shard(spec, images / "subset.tsv", k, out, out / "state", teacher_path=images / "teacher.safetensors")
    soft_label_store(spec, images / "subset.tsv", out, teacher_path=images / "teacher.safetensors")
    return SoftLabelStore(out)


def content(store: SoftLabelStore) -> tuple[bytes, bytes]:
    records = b"".join((store.folder / s["file"]).read_bytes() for s in store.meta["shards"])
    index = np.concatenate([store.seeds, store.widths, store.heights]).tobytes()
    return records, index


def test_one_shard_and_three_shards_give_the_same_store(labelled_images, tmp_path):
    one = build_store(labelled_images, tmp_path / "one", generation_spec(1))
    three = build_store(labelled_images, tmp_path / "three", generation_spec(3))
    assert len(three.meta["shards"]) == 3 and [s["count"] for s in three.meta["shards"]] == [4, 4, 4]
    assert content(one) == content(three)
    assert one.meta["bytes_per_crop"] == 4 and one.meta["total_bytes"] == 12 * 8 * 4
    assert one.meta["recovery"]["stored_max_abs_error"] <= 1 / 255 + 1e-6
    for i in range(12):
        assert np.array_equal(one.records(i), three.records(i))


def test_interrupted_generation_resumes_byte_identical(labelled_images, tmp_path, monkeypatch):
    spec = generation_spec(1)
    reference = build_store(labelled_images, tmp_path / "ref", spec)
    out = tmp_path / "interrupted"
    real_commit = ShardWriter.commit
    commits = {"n": 0}

    def commit_then_die(self):
        real_commit(self)
        commits["n"] += 1
        if commits["n"] == 3:  # 6 of 12 images durable; then a write that never gets committed
            self._data.write(b"half-written records")
            self._data.flush()
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ShardWriter, "commit", commit_then_die)
    with pytest.raises(KeyboardInterrupt):
        soft_label_shard(job(spec, labelled_images), labelled_images / "subset.tsv", 0, out, out / "state",
                         teacher_path=labelled_images / "teacher.safetensors")
    assert not shard_file(out, 0, "bin").exists()
    monkeypatch.setattr(ShardWriter, "commit", real_commit)
    resumed = []
    monkeypatch.setattr(ImageCrops, "__init__", _spy(ImageCrops.__init__, resumed))
    resumed_store = build_store(labelled_images, out, {**spec, "commit_every": 5})  # may differ on resume
    assert resumed == [6]  # only the images after the last commit were recomputed
    assert content(resumed_store) == content(reference)
    assert shard_file(out, 0, "bin").read_bytes() == shard_file(tmp_path / "ref", 0, "bin").read_bytes()


def _spy(init, starts):
    def wrapped(self, manifest, gen, seed, first, stop):
        starts.append(first)
        init(self, manifest, gen, seed, first, stop)
    return wrapped


def test_a_flipped_byte_is_detected_naming_the_shard(labelled_images, tmp_path):
    store = build_store(labelled_images, tmp_path / "s", generation_spec(3))
    victim = store.folder / "shard-1.bin"
    data = bytearray(victim.read_bytes())
    data[5] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(SoftLabelError, match=r"shard-1\.bin is corrupt"):
        SoftLabelStore(store.folder)


def test_a_partial_shard_of_another_config_is_refused(labelled_images, tmp_path, monkeypatch):
    out, spec = tmp_path / "s", generation_spec(1)
    real_commit = ShardWriter.commit

    def commit_then_die(self):
        real_commit(self)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ShardWriter, "commit", commit_then_die)
    with pytest.raises(KeyboardInterrupt):
        soft_label_shard(job(spec, labelled_images), labelled_images / "subset.tsv", 0, out, out / "state",
                         teacher_path=labelled_images / "teacher.safetensors")
    monkeypatch.setattr(ShardWriter, "commit", real_commit)
    with pytest.raises(SoftLabelError, match="different config"):
        soft_label_shard(job({**spec, "seed": 8}, labelled_images), labelled_images / "subset.tsv", 0, out,
                         out / "state",
                         teacher_path=labelled_images / "teacher.safetensors")


def test_replayed_crops_equal_the_teachers(labelled_images, tmp_path):
    """Replay regenerates the teacher's boxes exactly (0 px) and, at the teacher's size and
    interpolation, the very same pixels; the stored labels are the teacher's."""
    spec = generation_spec(2)
    store = build_store(labelled_images, tmp_path / "s", spec)
    manifest_ds = ManifestDataset(_read(labelled_images))
    teacher_side = ImageCrops(manifest_ds.manifest, spec["generate"], spec["seed"], 0, 12)
    replay = ReplayDataset(manifest_ds, store, crops_per_visit=4, size=16, interpolation="bicubic", seed=3,
                           pass_index=1)
    for i in range(12):
        _, teacher_crops, (w, h) = teacher_side[i]
        item = replay[i]
        rows = replay.choose(i)
        assert len(set(rows.tolist())) == 4  # without replacement
        regenerated = store.plan(i, w, h, store.records(i))
        original = sample_crops(int(store.seeds[i]), w, h, 8, (0.2, 1.0), (0.75, 4 / 3))
        assert np.array_equal(regenerated.boxes, original.boxes) and np.array_equal(regenerated.flips, original.flips)
        assert torch.equal(item["image"], teacher_crops[rows])
        assert torch.equal(item["idx"], torch.from_numpy(store.records(i)["idx"][rows].astype(np.int64)))
        assert torch.equal(item["label"], torch.full((4,), manifest_ds.manifest.samples[i].index))


def test_replay_refuses_an_image_that_changed_size(labelled_images, tmp_path):
    store = build_store(labelled_images, tmp_path / "s", generation_spec(1))
    with pytest.raises(SoftLabelError, match="regenerate"):
        store.plan(0, int(store.widths[0]) + 1, int(store.heights[0]), store.records(0), "img0.png")


def _read(images):
    from kdflow.data.imagefolder import read_manifest

    return read_manifest(images / "subset.tsv", _dataset(images))


# --------------------------------------------------------------------------- FKD's published files


def write_fkd_files(images, root, dtype, crops=6, k=5, classes=1000):
    """Hand-written files in FKD's layout: <root>/train/<wnid>/<stem>.tar = torch.save([coords,
    flips, labels]) with labels (N, 2, k) = class indices and probabilities, sorted descending."""
    manifest = _read(images)
    rng = np.random.default_rng(1)
    written = {}
    for i, sample in enumerate(manifest.samples):
        coords = rng.uniform(0.0, 0.5, size=(crops, 4)).astype(dtype)
        flips = rng.random(crops) < 0.5
        probs = np.sort(rng.dirichlet(np.ones(k) * 0.5, size=crops) * 0.9, axis=1)[:, ::-1]
        idx = np.stack([rng.choice(classes, size=k, replace=False) for _ in range(crops)])
        labels = np.stack([idx.astype(dtype), probs.astype(dtype)], axis=1)
        path = root / "train" / sample.cls / (sample.path.rsplit("/", 1)[1].rsplit(".", 1)[0] + ".tar")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save([coords, flips, labels], path)
        written[i] = (coords, flips, idx, probs)
    return written


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_import_of_fkd_files(labelled_images, tmp_path, dtype):
    fkd_root = tmp_path / "FKD_soft_label_500_crops_marginal_smoothing_k_5" / "imagenet"
    written = write_fkd_files(labelled_images, fkd_root, dtype)
    spec = {"name": "fkd_released", "label": {"type": "marginal_smoothing", "k": 5}, "shards": 2, "workers": 0,
            "seed": 0, "commit_every": 3, "import": {"root": str(fkd_root), "num_classes": 1000}}
    out = tmp_path / "store"
    for k in range(2):
        soft_label_shard(job(spec, labelled_images), labelled_images / "subset.tsv", k, out, out / "state")
    soft_label_store(job(spec, labelled_images), labelled_images / "subset.tsv", out)
    store = SoftLabelStore(out)
    assert store.crops_per_image == 6 and store.codec.explicit_boxes and store.meta["bytes_per_crop"] == 24
    manifest_ds = ManifestDataset(_read(labelled_images))
    for i, (coords, flips, idx, probs) in written.items():
        records = store.records(i)
        assert np.array_equal(records["idx"], idx)
        assert np.array_equal(records["flip"].astype(bool), flips)
        recovered = store.codec.decode(record_tensors(records))
        kept = recovered.gather(1, torch.from_numpy(idx.astype(np.int64)))
        assert (kept - torch.from_numpy(probs.astype(dtype).astype(np.float32))).abs().max() <= 1 / 255 + 1e-6
        assert torch.allclose(recovered.sum(1), torch.ones(6), atol=1e-5)
        w, h = manifest_ds.load(i).size
        plan = store.plan(i, w, h, records)
        exact = coords.astype(np.float64) * np.array([h, w, h, w])
        assert np.abs(plan.boxes - exact).max() <= 1.0  # within one pixel of FKD's fractional box
        assert np.array_equal(plan.flips, flips)
    item = ReplayDataset(manifest_ds, store, 4, 16, "bilinear", seed=0, pass_index=0)[0]
    assert item["image"].shape == (4, 3, 16, 16) and item["image"].dtype == torch.uint8


def test_import_names_a_missing_or_malformed_file(labelled_images, tmp_path):
    root = tmp_path / "fkd"
    write_fkd_files(labelled_images, root, np.float32, k=3)
    spec = {"name": "x", "label": {"type": "marginal_smoothing", "k": 5}, "shards": 1, "workers": 0, "seed": 0,
            "commit_every": 3, "import": {"root": str(root), "num_classes": 1000}}
    with pytest.raises(SoftLabelError, match=r"img0\.tar: holds top-3 labels"):
        soft_label_shard(job(spec, labelled_images), labelled_images / "subset.tsv", 0, tmp_path / "o", tmp_path / "st")
    (root / "train" / "n01" / "img1.tar").unlink()
    spec["label"]["k"] = 3
    with pytest.raises(SoftLabelError, match=r"not found: .*img1\.tar"):
        soft_label_shard(job(spec, labelled_images), labelled_images / "subset.tsv", 0, tmp_path / "o2", tmp_path / "st2")


def test_schema_interpolations_are_the_ones_implemented():
    import yaml

    from kdflow.config import SCHEMA_PATH

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    assert set(schema["$defs"]["interpolation"]["enum"]) == set(INTERPOLATIONS)


@pytest.mark.parametrize("cutmix_prob", [0.0, 1.0])
def test_mixup_and_cutmix_mix_crops_and_labels_with_one_lambda(cutmix_prob):
    from kdflow.distill.fkd import mix_batch

    torch.manual_seed(0)
    images = torch.stack([torch.full((3, 8, 8), float(v)) for v in range(4)])  # crop b is constant b
    target = torch.eye(4)
    out = mix_batch({"image": images, "target": target, "label": torch.arange(4)},
                    {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "cutmix_prob": cutmix_prob})
    partner = torch.arange(4).flip(0)
    for b in range(4):
        own = (out["image"][b] == b).float().mean() if cutmix_prob else None
        lam = out["target"][b, b].item() if b != partner[b] else 1.0
        if cutmix_prob:  # lambda = the share of the crop's own pixels
            assert own.item() == pytest.approx(lam, abs=1e-6)
        else:  # every pixel is lam * own + (1 - lam) * partner
            assert torch.allclose(out["image"][b], torch.full((3, 8, 8), lam * b + (1 - lam) * float(partner[b])))
    assert torch.allclose(out["target"].sum(1), torch.ones(4))


# --------------------------------------------------------------------------- labels over more classes than the data
def _wnid_dataset(root, wnids, per_class: int, split: str) -> None:
    """Solid-colour images (one colour per class, some noise) in ImageNet wnid folders."""
    from PIL import Image

    rng = np.random.default_rng(len(split))
    colours = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]
    for c, wnid in enumerate(wnids):
        (root / split / wnid).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            pixels = np.clip(np.array(colours[c]) + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / split / wnid / f"{wnid}_{k}.JPEG")


def test_fkd_labels_over_imagenet_1k_train_and_evaluate_on_a_3_class_subset(tmp_path):
    """FKD's released labels are over ImageNet-1k's 1000 classes; on a subset of a few classes the
    student's head has the labels' 1000 classes, and its evaluation maps the subset's wnids onto
    them by name (before, the job stopped when it started: 3 data classes against a 1000-class head)."""
    import json

    import yaml
    from timm.data import ImageNetInfo

    from conftest import REPO
    from kdflow import paths
    from kdflow.config import load_config, resolve_dataset, resolve_run, resolve_soft_labels, resolve_subset
    from kdflow.jobs.data import imagenet_subset, prepare_dataset
    from kdflow.jobs.pretrain import pretrain

    imagenet = list(ImageNetInfo().label_names())
    wnids = [imagenet[500], imagenet[5], imagenet[50]]  # sorted: 5, 50, 500 -> subset classes 0, 1, 2
    root = tmp_path / "in3"
    _wnid_dataset(root, wnids, 8, "train")
    _wnid_dataset(root, wnids, 4, "val")
    fkd = tmp_path / "fkd_release" / "imagenet"
    for wnid in wnids:  # every crop: the whole image, 90 % on the image's own class
        (fkd / "train" / wnid).mkdir(parents=True)
        top = imagenet.index(wnid)
        for k in range(8):
            idx = np.array([[top, 1, 2, 3, 4]] * 2, dtype=np.float32)
            probs = np.array([[0.9, 0.04, 0.03, 0.02, 0.01]] * 2, dtype=np.float32)
            torch.save([np.array([[0, 0, 1, 1]] * 2, np.float32), np.zeros(2, bool), np.stack([idx, probs], 1)],
                       fkd / "train" / wnid / f"{wnid}_{k}.tar")
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny_config.yaml").read_text())
    training = {**cfg["_train"], "epochs": 30, "batch_size": 8, "optim": {"lr": 0.1}, "schedule": {"name": "cosine"}}
    cfg.update(results=str(tmp_path / "results"), datasets={"in3": {"root": str(root)}},
               subsets={"in3_all": {"dataset": "in3", "fraction": 1.0, "seed": 0}},
               soft_labels={"released": {"data": "in3_all", "label": {"type": "marginal_smoothing", "k": 5},
                                         "shards": 1, "workers": 0,
                                         "import": {"root": str(fkd), "classes": "imagenet1k"}}},
               pretrain={"fkd": {"method": "fkd", "student": "tres", "data": "in3_all", "training": training,
                                 "fkd": {"soft_labels": "released", "crops_per_visit": 2, "single_crop_epochs": 0,
                                         "size": 16}}},
               teachers={}, demo={}, transfer={"protocols": {}, "grids": {}})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    cfg = load_config(tmp_path / "cfg.yaml")
    results = cfg["results"]
    manifests = {split: paths.dataset_manifest(results, "in3", split) for split in ("train", "test")}
    prepare_dataset(resolve_dataset(cfg, "in3"), manifests)
    subset = paths.subset_manifest(results, "in3_all")
    imagenet_subset(resolve_subset(cfg, "in3_all"), manifests["train"], subset)
    store = Path(paths.soft_labels_dir(results, "released"))
    spec = resolve_soft_labels(cfg, "released")
    soft_label_shard(spec, subset, 0, store, tmp_path / "state")
    soft_label_store(spec, subset, store)
    assert json.loads((store / "store.json").read_text())["classes"] == imagenet

    out = tmp_path / "results" / "pretrain" / "fkd"
    result = pretrain(resolve_run(cfg, "fkd"), subset, out, tmp_path / "state_fkd",
                      artefacts={"soft_labels": store / "store.json"}, val_manifest_path=manifests["test"])
    assert result["rows"][-1]["val_top1"] == 100.0  # the 3 colours, read through the wnids' ImageNet logits


def test_a_data_class_missing_from_the_label_classes_is_named(tmp_path):
    from kdflow.data.imagefolder import Manifest, Sample, write_manifest
    from kdflow.jobs.pretrain import _head_evaluation

    from PIL import Image

    (tmp_path / "cats").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "cats" / "x.png")
    data = Manifest(root=tmp_path, samples=[Sample("cats/x.png", "cats", 0)], classes=["cats", "n01440764"])
    write_manifest(tmp_path / "val.tsv", data, "d")
    student = Network("test_resnet", num_classes=3)
    with pytest.raises(ValueError, match=r"1 of the data's 2 classes are not among the head's 3 label classes "
                                         r"\(first: cats\)"):
        _head_evaluation(student, data, tmp_path / "val.tsv", {"name": "d", "root": tmp_path, "work_dir": tmp_path}, {},
                         None,
                         head_names=["n01440764", "n01443537", "n01484850"])


@pytest.mark.parametrize("change, named", [
    (lambda s: s["generate"].update(teacher={"name": "other_teacher"}), "generate.teacher.name: store 't', run 'other_teacher'"),
    (lambda s: s["generate"]["crop"].update(size=24), "generate.crop.size: store 16, run 24"),
    (lambda s: s.update(data={"name": "another_subset", "dataset": {"name": "imgs"}}),
     "data.name: store 'sub', run 'another_subset'"),
])
def test_a_store_made_with_another_teacher_subset_or_crop_config_is_refused(labelled_images, tmp_path, change,
                                                                             named):
    """A run replaying a store checks it against the soft-label config it asks for (Snakemake
    re-makes a store whose config changed; a store copied or made by hand is checked here)."""
    import copy

    from kdflow.distill.base import MethodContext
    from kdflow.distill.fkd import FKD

    build_store(labelled_images, tmp_path / "store", generation_spec(1))
    wanted = copy.deepcopy(job(generation_spec(1), labelled_images).identity)
    change(wanted)
    context = MethodContext(data=_read(labelled_images), training={"batch_size": 4}, device=torch.device("cpu"),
                            options={"crops_per_visit": 2, "temperature": 1.0, "mixup": {"enabled": False}},
                            artefacts={"soft_labels": str(tmp_path / "store" / "store.json"),
                                       "specs": {"soft_labels": wanted}})
    with pytest.raises(SoftLabelError, match=r"store\.json was made with another config than the run asks for: "
                                             + re.escape(named)):
        FKD(context)
    context.artefacts["specs"]["soft_labels"] = job(generation_spec(1), labelled_images).identity
    FKD(context)  # the store's own config: accepted
