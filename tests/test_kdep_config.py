"""config/kdep.yaml: the KDEP paper grid builds its DAG over placeholders, and without the switch
stops at once naming every path still to fill in."""

from __future__ import annotations

import re
import subprocess

from conftest import REPO, tool
from test_workflow import planned_jobs


def dry_run(config_name: str, *extra):
    """``snakemake -n`` of one of the shipped configs, from the repository root."""
    cmd = [tool("snakemake"), "-n", "--configfile", str(REPO / "config" / config_name), *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def _dry_run(*extra):
    return dry_run("kdep.yaml", *extra)


def test_paper_grid_job_counts():
    out = _dry_run("--config", "allow_placeholders=True")
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = planned_jobs(out.stdout + out.stderr)
    assert jobs == {
        "prepare_dataset": 10,  # ImageNet, CIFAR-100, DTD, Caltech-256, CUB-200, Cityscapes, VOC-aug, ADE20K,
        # COCO, VOC 07+12
        "imagenet_subset": 2,  # 10 % (128 per class) and 100 %
        "teacher": 2,  # MS-R50, SP-R50
        "teacher_eval": 2,
        "svd_weights": 2,  # one per teacher, on the 10 % subset
        "pretrain": 7,  # 5 KDEP runs + 2 supervised baselines (scratch needs no pre-training)
        "transfer_cls": 9 * 4 * 2,  # (5 KDEP + 2 supervised + 2 scratch) x 4 datasets x 2 seeds
        "export_mmseg": 7,  # every run with a student
        "transfer_seg": 9 * 3 * 2,  # the same 9 runs x Cityscapes, VOC-aug, ADE20K x 2 seeds
        "export_detectron2": 7,  # every run with a student: ResNet-18 to detectron2's ResNet, MobileNetV2 to kdflow's
        "transfer_det": 9 * 2 * 2,  # the same 9 runs x COCO, VOC 07+12 x 2 seeds (detectron2: R18-C4, MNv2-FPN)
        "collect_results": 1,
        "tables": 1,  # classification, segmentation, detection, main, cost, pretraining, published
        "plots": 1,
        "all": 1,
    }
    text = out.stdout + out.stderr
    assert "results/svd/ms_r50/imgnet_128k.safetensors" in text and "results/svd/sp_r50/imgnet_128k.safetensors" in text
    assert "imgnet_full.safetensors" not in text  # the 100 % runs reuse the 10 % SVD, as KDEP does
    assert "results/pretrain/kdep_msr50_mnv2_in128k/export/mmseg/backbone.pth" in text
    assert "results/transfer/segmentation/voc_aug/scratch_r18/seed1/metrics.json" in text
    assert "results/transfer/detection/coco/kdep_msr50_mnv2_infull/seed1/metrics.json" in text
    assert "results/pretrain/kdep_msr50_mnv2_infull/export/detectron2/model.pkl" in text


def test_unfilled_paths_are_all_named():
    out = _dry_run()
    assert out.returncode != 0
    named = re.findall(r"^\s+(config\.[\w.]+): <FILL", out.stdout + out.stderr, re.M)
    assert sorted(named) == sorted([
        "config.datasets.imagenet.root", "config.datasets.cifar100.root", "config.datasets.dtd.root",
        "config.datasets.caltech256.root", "config.datasets.cub200.root", "config.datasets.cityscapes.root",
        "config.datasets.voc_aug.root", "config.datasets.voc_aug.sbd_root", "config.datasets.ade20k.root",
        "config.datasets.coco.root", "config.datasets.voc_det.root",
        "config.teachers.ms_r50.checkpoint.path", "config.teachers.sp_r50.checkpoint.path",
    ])
    assert "allow_placeholders=True" in out.stdout + out.stderr
