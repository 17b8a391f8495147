"""The detectron2 engine: exports checked against detectron2's own FPN and C4 backbones (recorded
from a local build, so these run everywhere), kdflow's MobileNetV2 backbone export, the schedule
in iterations, the refusals (no detectron2, keys only detectron2 reads, a C4 head without a
ResNet, a pickle that carries code), and — where detectron2 is built — real detectron2 models
loaded with zero unmatched backbone tensors, one job on the demo scenes, a SIGTERM'd job that
resumes from its saved iteration, a 2-rank (gloo) job, and kdflow's box scoring against
detectron2's COCOEvaluator."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, stop_with_sigterm
from kdflow import paths
from kdflow.config import ConfigError, load_config, validate_config
from kdflow.export.detectron2 import (TIMM_BACKBONE, export_detectron2, read_detectron2_pkl, recorded_detector,
                                      to_detectron2_names)
from kdflow.models.checkpoints import CheckpointError
from kdflow.transfer.detection.detectron2_engine import solver_for

HAVE_DETECTRON2 = importlib.util.find_spec("detectron2") is not None
needs_detectron2 = pytest.mark.skipif(
    not HAVE_DETECTRON2, reason="detectron2 is not installed (it is built from source, never from PyPI); the "
    "always-on tests check the exports against its recorded parameters")
RUN = "kdep_r18_r18_in48"
STUDENT = "kdep_r18_r18_in48.seed0"  # the demo pre-trains RUN once per seed: seed 0 is what seed 0 fine-tunes


def _outputs(root: Path):
    return root / "model.pkl", root / "report.json", root / "config.yaml"


def _export(tmp_path: Path, students, arch: str) -> tuple[dict, dict]:
    net, student = students(arch)
    export_detectron2(student, *_outputs(tmp_path / arch))
    return read_detectron2_pkl(_outputs(tmp_path / arch)[0])["model"], net.backbone_state_dict()


# --------------------------------------------------------------------------- exports (always on)
@pytest.mark.parametrize("arch", ("resnet18", "resnet50"))
def test_a_resnet_export_fills_detectron2s_fpn_bottom_up_exactly(tmp_path, students, arch):
    model, _ = _export(tmp_path, students, arch)
    fpn = recorded_detector(arch, "fpn")
    bottom_up = {k[len("bottom_up."):]: v for k, v in fpn.items() if k.startswith("bottom_up.")}
    assert {k: tuple(v.shape) for k, v in model.items()} == bottom_up
    assert any(k.startswith("fpn_lateral") for k in fpn)  # the pyramid itself starts from its init


@pytest.mark.parametrize("arch, res5_loaded", [("resnet50", 60), ("resnet18", 28)])
def test_a_resnet_export_fills_the_c4_backbone_and_counts_what_fits_its_res5(tmp_path, students, arch, res5_loaded):
    """C4: stem-res4 exactly; the head's res5 is Bottleneck blocks whatever the depth, so all of a
    ResNet-50's res5 fits, and of a ResNet-18's only the tensors whose names and shapes coincide
    (the norms of conv1 and conv2, the 3x3 conv2 of both blocks, the shortcut: 28 of 60), as
    methods.md 1.8 describes."""
    model, _ = _export(tmp_path, students, arch)
    c4 = recorded_detector(arch, "c4")
    shapes = {k: tuple(v.shape) for k, v in model.items()}
    assert {k: s for k, s in shapes.items() if not k.startswith("res5.")} == c4["backbone"]
    fits = [k for k, s in c4["roi_heads.res5"].items() if shapes.get(f"res5.{k}") == s]
    assert len(fits) == res5_loaded and len(c4["roi_heads.res5"]) == 60


def test_a_mobilenetv2_export_has_kdflows_backbone_names_and_config(tmp_path, students):
    from kdflow.transfer.detection.features import feature_body

    model, sd = _export(tmp_path, students, "mobilenetv2_100")
    body = feature_body("mobilenetv2_100", "meta").state_dict()
    assert {k: tuple(v.shape) for k, v in model.items()} == {f"body.{k}": tuple(v.shape) for k, v in body.items()}
    for key, array in model.items():
        assert np.array_equal(array, sd[key[len("body."):]].numpy()), key
    report = json.loads(_outputs(tmp_path / "mobilenetv2_100")[1].read_text())
    dropped = {e["source"]: e["reason"] for e in report["keys"] if e["target"] is None}
    assert dropped["conv_head.weight"].startswith("not read by the feature pyramid")
    assert set(dropped) == {"conv_head.weight", *(f"bn2.{leaf}" for leaf in (
        "weight", "bias", "running_mean", "running_var", "num_batches_tracked"))}  # the classifier is not a key
    config = yaml.safe_load(_outputs(tmp_path / "mobilenetv2_100")[2].read_text())
    assert config["MODEL"]["BACKBONE"] == {"NAME": TIMM_BACKBONE} and config["KDFLOW"] == {"ARCH": "mobilenetv2_100"}
    assert config["INPUT"] == {"FORMAT": "RGB"} and config["MODEL"]["PIXEL_MEAN"] == [123.675, 116.28, 103.53]


def test_a_mobilenetv2_key_without_a_place_fails_naming_it(students):
    _, student = students("mobilenetv2_100")
    from kdflow.models.checkpoints import read_weights

    sd = dict(read_weights(student).state_dict)
    sd["blocks.9.9.conv_pw.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"blocks\.9\.9\.conv_pw\.weight"):
        to_detectron2_names("mobilenetv2_100", sd)


def test_a_pickle_that_carries_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": Payload()}}))
    with pytest.raises(CheckpointError, match=r"model\.pkl: not a detectron2 weights file.*refusing to load"):
        read_detectron2_pkl(path)
    assert not marker.exists()


# --------------------------------------------------------------------------- schedule and config
def _protocol(**changes) -> dict:
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["transfer"]["protocols"]["demo_frcnn"].update(engine="detectron2", **changes)
    return {**validate_config(raw)["transfer"]["protocols"]["demo_frcnn"], "name": "demo_frcnn"}


def test_epochs_become_iterations_and_a_solver_block_is_taken_as_written():
    solver = solver_for(_protocol(), trainable_images=240)  # batch 8: 30 iterations per epoch
    assert (solver.iters_per_epoch, solver.max_iter, solver.steps, solver.warmup_iters) == (30, 120, (90,), 15)
    exact = solver_for(_protocol(solver={"max_iter": 90000, "steps": [60000, 80000], "warmup_iters": 1000}), 117266)
    assert (exact.max_iter, exact.steps, exact.warmup_iters) == (90000, (60000, 80000), 1000)


def test_keys_only_detectron2_reads_are_refused_on_the_torchvision_engine():
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    frcnn = raw["transfer"]["protocols"]["demo_frcnn"]
    frcnn["solver"] = {"max_iter": 10}
    frcnn["model"]["head"] = "c4"
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    assert "protocols.demo_frcnn.solver: only engine detectron2 reads a solver block" in str(err.value)
    assert "protocols.demo_frcnn.model.head: 'c4' is detectron2's" in str(err.value)


def test_a_c4_head_for_a_mobilenetv2_run_is_refused():
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["students"]["mnv2"] = {"arch": "mobilenetv2_100"}
    raw["pretrain"]["scratch"]["student"] = "mnv2"
    frcnn = raw["transfer"]["protocols"]["demo_frcnn"]
    frcnn.update(engine="detectron2")
    frcnn["model"]["head"] = "c4"
    with pytest.raises(ConfigError, match="c4 is detectron2's ResNet C4 head; run 'scratch' has student arch "
                                          "'mobilenetv2_100'"):
        validate_config(raw)


# --------------------------------------------------------------------------- jobs
def _demo_config(tmp_path: Path, epochs: int = 1, train: int = 12, head: str = "fpn", lr: float = 0.02) -> Path:
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["results"] = str(tmp_path / "results")
    raw["demo"]["scenes8"].update(train_per_class=train, val_per_class=4)
    frcnn = raw["transfer"]["protocols"]["demo_frcnn"]
    frcnn["engine"] = "detectron2"
    frcnn["log_every"] = 1
    frcnn["model"]["head"] = head
    frcnn["training"].update(epochs=epochs, batch_size=4)
    frcnn["training"]["optim"]["lr"] = lr
    frcnn["training"]["schedule"] = {"name": "multistep", "milestones": [epochs], "warmup_epochs": 0.25}
    raw["transfer"]["grids"] = {"det": {"datasets": ["demo_det"], "runs": ["scratch", RUN], "seeds": [0],
                                        "protocol": "demo_frcnn"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _prepare(cfg_path: Path, students=None) -> dict:
    from kdflow.config import resolve_dataset
    from kdflow.jobs.data import demo_data, prepare_dataset

    cfg = load_config(cfg_path)
    results = cfg["results"]
    demo_data("scenes8", cfg["demo"]["scenes8"], paths.demo_dataset(results, "scenes8"))
    prepare_dataset(resolve_dataset(cfg, "demo_det"),
                    {split: paths.dataset_manifest(results, "demo_det", split) for split in ("train", "test")})
    if students is not None:
        export_detectron2(students("resnet18")[1], *(Path(paths.export_files(results, STUDENT, "detectron2")[k])
                                                     for k in ("weights", "report", "config")))
    return cfg


def _script(*args, gpus: int | None = None):
    cmd = [sys.executable, str(REPO / "workflow_scripts" / "transfer_det.py"), *args, "--threads", "2"]
    return cmd + (["--gpus", str(gpus)] if gpus else []), {**os.environ, "OMP_NUM_THREADS": "2"}


def _job_dir(cfg: dict, run: str) -> Path:
    return Path(paths.transfer_dir(cfg["results"], "detection", "demo_det", run, 0))


def test_without_detectron2_a_detectron2_job_fails_at_once_with_build_instructions(tmp_path):
    """detectron2 hidden from the job's interpreter: the job fails before reading any data and
    says how to build detectron2; nothing is trained by another engine."""
    cfg_path = _demo_config(tmp_path)
    code = ("import sys, runpy; sys.modules['detectron2'] = None; "
            f"sys.argv = {[str(REPO / 'workflow_scripts' / 'transfer_det.py'), '--config', str(cfg_path), '--dataset', 'demo_det', '--run-id', 'scratch', '--seed', '0']!r}; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "engine detectron2: cannot import detectron2" in out.stderr
    assert "pip install --no-build-isolation -e detectron2" in out.stderr and "engine: torchvision" in out.stderr
    assert not (tmp_path / "results" / "transfer").exists()


@needs_detectron2
@pytest.mark.parametrize("arch, head", [("resnet18", "fpn"), ("resnet50", "fpn"), ("mobilenetv2_100", "fpn"),
                                        ("resnet18", "c4"), ("resnet50", "c4")])
def test_a_detectron2_model_loads_the_export_with_zero_unmatched_backbone_tensors(tmp_path, students, arch, head):
    from detectron2.modeling import build_model

    from kdflow.export.detectron2 import detectron2_config
    from kdflow.models.network import InputSpec
    from kdflow.transfer.detection.detectron2_engine import build_config, load_export, read_export

    model_pkl, sd = _export(tmp_path, students, arch)
    protocol = _protocol()
    protocol["model"]["head"] = head
    cfg = build_config(arch=arch, weights_config=detectron2_config(arch, InputSpec().as_dict()), num_classes=8,
                       protocol=protocol, solver=solver_for(protocol, 16), seed=0, output_dir=tmp_path / "d2",
                       device="cpu", sync_bn=False)
    torch.manual_seed(0)
    model = build_model(cfg)
    report = load_export(model, read_export(_outputs(tmp_path / arch)[0]), head, "export")
    assert report["missing"] == [] and report["unexpected"] == []
    target = model.backbone.bottom_up if head == "fpn" else model.backbone
    loaded = target.state_dict()
    assert report["loaded"] == len(loaded) == len([k for k in model_pkl if head == "fpn" or not k.startswith("res5.")])
    for name, value in loaded.items():
        assert torch.equal(value, torch.from_numpy(model_pkl[name])), name
    if head == "c4":
        assert report["res5"]["loaded"] == (60 if arch == "resnet50" else 28) and report["res5"]["in_head"] == 60
        res5 = model.roi_heads.res5.state_dict()
        assert torch.equal(res5["0.conv2.weight"], torch.from_numpy(model_pkl["res5.0.conv2.weight"]))


@needs_detectron2
def test_a_wrong_shape_in_the_export_fails_naming_the_key(tmp_path, students):
    from detectron2.modeling import build_model

    from kdflow.export.detectron2 import detectron2_config
    from kdflow.models.network import InputSpec
    from kdflow.transfer.detection.detectron2_engine import build_config, load_export, read_export

    _export(tmp_path, students, "resnet18")
    protocol = _protocol()
    cfg = build_config(arch="resnet18", weights_config=detectron2_config("resnet18", InputSpec().as_dict()),
                       num_classes=8, protocol=protocol, solver=solver_for(protocol, 16), seed=0,
                       output_dir=tmp_path / "d2", device="cpu", sync_bn=False)
    weights = read_export(_outputs(tmp_path / "resnet18")[0])
    weights["res3.0.conv1.weight"] = weights["res3.0.conv1.weight"][:, :3]
    with pytest.raises(CheckpointError, match=r"shape mismatches \(1\): res3\.0\.conv1\.weight"):
        load_export(build_model(cfg), weights, "fpn", "export")


@needs_detectron2
@pytest.mark.slow
def test_one_detectron2_job_trains_evaluates_and_records_its_load(tmp_path, students):
    cfg_path = _demo_config(tmp_path)
    cfg = _prepare(cfg_path, students)
    cmd, env = _script("--config", str(cfg_path), "--dataset", "demo_det", "--run-id", RUN, "--seed", "0")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    job = _job_dir(cfg, RUN)
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["engine"] == "detectron2" and metrics["task"] == "detection"
    names = {(m["metric"], m["checkpoint"]) for m in metrics["metrics"]}
    assert {(m, c) for m in ("AP", "AP50", "AP75") for c in ("best", "final")} <= names
    prov = json.loads((job / "provenance.json").read_text())
    assert prov["load"]["loaded"] == 120 and prov["load"]["missing"] == [] and prov["load"]["into"] == "backbone.bottom_up"
    assert prov["iterations"] == 3 and prov["solver"]["iters_per_epoch"] == 3  # 12 images / batch 4, 1 epoch
    d2cfg = yaml.safe_load((job / "detectron2_config.yaml").read_text())
    assert d2cfg["MODEL"]["RESNETS"]["NORM"] == "BN" and d2cfg["MODEL"]["BACKBONE"]["FREEZE_AT"] == 0
    assert d2cfg["INPUT"]["FORMAT"] == "RGB" and d2cfg["MODEL"]["RESNETS"]["DEPTH"] == 18
    rows = list(csv.DictReader(open(job / "log.csv")))
    assert [r["phase"] for r in rows] == ["train"] * 3 + ["eval"]
    assert float(rows[0]["total_loss"]) > 0 and rows[-1]["test_AP"] != ""
    assert (job / "detectron2.log").stat().st_size > 0
    final = torch.load(job / "model_final.pth", map_location="cpu", weights_only=True)
    assert "backbone.bottom_up.stem.conv1.weight" in final["model"]
    assert final["model"]["roi_heads.box_predictor.cls_score.weight"].shape[0] == 9  # 8 pairs + background
    assert not Path(paths.state_dir(cfg["results"], "transfer", "detection", "demo_det", RUN, "seed0")).exists()


@needs_detectron2
@pytest.mark.slow
def test_a_sigtermed_detectron2_job_resumes_from_its_saved_iteration(tmp_path):
    cfg_path = _demo_config(tmp_path, epochs=2, train=40, lr=0.005)  # 10 iterations per epoch; a scratch
    # backbone at batch 4 diverges at the demo's lr
    cfg = _prepare(cfg_path)
    cmd, env = _script("--config", str(cfg_path), "--dataset", "demo_det", "--run-id", "scratch", "--seed", "0")
    log_csv = _job_dir(cfg, "scratch") / "log.csv"
    text = stop_with_sigterm(cmd, env, tmp_path / "first.log",
                             lambda _: log_csv.exists() and len(log_csv.read_text().splitlines()) >= 6)
    assert "stopped by SIGTERM after iteration" in text, text[-3000:]
    stopped_after = int(text.split("stopped by SIGTERM after iteration ")[1].split(";")[0])
    assert 5 <= stopped_after < 20
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert f"Starting training from iteration {stopped_after}" in out.stdout + out.stderr
    rows = [r for r in csv.DictReader(open(log_csv)) if r["phase"] == "train"]
    assert [int(r["iteration"]) for r in rows] == list(range(1, 21))  # none repeated, none missing
    assert json.loads((_job_dir(cfg, "scratch") / "metrics.json").read_text())["metrics"]


@needs_detectron2
@pytest.mark.slow
def test_two_gloo_ranks_run_one_detectron2_job(tmp_path, students):
    """The project's launcher with 2 processes (gloo on CPU): one metrics.json, the global batch
    split over the ranks, the evaluation gathered from both."""
    cfg_path = _demo_config(tmp_path)
    cfg = _prepare(cfg_path, students)
    cmd, env = _script("--config", str(cfg_path), "--dataset", "demo_det", "--run-id", RUN, "--seed", "0", gpus=2)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "2 ranks (gloo)" in out.stdout + out.stderr
    job = _job_dir(cfg, RUN)
    assert sorted(p.name for p in job.glob("metrics*.json")) == ["metrics.json"]
    assert json.loads((job / "provenance.json").read_text())["iterations"] == 3  # batch 4 = 2 per rank
    assert "Total inference time" in (job / "detectron2.log").read_text()


@needs_detectron2
def test_kdflows_box_scores_equal_detectron2s_coco_evaluator(tmp_path):
    """The same detections, scored by kdflow's evaluator (what both engines report) and by
    detectron2's COCOEvaluator: equal AP, AP50, AP75."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, Instances

    from kdflow.config import resolve_dataset
    from kdflow.data.detection import read_det_manifest, to_coco
    from kdflow.transfer.detection.detectron2_engine import _evaluator_class

    cfg = _prepare(_demo_config(tmp_path))
    manifest = read_det_manifest(paths.dataset_manifest(cfg["results"], "demo_det", "test"),
                                 resolve_dataset(cfg, "demo_det"))
    gt_json = tmp_path / "gt.json"
    gt_json.write_text(json.dumps(to_coco(manifest)))
    name = f"kdflow_test_{os.getpid()}"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(json_file=str(gt_json), thing_classes=list(manifest.classes),
                                  thing_dataset_id_to_contiguous_id={k + 1: k for k in range(len(manifest.classes))})
    rng = np.random.default_rng(0)
    inputs, outputs = [], []
    for s in manifest.samples:
        boxes, classes = [], []
        for x, y, w, h, cls, _ in s.boxes:  # each true box jittered, plus a false positive
            boxes += [[x + rng.uniform(-3, 3), y + rng.uniform(-3, 3), x + w, y + h], [0, 0, 20, 20]]
            classes += [cls, (cls + 1) % 8]
        found = Instances((s.height, s.width), pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
                          scores=torch.tensor(rng.uniform(0.1, 1, len(boxes)), dtype=torch.float32),
                          pred_classes=torch.tensor(classes))
        inputs.append({"image_id": s.image_id})
        outputs.append({"instances": found})
    theirs = COCOEvaluator(name, output_dir=None)
    ours = _evaluator_class()(manifest, voc07=False)
    for evaluator in (theirs, ours):
        evaluator.reset()
        evaluator.process(inputs, outputs)
    theirs, ours = theirs.evaluate()["bbox"], ours.evaluate()["bbox"]
    for metric in ("AP", "AP50", "AP75"):
        assert ours[metric] == pytest.approx(theirs[metric], abs=0.01), metric
    assert 5 < ours["AP"] < 95
