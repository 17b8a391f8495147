"""Segmentation transfer (mmsegmentation): protocol resolution, the mmseg config kdflow writes, and
real jobs on a small demo segmentation set — one Runner training and evaluation with a strictly
loaded exported backbone, a SIGTERM'd job that resumes from its saved iteration, a 2-rank (gloo)
job, and the compiled-ops refusal at config time."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, PicklePayload, stop_with_sigterm
from kdflow import paths
from kdflow.config import ConfigError, load_config, resolve_dataset, validate_config
from kdflow.jobs.data import demo_data, prepare_dataset
from kdflow.tasks import BUILTIN_SEG_PROTOCOLS, protocol_for_arch

RUN = "kdep_r18_r18_in48"
STUDENT = "kdep_r18_r18_in48.seed0"  # the demo pre-trains RUN once per seed: seed 0 is what seed 0 fine-tunes


def _demo_config(tmp_path: Path, iterations: int = 6, **protocol) -> Path:
    """The demo config reduced to its segmentation grid: one pre-trained run (its student is made
    by the test) and scratch, a small scene set, a few iterations."""
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["results"] = str(tmp_path / "results")
    raw["demo"]["objects8"].update(train_per_class=24, val_per_class=6)
    psp = raw["transfer"]["protocols"]["demo_psp"]
    psp.update(iterations=iterations, checkpoint_every=2, log_every=1, **protocol)
    raw["transfer"]["grids"] = {"seg": {"datasets": ["demo_seg"], "runs": ["scratch", RUN], "seeds": [0],
                                        "protocol": "demo_psp"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _prepare(cfg_path: Path, student: bool = True) -> dict:
    """The scene set and its manifests; a random ResNet-18 student exported for mmseg."""
    from kdflow.export.mmseg import export_mmseg
    from kdflow.models.checkpoints import save_weights
    from kdflow.models.network import InputSpec, Network

    cfg = load_config(cfg_path)
    results = cfg["results"]
    demo_data("objects8", cfg["demo"]["objects8"], paths.demo_dataset(results, "objects8"))
    prepare_dataset(resolve_dataset(cfg, "demo_seg"),
                    {split: paths.dataset_manifest(results, "demo_seg", split) for split in ("train", "test")})
    if student:
        torch.manual_seed(0)
        net = Network("resnet18", num_classes=16)
        student_path = paths.student_weights(results, STUDENT)
        save_weights(student_path, net.backbone_state_dict(),
                     {"arch": "resnet18", "input": InputSpec().as_dict(), "naming": "timm", "config_hash": "test"})
        export_mmseg(student_path, paths.export_weights(results, STUDENT, "mmseg"),
                     paths.export_report(results, STUDENT, "mmseg"))
    return cfg


def _script(*args, threads=1, gpus=None, **popen):
    cmd = [sys.executable, str(REPO / "workflow_scripts" / "transfer_seg.py"), *args, "--threads", str(threads)]
    if gpus:
        cmd += ["--gpus", str(gpus)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return cmd, env


def _job_dir(cfg: dict, run: str) -> Path:
    return Path(paths.transfer_dir(cfg["results"], "segmentation", "demo_seg", run, 0))


# --------------------------------------------------------------------------- protocols
def test_kdep_protocols_state_iterations_from_epochs():
    """KDEP's epochs x train images / batch 16, rounded up (methods.md 1.8)."""
    import math

    for name, (epochs, images) in {"kdep_psp_cityscapes": (200, 2975), "kdep_psp_voc": (50, 10582),
                                   "kdep_psp_ade20k": (100, 20210)}.items():
        assert BUILTIN_SEG_PROTOCOLS[name]["iterations"] == math.ceil(epochs * images / 16), name
    mnv2 = protocol_for_arch(BUILTIN_SEG_PROTOCOLS["kdep_psp"], "mobilenetv2_100")
    assert mnv2["optim"]["lr"] == 0.006 and mnv2["model"]["output_stride"] == 32 and mnv2["model"]["aux_weight"] == 0
    r18 = protocol_for_arch(BUILTIN_SEG_PROTOCOLS["kdep_psp"], "resnet18")
    assert r18["optim"]["lr"] == 0.01 and r18["model"]["output_stride"] == 8 and "arch_overrides" not in r18


def test_demo_protocol_is_kdep_psp_but_for_image_size_and_iterations():
    cfg = load_config(REPO / "config" / "config.yaml")
    demo, kdep = (dict(cfg["transfer"]["protocols"][n]) for n in ("demo_psp", "kdep_psp"))
    execution = {"workers", "checkpoint_every", "log_every"}
    differing = {k for k in set(demo) | set(kdep) if demo.get(k) != kdep.get(k)} - execution
    assert differing == {"crop_size", "iterations", "eval"}
    assert {k for k in kdep["eval"] if demo["eval"][k] != kdep["eval"][k]} == {"long_side"}


def _raw():
    """The demo config with its demo_seg grid on demo_psp (protocol checks only look at the
    protocols grids use)."""
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["transfer"]["grids"]["demo_seg"] = {"datasets": ["demo_seg"], "runs": ["scratch"], "seeds": [0],
                                            "protocol": "demo_psp"}
    return raw


def test_extends_errors_name_the_protocol():
    raw = _raw()
    raw["transfer"]["protocols"]["demo_psp"]["extends"] = "no_such_protocol"
    with pytest.raises(ConfigError, match=r"config.transfer.protocols.demo_psp.extends: unknown protocol 'no_such"):
        validate_config(raw)
    raw = _raw()
    raw["transfer"]["protocols"]["a"] = {"extends": "b"}
    raw["transfer"]["protocols"]["b"] = {"extends": "a"}
    with pytest.raises(ConfigError, match="cycle"):
        validate_config(raw)


def test_arch_overrides_are_validated_per_arch():
    raw = _raw()
    raw["transfer"]["protocols"]["demo_psp"]["arch_overrides"] = {"resnet18": {"model": {"output_stride": 7}}}
    with pytest.raises(ConfigError, match=r"demo_psp.arch_overrides.resnet18.model.output_stride: 7 is not one of"):
        validate_config(raw)


def test_a_segmentation_grid_over_a_classification_dataset_is_refused():
    raw = _raw()
    raw["transfer"]["grids"]["demo_seg"]["datasets"] = ["demo_shapes"]
    with pytest.raises(ConfigError, match=r"grids.demo_seg.datasets\[0\]: 'demo_shapes' is a classification dataset"):
        validate_config(raw)


def test_a_head_needing_compiled_ops_is_refused_when_the_config_is_read():
    from kdflow.openmmlab.compat import compiled_ops_available

    if compiled_ops_available():
        pytest.skip("full mmcv with compiled ops is installed: CCNet's head is allowed here")
    raw = _raw()
    raw["transfer"]["protocols"]["demo_psp"]["model"] = {"decode_head": "cc"}
    with pytest.raises(ConfigError, match=r"demo_psp.model.decode_head: 'cc' needs mmcv's compiled ops"):
        validate_config(raw)


def test_the_stand_in_extension_fails_only_when_an_op_is_called():
    from kdflow.openmmlab.compat import CompiledOpsMissing, compiled_ops_available, import_mmseg

    import_mmseg()
    if compiled_ops_available():
        pytest.skip("full mmcv with compiled ops is installed: no stand-in")
    import mmcv._ext as ext

    with pytest.raises(CompiledOpsMissing, match="ca_forward"):
        ext.ca_forward(None)


# --------------------------------------------------------------------------- the mmseg config
def test_written_config_is_kdeps_pspnet(tmp_path):
    from mmengine.config import Config

    from kdflow.transfer.segmentation import build_config

    cfg = load_config(REPO / "config" / "config.yaml")
    protocol = cfg["transfer"]["protocols"]["kdep_psp"]
    built = build_config(protocol=protocol, arch="resnet18", input_spec={"mean": [0.5] * 3, "std": [0.25] * 3,
                                                                          "channel_order": "RGB"},
                         num_classes=19, manifests={"train": "t.tsv", "test": "v.tsv"},
                         dataset={"name": "x", "root": "/r", "work_dir": "/w"}, seed=3, work_dir=tmp_path / "state",
                         backbone_weights="/b.pth", load_report="/l.json", log_csv="/log.csv", world_size=4, cuda=True)
    Config(built).dump(str(tmp_path / "config.py"))
    text = Config.fromfile(str(tmp_path / "config.py"))  # a plain mmseg config file
    model = text.model
    assert model.backbone.type == "ResNet" and model.backbone.depth == 18
    assert tuple(model.backbone.strides) == (1, 2, 1, 1) and tuple(model.backbone.dilations) == (1, 1, 2, 4)
    assert model.backbone.init_cfg.type == "KdflowStrictBackbone"
    assert model.backbone.norm_cfg.type == "SyncBN"  # 4 GPUs
    assert model.decode_head.type == "KdepPSPHead" and model.decode_head.channels == 512
    assert model.auxiliary_head.in_index == 2 and model.auxiliary_head.loss_decode.loss_weight == 0.4
    assert model.data_preprocessor.mean == [127.5] * 3 and model.data_preprocessor.bgr_to_rgb
    assert text.train_dataloader.batch_size == 4  # 16 over 4 GPUs
    assert text.train_cfg.max_iters == 37188
    assert text.optim_wrapper.paramwise_cfg.custom_keys.decode_head.lr_mult == 10
    assert text.param_scheduler[0].power == 0.9 and text.randomness.seed == 3


def test_kdep_psp_head_has_kdeps_channel_split():
    from kdflow.openmmlab.compat import import_mmseg

    import_mmseg()
    from mmseg.registry import MODELS

    head = MODELS.build({"type": "KdepPSPHead", "in_channels": 512, "channels": 512, "num_classes": 19,
                         "in_index": -1, "norm_cfg": {"type": "BN"}})
    assert [m[1].conv.out_channels for m in head.psp_modules] == [128] * 4
    assert head.bottleneck.conv.in_channels == 1024 and head.bottleneck.conv.out_channels == 512


# --------------------------------------------------------------------------- real jobs
@pytest.mark.slow
def test_one_job_trains_evaluates_and_records_the_strict_load(tmp_path):
    cfg_path = _demo_config(tmp_path, iterations=4)
    cfg = _prepare(cfg_path)
    cmd, env = _script("--config", str(cfg_path), "--dataset", "demo_seg", "--run-id", RUN, "--seed", "0")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    job = _job_dir(cfg, RUN)
    metrics = json.loads((job / "metrics.json").read_text())
    names = {(m["metric"], m["checkpoint"]) for m in metrics["metrics"]}
    assert {("mIoU", "best"), ("mIoU", "final"), ("mAcc", "final"), ("aAcc", "final")} <= names
    assert any(m["metric"].startswith("IoU.") for m in metrics["metrics"])
    assert metrics["seed"] == 0 and metrics["task"] == "segmentation"
    prov = json.loads((job / "provenance.json").read_text())
    export = json.loads(Path(paths.export_report(cfg["results"], STUDENT, "mmseg")).read_text())
    assert prov["load"]["loaded"] == export["verification"]["loaded"] == export["counts"]["mapped"]
    assert prov["load"]["missing"] == [] and prov["load"]["unexpected"] == []
    assert (job / "config.py").is_file() and (job / "model.pth").is_file()
    state = torch.load(job / "model.pth", weights_only=True)["state_dict"]
    assert any(k.startswith("decode_head.") for k in state)
    rows = list(csv.DictReader(open(job / "log.csv")))
    assert [r["iteration"] for r in rows if r["phase"] == "train"] == ["1", "2", "3", "4"]
    assert not Path(paths.state_dir(cfg["results"], "transfer", "segmentation", "demo_seg", RUN, "seed0")).exists()


@pytest.mark.slow
def test_a_sigtermed_job_resumes_from_its_saved_iteration(tmp_path):
    cfg_path = _demo_config(tmp_path, iterations=12)
    cfg = _prepare(cfg_path, student=False)
    state = Path(paths.state_dir(cfg["results"], "transfer", "segmentation", "demo_seg", "scratch", "seed0"))
    cmd, env = _script("--config", str(cfg_path), "--dataset", "demo_seg", "--run-id", "scratch", "--seed", "0")
    text = stop_with_sigterm(cmd, env, tmp_path / "first.log", lambda log: "Saving checkpoint at 2 iterations" in log)
    assert "Interrupted: stopped by SIGTERM after iteration" in text
    stopped_at = int(text.split("stopped by SIGTERM after iteration ")[1].split(";")[0])
    assert 2 <= stopped_at < 12
    assert (state / f"iter_{stopped_at}.pth").is_file()
    assert torch.load(state / f"iter_{stopped_at}.pth", weights_only=True)["meta"]["iter"] == stopped_at
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert f"resumed from the latest checkpoint {state}/iter_{stopped_at}.pth" in out.stdout + out.stderr
    job = _job_dir(cfg, "scratch")
    rows = [r for r in csv.DictReader(open(job / "log.csv")) if r["phase"] == "train"]
    assert [int(r["iteration"]) for r in rows] == list(range(1, 13))  # none repeated, none missing
    assert json.loads((job / "metrics.json").read_text())["metrics"]


@pytest.mark.slow
def test_two_gloo_ranks_complete_with_one_metrics_file(tmp_path):
    cfg_path = _demo_config(tmp_path, iterations=3)
    cfg = _prepare(cfg_path)
    cmd, env = _script("--config", str(cfg_path), "--dataset", "demo_seg", "--run-id", RUN, "--seed", "0",
                       threads=2, gpus=2)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "2 ranks (gloo)" in out.stdout + out.stderr
    job = _job_dir(cfg, RUN)
    assert sorted(p.name for p in job.glob("metrics*.json")) == ["metrics.json"]
    written = Path(job / "config.py").read_text()
    assert "MMDistributedDataParallel" in written and "'BN'" in written  # CPU: plain BN, DDP without devices


def test_an_engine_state_that_would_run_code_is_refused_before_mmengine_reads_it(tmp_path):
    """mmengine resumes with its own torch.load; kdflow first reads the state weights-only, so a
    crafted iter_N.pth is refused (its payload never runs) whatever torch's default is."""
    from kdflow.models.checkpoints import CheckpointError
    from kdflow.transfer.segmentation import finetune

    work, marker = tmp_path / "state", tmp_path / "payload-ran"
    work.mkdir()
    torch.save({"meta": {"iter": 4}, "state_dict": {}, "payload": PicklePayload(marker)}, work / "iter_4.pth")
    (work / "last_checkpoint").write_text(str(work / "iter_4.pth"))
    with pytest.raises(CheckpointError, match=r"iter_4\.pth: mmengine's resumable state holds objects a "
                                              r"weights-only load refuses .*delete it to start the job over"):
        finetune({"work_dir": str(work)}, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()
