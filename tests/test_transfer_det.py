"""Detection transfer: datasets (COCO layout, VOC XML -> manifest / COCO json), box evaluation
(pycocotools and VOC07's 11-point AP), and real torchvision-engine jobs on a small demo scene set —
one job that trains, evaluates and records its strict load, a SIGTERM'd job that resumes from its
saved step, a 2-rank (gloo) job, and the refusals (a student key that does not match, a missing
annotation file before any job starts). The detectron2 engine: tests/test_detectron2_engine.py."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, stop_with_sigterm
from kdflow import paths
from kdflow.config import ConfigError, check_dataset_roots, load_config, resolve_dataset, validate_config
from kdflow.data.detection import (CROWD, DIFFICULT, OBJECT, DetManifest, DetSample, read_det_manifest,
                                   to_coco, voc_layout, write_det_manifest)
from kdflow.data.imagefolder import DatasetError
from kdflow.jobs.data import demo_data, prepare_dataset

RUN = "kdep_r18_r18_in48"
STUDENT = "kdep_r18_r18_in48.seed0"  # the demo pre-trains RUN once per seed: seed 0 is what seed 0 fine-tunes


# --------------------------------------------------------------------------- datasets
def _voc_xml(path: Path, objects: list[tuple], size=(40, 30)) -> None:
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
        f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, difficult, (x1, y1, x2, y2) in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename><size><width>{size[0]}</width>"
                    f"<height>{size[1]}</height><depth>3</depth></size>{body}</annotation>")


def _voc_tree(root: Path) -> Path:
    from PIL import Image

    sets = {("VOC2007", "trainval"): ["000005"], ("VOC2012", "trainval"): ["2008_000002"],
            ("VOC2007", "test"): ["000001"]}
    for (year, image_set), ids in sets.items():
        lists = root / year / "ImageSets" / "Main"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i in ids:
            (root / year / "JPEGImages").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30)).save(root / year / "JPEGImages" / f"{i}.jpg")
            _voc_xml(root / year / "Annotations" / f"{i}.xml",
                     [("dog", 0, (1, 1, 10, 20)), ("person", 1, (11, 5, 40, 30))])
    return root


def test_voc_xml_becomes_a_manifest_and_a_coco_json_with_the_difficult_box_as_ignore_region(tmp_path):
    root = _voc_tree(tmp_path / "VOCdevkit")
    manifests = voc_layout({"name": "voc", "root": str(root)}, tmp_path / "work")
    assert [s.image for s in manifests["train"].samples] == ["VOC2007/JPEGImages/000005.jpg",
                                                           "VOC2012/JPEGImages/2008_000002.jpg"]
    test = manifests["test"].samples[0]
    dog, person = manifests["test"].classes.index("dog"), manifests["test"].classes.index("person")
    # 1-based inclusive pixels -> x = xmin - 1, w = xmax - xmin + 1 (detectron2's conversion)
    assert test.boxes == ((0, 0, 10, 20, dog, OBJECT), (10, 4, 30, 26, person, DIFFICULT))
    coco = json.loads((tmp_path / "work" / "voc07_test_instances.json").read_text())
    assert [(a["iscrowd"], a["difficult"]) for a in coco["annotations"]] == [(0, 0), (1, 1)]
    assert coco["categories"][dog]["name"] == "dog" and coco["categories"][dog]["id"] == dog + 1
    path = tmp_path / "test.tsv"
    write_det_manifest(path, manifests["test"], "voc")
    back = read_det_manifest(path, {"name": "voc", "root": str(root), "work_dir": str(tmp_path / "work")})
    assert back.samples[0].boxes == test.boxes and back.classes == manifests["test"].classes


def test_a_voc_object_of_an_unknown_class_is_named_with_its_file(tmp_path):
    root = _voc_tree(tmp_path / "VOCdevkit")
    bad = root / "VOC2007" / "Annotations" / "000001.xml"
    _voc_xml(bad, [("dragon", 0, (1, 1, 5, 5))])
    with pytest.raises(DatasetError, match=rf"{bad}: object class 'dragon'"):
        voc_layout({"name": "voc", "root": str(root)}, tmp_path / "work")


def _raw(tmp_path: Path) -> dict:
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["results"] = str(tmp_path / "results")
    return raw


def test_missing_detection_files_are_named_before_any_job_starts(tmp_path):
    root = _voc_tree(tmp_path / "VOCdevkit")
    (root / "VOC2012" / "ImageSets" / "Main" / "trainval.txt").unlink()
    coco = tmp_path / "coco"
    (coco / "train2017").mkdir(parents=True)
    raw = _raw(tmp_path)
    raw["datasets"].update(voc={"root": str(root), "format": "voc"},
                           coco={"root": str(coco), "format": "coco", "train_split": "train2017",
                                 "val_split": "val2017"})
    cfg = validate_config(raw)
    with pytest.raises(ConfigError) as err:
        check_dataset_roots(cfg, ["voc", "coco"])
    text = str(err.value)
    assert f"config.datasets.voc.root: file {root}/VOC2012/ImageSets/Main/trainval.txt does not exist" in text
    assert f"config.datasets.coco.root: file {coco}/annotations/instances_train2017.json does not exist" in text
    assert f"config.datasets.coco.root: folder {coco}/val2017 does not exist" in text


def test_a_detection_grid_over_a_classification_dataset_is_refused(tmp_path):
    raw = _raw(tmp_path)
    raw["transfer"]["grids"]["demo_det"]["datasets"] = ["demo_shapes"]
    with pytest.raises(ConfigError, match=r"grids.demo_det.datasets\[0\]: 'demo_shapes' is a classification dataset"):
        validate_config(raw)


def test_multistep_schedule_needs_its_milestones(tmp_path):
    from kdflow.train.trainer import lr_at

    raw = _raw(tmp_path)
    del raw["transfer"]["protocols"]["demo_frcnn"]["training"]["schedule"]["milestones"]
    with pytest.raises(ConfigError, match="demo_frcnn.training.schedule: 'milestones' is a required property"):
        validate_config(raw)
    schedule = {"name": "multistep", "milestones": [8.1, 10.8], "gamma": 0.1, "warmup_epochs": 0.0}
    assert [round(lr_at(e, 0.02, schedule, 12), 6) for e in (0, 8.0, 8.1, 10.9)] == [0.02, 0.02, 0.002, 0.0002]


# --------------------------------------------------------------------------- evaluation
def _gt_manifest() -> DetManifest:
    samples = [DetSample("a.png", 64, 64, 1, ((0, 0, 20, 20, 0, OBJECT), (30, 30, 20, 20, 1, OBJECT))),
               DetSample("b.png", 64, 64, 2, ((10, 10, 30, 30, 0, OBJECT), (40, 0, 10, 10, 1, CROWD)))]
    return DetManifest(image_root=Path("."), samples=samples, classes=["cat", "dog"])


def test_pycocotools_scores_perfect_and_shifted_detections():
    from kdflow.transfer.detection.evaluation import coco_metrics

    manifest = _gt_manifest()
    gt = to_coco(manifest)
    perfect = [{"image_id": s.image_id, "category_id": b[4] + 1, "bbox": list(b[:4]), "score": 0.9}
               for s in manifest.samples for b in s.boxes if b[5] == OBJECT]
    scores = coco_metrics(gt, perfect, manifest.classes)
    assert scores["AP"] == pytest.approx(100.0) and scores["AP/cat"] == pytest.approx(100.0)
    assert scores["AP/dog"] == pytest.approx(100.0)
    on_crowd = perfect + [{"image_id": 2, "category_id": 2, "bbox": [40, 0, 10, 10], "score": 0.95}]
    assert coco_metrics(gt, on_crowd, manifest.classes)["AP"] == pytest.approx(100.0)  # an ignore region
    shifted = [{**d, "bbox": [d["bbox"][0] + d["bbox"][2] * 0.3, *d["bbox"][1:]]} for d in perfect]  # IoU 0.54
    shifted_scores = coco_metrics(gt, shifted, manifest.classes)
    assert shifted_scores["AP50"] == pytest.approx(100.0) and shifted_scores["AP75"] == pytest.approx(0.0)
    assert coco_metrics(gt, [], manifest.classes)["AP"] == 0.0


def test_voc07_eleven_point_ap_on_known_values():
    from kdflow.transfer.detection.evaluation import voc07_ap, voc07_metrics

    samples = [DetSample("a.png", 64, 64, 1, ((0, 0, 10, 10, 0, OBJECT), (20, 20, 10, 10, 0, OBJECT),
                                              (40, 40, 10, 10, 0, DIFFICULT)))]
    gt = to_coco(DetManifest(Path("."), samples, ["cat"]))
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [40, 40, 10, 10], "score": 0.8},  # on the difficult box
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.7},  # a duplicate: false
            {"image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "score": 0.6}]
    # recall 0.5 at precision 1 (1/1), then 1.0 at precision 2/3: 6 points of 1, 5 of 2/3
    assert voc07_ap(gt, dets, 1, 0.5) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert voc07_metrics(gt, dets)["voc07_AP50"] == pytest.approx(100 * (6 + 10 / 3) / 11, abs=1e-3)


# --------------------------------------------------------------------------- real jobs
def _demo_config(tmp_path: Path, epochs: int = 1, train: int = 16, **training) -> Path:
    """The demo config reduced to its detection grid: one pre-trained run (its student is made by
    the test) and scratch, a small scene set, one or a few epochs."""
    raw = _raw(tmp_path)
    raw["demo"]["scenes8"].update(train_per_class=train, val_per_class=6)
    frcnn = raw["transfer"]["protocols"]["demo_frcnn"]
    frcnn["training"].update(epochs=epochs, batch_size=4, **training)
    frcnn["training"]["schedule"] = {"name": "multistep", "milestones": [epochs], "warmup_epochs": 0.25}
    raw["transfer"]["grids"] = {"det": {"datasets": ["demo_det"], "runs": ["scratch", RUN], "seeds": [0],
                                        "protocol": "demo_frcnn"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _prepare(cfg_path: Path, student: bool = True, rename: dict | None = None) -> dict:
    from kdflow.models.checkpoints import save_weights
    from kdflow.models.network import InputSpec, Network

    cfg = load_config(cfg_path)
    results = cfg["results"]
    demo_data("scenes8", cfg["demo"]["scenes8"], paths.demo_dataset(results, "scenes8"))
    prepare_dataset(resolve_dataset(cfg, "demo_det"),
                    {split: paths.dataset_manifest(results, "demo_det", split) for split in ("train", "test")})
    if student:
        torch.manual_seed(0)
        sd = Network("resnet18", num_classes=16).backbone_state_dict()
        for old, new in (rename or {}).items():
            sd[new] = sd.pop(old)
        save_weights(paths.student_weights(results, STUDENT), sd,
                     {"arch": "resnet18", "input": InputSpec().as_dict(), "naming": "timm", "config_hash": "test"})
    return cfg


def _script(*args, threads=1, gpus=None):
    cmd = [sys.executable, str(REPO / "workflow_scripts" / "transfer_det.py"), *args, "--threads", str(threads)]
    if gpus:
        cmd += ["--gpus", str(gpus)]
    return cmd, {**os.environ, "OMP_NUM_THREADS": str(threads)}


def _job_dir(cfg: dict, run: str) -> Path:
    return Path(paths.transfer_dir(cfg["results"], "detection", "demo_det", run, 0))


def test_demo_scenes_hold_tight_boxes_of_several_objects(tmp_path):
    from PIL import Image

    cfg = _prepare(_demo_config(tmp_path), student=False)
    manifest = read_det_manifest(paths.dataset_manifest(cfg["results"], "demo_det", "train"),
                                 resolve_dataset(cfg, "demo_det"))
    assert len(manifest) == 16 and manifest.classes[:2] == ["disk_hstripes", "disk_dots"]
    assert all(2 <= len(s.boxes) <= 3 for s in manifest.samples)
    sample = manifest.samples[0]
    pixels = np.asarray(Image.open(manifest.path(sample)), dtype=float)
    for x, y, w, h, _, flag in sample.boxes:
        assert flag == OBJECT and 0 <= x and x + w <= 64 and 0 <= y and y + h <= 64
        assert 12 <= max(w, h) <= 28  # radius 0.15-0.21 of 64 px: the pre-training scale
        inside = pixels[int(y):int(y + h), int(x):int(x + w)].std()
        assert inside > 0.05 * 255  # a textured object, not background


@pytest.mark.slow
def test_one_job_trains_evaluates_and_records_the_strict_load(tmp_path):
    cfg_path = _demo_config(tmp_path, epochs=1)
    cfg = _prepare(cfg_path)
    cmd, env = _script("--config", str(cfg_path), "--dataset", "demo_det", "--run-id", RUN, "--seed", "0")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    job = _job_dir(cfg, RUN)
    metrics = json.loads((job / "metrics.json").read_text())
    names = {(m["metric"], m["checkpoint"]) for m in metrics["metrics"]}
    assert {(m, c) for m in ("AP", "AP50", "AP75") for c in ("best", "final")} <= names
    assert any(m["metric"].startswith("AP/") for m in metrics["metrics"])  # per-class AP
    assert metrics["task"] == "detection" and metrics["seed"] == 0 and metrics["engine"] == "torchvision"
    prov = json.loads((job / "provenance.json").read_text())
    assert prov["load"]["loaded"] == 120 and prov["load"]["missing"] == [] and prov["load"]["unexpected"] == []
    rows = list(csv.DictReader(open(job / "log.csv")))
    assert len(rows) == 1 and float(rows[0]["loss_classifier"]) > 0 and "test_AP" in rows[0]
    from safetensors.torch import load_file

    detector = load_file(job / "model.safetensors")
    assert "backbone.body.conv1.weight" in detector and "roi_heads.box_predictor.cls_score.weight" in detector
    assert detector["roi_heads.box_predictor.cls_score.weight"].shape[0] == 9  # 8 pairs + background
    assert not Path(paths.state_dir(cfg["results"], "transfer", "detection", "demo_det", RUN, "seed0"),
                    "last.pt").exists()


def test_a_student_key_that_does_not_match_fails_naming_it(tmp_path):
    from kdflow.jobs.transfer import job_args, transfer_detection

    cfg_path = _demo_config(tmp_path)
    cfg = _prepare(cfg_path, rename={"layer1.0.conv1.weight": "layer1.0.conv9.weight"})
    args = job_args(cfg, "detection", "demo_det", RUN, 0)
    with pytest.raises(ValueError) as err:
        transfer_detection(args.run, args.dataset, args.protocol, 0, args.out_dir, args.state, args.manifests,
                           args.student)
    assert "missing keys (1): layer1.0.conv1.weight" in str(err.value)
    assert "unexpected keys (1): layer1.0.conv9.weight" in str(err.value)
    assert not (_job_dir(cfg, RUN) / "metrics.json").exists()


def test_a_detectron2_protocol_reads_the_runs_detectron2_export(tmp_path):
    from kdflow.jobs.transfer import job_args

    raw = yaml.safe_load(_demo_config(tmp_path).read_text())
    raw["transfer"]["protocols"]["demo_frcnn"]["engine"] = "detectron2"
    cfg = validate_config(raw)
    assert job_args(cfg, "detection", "demo_det", RUN, 0).student.endswith("export/detectron2/model.pkl")
    assert job_args(cfg, "detection", "demo_det", "scratch", 0).student is None


@pytest.mark.slow
def test_a_sigtermed_job_resumes_from_its_saved_step(tmp_path):
    cfg_path = _demo_config(tmp_path, epochs=3, train=24)
    cfg = _prepare(cfg_path, student=False)
    cmd, env = _script("--config", str(cfg_path), "--dataset", "demo_det", "--run-id", "scratch", "--seed", "0")
    text = stop_with_sigterm(cmd, env, tmp_path / "first.log", lambda log: "epoch=1.0 pass=1" in log)
    assert "stopped by SIGTERM" in text, text[-3000:]
    state = Path(paths.state_dir(cfg["results"], "transfer", "detection", "demo_det", "scratch", "seed0"))
    saved = torch.load(state / "last.pt", map_location="cpu", weights_only=False)
    assert saved["passes_done"] >= 1
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "resuming after" in out.stdout + out.stderr
    rows = list(csv.DictReader(open(_job_dir(cfg, "scratch") / "log.csv")))
    assert [float(r["epoch"]) for r in rows] == [1.0, 2.0, 3.0]  # none repeated, none missing
    assert json.loads((_job_dir(cfg, "scratch") / "metrics.json").read_text())["metrics"]


@pytest.mark.slow
def test_two_gloo_ranks_complete_with_one_metrics_file(tmp_path):
    cfg_path = _demo_config(tmp_path, epochs=1)
    cfg = _prepare(cfg_path)
    cmd, env = _script("--config", str(cfg_path), "--dataset", "demo_det", "--run-id", RUN, "--seed", "0",
                       threads=2, gpus=2)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "2 ranks (gloo)" in out.stdout + out.stderr
    job = _job_dir(cfg, RUN)
    assert sorted(p.name for p in job.glob("metrics*.json")) == ["metrics.json"]
    rows = list(csv.DictReader(open(job / "log.csv")))
    assert len(rows) == 1 and int(rows[0]["images"]) == 16  # the global batch over both ranks


@pytest.mark.parametrize("arch, unused", [("resnet18", []), ("resnet50", []),
                                          ("mobilenetv2_100", ["bn2.bias", "bn2.num_batches_tracked", "bn2.running_mean",
                                                               "bn2.running_var", "bn2.weight", "conv_head.weight"])])
def test_every_backbone_tensor_comes_from_the_student(arch, unused):
    """ResNet-18/50 and MobileNetV2 (blocks of 24/32/96/320 channels at strides 4-32, as KDEP's
    MobileNetV2-FPN): each backbone tensor equals the student's; only the head conv is left out."""
    from kdflow.models.network import Network
    from kdflow.transfer.detection.features import feature_layout
    from kdflow.transfer.detection.torchvision_engine import build_detector, load_student

    cfg = validate_config(_raw(Path("/nonexistent")))
    model = cfg["transfer"]["protocols"]["demo_frcnn"]["model"]
    torch.manual_seed(0)
    student = Network(arch, num_classes=0).backbone_state_dict()
    detector = build_detector(arch, {"mean": [0.5] * 3, "std": [0.25] * 3, "channel_order": "RGB"}, 8, model)
    report = load_student(detector, arch, student, "student.safetensors")
    assert report["not_read_by_the_pyramid"] == unused and report["missing"] == []
    body = detector.backbone.body.state_dict()
    assert report["loaded"] == len(body) and all(torch.equal(body[k], student[k]) for k in body)
    if arch.startswith("mobilenetv2"):
        assert feature_layout(arch)[1] == [24, 32, 96, 320]
    detector.eval()
    with torch.no_grad():
        out = detector([torch.rand(3, 64, 64)])
    assert set(out[0]) == {"boxes", "labels", "scores"}


def test_a_bgr_student_sees_bgr_images():
    from kdflow.transfer.detection.torchvision_engine import build_detector

    cfg = validate_config(_raw(Path("/nonexistent")))
    model = cfg["transfer"]["protocols"]["demo_frcnn"]["model"]
    seen = []
    detector = build_detector("resnet18", {"mean": [0.0] * 3, "std": [1.0] * 3, "channel_order": "BGR"}, 8, model)
    detector.backbone.body.conv1.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    image = torch.zeros(3, 64, 64)
    image[0] = 1.0  # pure red
    detector.eval()
    with torch.no_grad():
        detector([image])
    assert seen[0][0, 2].mean() > 0.9 and seen[0][0, 0].abs().max() < 1e-6  # red arrives as the last channel
