"""Downstream tasks: what each transfer task brings to the pipeline, in one registry.

A task is a choice of a transfer grid (``task:``) and of a protocol (``task:``, the protocol's
schema branch). Its entry names the Snakemake rule that makes one result
(``transfer/<task>/<dataset>/<run>/seed<k>/metrics.json``), the ``$defs`` entry of its protocol
schema, the metric its table shows, and the protocols usable by name without defining them.
Adding a task = an entry here, a ``$defs`` protocol schema, a rule in ``rules/transfer.smk``, a
``kdflow.jobs`` function and its ``kdflow.transfer`` module; final targets, tables, config
validation and the hand-run scripts follow the registry.

Torch-free: the Snakefile imports it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Task:
    name: str
    rule: str  # the rule (and workflow script) that makes one transfer result
    protocol_schema: str  # $defs entry of the protocol's schema branch
    metric: str  # the main metric, shown by the task's table
    builtin_protocols: dict = field(default_factory=dict)
    dataset_kind: str = "classification"  # the kind of dataset its grids may name (see dataset_kind)
    export: str | None = None  # the export stage its jobs read the student from (None: the student file)
    engine_exports: dict = field(default_factory=dict)  # per protocol ``engine``: overrides ``export``

    def export_for(self, protocol: dict) -> str | None:
        """The export stage a job of this task under ``protocol`` reads the student from."""
        return self.engine_exports.get(protocol.get("engine"), self.export)


# KDEP's classification transfer protocol (methods.md 1.8): full fine-tuning, SGD 0.9, wd 5e-4,
# lr 0.001, 150 epochs with x0.1 every 50, batch 64, RandomResizedCrop(224) + flip, test
# Resize(256) + CenterCrop(224), test top-1 every 5 epochs. KDEP feeds DTD, Caltech-256 and CUB
# unnormalised images; ``kdep_unnormalised`` reproduces that quirk. An entry of the same name in a
# config replaces the built-in one.
_KDEP_CLS = {
    "task": "classification",
    "training": {
        "epochs": 150,
        "batch_size": 64,
        "optim": {"lr": 0.001, "momentum": 0.9, "weight_decay": 0.0005},
        "schedule": {"name": "step", "step_epochs": 50, "gamma": 0.1},
        "augment": {"size": 224, "scale": [0.08, 1.0], "color_jitter": 0.0, "lighting": 0.0},
        "eval": {"resize": 256, "crop": 224},
        "eval_every": 5,
    },
    "normalize": "student",
}
BUILTIN_CLS_PROTOCOLS = {
    "kdep": _KDEP_CLS,
    "kdep_unnormalised": {**_KDEP_CLS, "normalize": "none"},
    "kdep_cifar100": {**_KDEP_CLS,
                      "normalize": {"mean": [0.5071, 0.4867, 0.4408], "std": [0.2675, 0.2565, 0.2761]}},
}

# KDEP's segmentation protocol (methods.md 1.8): PSPNet on a dilated ResNet-18 (output stride 8),
# bins (1,2,3,6) of in/4 channels, 512-wide bottleneck, FCN auxiliary head on stage 3 (weight 0.4),
# crop 512, batch 16, SGD 0.9 / wd 1e-4 / lr 0.01 with x10 on the heads, poly 0.9, random scale,
# rotation +-10, blur, flip; single-scale sliding-window evaluation. KDEP states epochs; the
# iterations below are epochs x train images / batch 16, rounded up:
#   Cityscapes 200 x 2975 (fine train) / 16 = 37187.5 -> 37188, test images' long side 2048
#   VOC2012-aug 50 x 10582 (trainaug) / 16 = 33068.75 -> 33069, scale 0.5-1.5, long side 512
#   ADE20K 100 x 20210 (training) / 16 = 126312.5 -> 126313, long side 512
# KDEP's MobileNetV2 variant: no dilation (output stride 32), its head on the 1280-channel conv,
# no auxiliary head but the main loss counted 1.4 times (its aux loss is the main loss: a quirk of
# KDEP's code, reproduced), lr 0.006 on Cityscapes.
_MNV2 = "mobilenetv2_100"
_KDEP_PSP = {
    "task": "segmentation",
    "iterations": 37188,
    "batch_size": 16,
    "crop_size": 512,
    "model": {"decode_head": "kdep_psp", "output_stride": 8, "aux_weight": 0.4},
    "optim": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0001, "head_lr_mult": 10.0, "poly_power": 0.9},
    "augment": {"scale_range": [0.5, 2.0], "rotate": 10, "blur": True, "photometric": True, "flip": 0.5},
    "eval": {"mode": "slide", "long_side": 2048, "stride": 341, "every": 4000},
    "arch_overrides": {_MNV2: {"optim": {"lr": 0.006},
                               "model": {"output_stride": 32, "aux_weight": 0.0, "decode_loss_weight": 1.4}}},
}
_MNV2_LR_001 = {_MNV2: {"optim": {"lr": 0.01}, "model": {"output_stride": 32, "aux_weight": 0.0,
                                                         "decode_loss_weight": 1.4}}}
BUILTIN_SEG_PROTOCOLS = {
    "kdep_psp": _KDEP_PSP,  # = Cityscapes
    "kdep_psp_cityscapes": _KDEP_PSP,
    "kdep_psp_voc": {**_KDEP_PSP, "iterations": 33069,
                     "augment": {**_KDEP_PSP["augment"], "scale_range": [0.5, 1.5]},
                     "eval": {**_KDEP_PSP["eval"], "long_side": 512}, "arch_overrides": _MNV2_LR_001},
    "kdep_psp_ade20k": {**_KDEP_PSP, "iterations": 126313,
                        "eval": {**_KDEP_PSP["eval"], "long_side": 512}, "arch_overrides": _MNV2_LR_001},
}

# Detection with the torchvision engine on KDEP's datasets: Faster R-CNN + FPN, SGD lr 0.02,
# momentum 0.9, wd 1e-4, batch 16, SyncBN, flips, KDEP's multi-scale sizes and test size 800
# (methods.md 1.8). KDEP's schedules are detectron2 iterations at batch 16; in epochs:
#   COCO 2017 train (118287 images): 90k iterations = 12.17 epochs -> 12; steps 60k/80k = 8.1/10.8
#     -> 8, 11; warm-up 1000 iterations = 0.135 epochs; short side 640-800 (step 32)
#   VOC 07+12 trainval (16551 images): 18k = 17.4 epochs -> 17; steps 12k/16k = 11.6/15.5;
#     warm-up 100 iterations = 0.097 epochs; short side 480-800 (step 32)
_TV_FRCNN = {
    "task": "detection",
    "engine": "torchvision",
    "training": {"epochs": 12, "batch_size": 16, "optim": {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.0001},
                 "schedule": {"name": "multistep", "milestones": [8.1, 10.8], "gamma": 0.1, "warmup_epochs": 0.135}},
    "model": {"norm": "sync_bn", "train_sizes": list(range(640, 801, 32)), "test_size": 800},
}
# KDEP's own detection protocols on the detectron2 engine (methods.md 1.8): its iterations exactly
# (COCO 1x: 90k, steps 60k/80k, detectron2's 1000-iteration warm-up; VOC: 18k, steps 12k/16k,
# warm-up 100), batch 16, lr 0.02, SyncBN (never frozen), short sides 640-800 / 480-800, test 800.
# KDEP ran ResNet-18 with the C4 head and MobileNetV2 with FPN; both heads exist for ResNets.
# kdflow's decay_norm_and_bias false stands for detectron2's default of no decay on norms.
_D2_FRCNN = {
    "task": "detection",
    "engine": "detectron2",
    "training": {"batch_size": 16, "optim": {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.0001,
                                             "decay_norm_and_bias": False},
                 "schedule": {"name": "multistep", "milestones": [8.1, 10.8], "gamma": 0.1}},
    "solver": {"max_iter": 90000, "steps": [60000, 80000], "warmup_iters": 1000},
    "model": {"norm": "sync_bn", "train_sizes": list(range(640, 801, 32)), "test_size": 800},
}
_D2_FRCNN_VOC = {**_D2_FRCNN, "solver": {"max_iter": 18000, "steps": [12000, 16000], "warmup_iters": 100},
                 "model": {**_D2_FRCNN["model"], "train_sizes": list(range(480, 801, 32))}}
BUILTIN_DET_PROTOCOLS = {
    "kdep_frcnn_fpn_coco": _D2_FRCNN,
    "kdep_frcnn_fpn_voc": _D2_FRCNN_VOC,
    "kdep_frcnn_c4_coco": {**_D2_FRCNN, "model": {**_D2_FRCNN["model"], "head": "c4"}},
    "kdep_frcnn_c4_voc": {**_D2_FRCNN_VOC, "model": {**_D2_FRCNN_VOC["model"], "head": "c4"}},
    "tv_frcnn_fpn_coco": _TV_FRCNN,
    "tv_frcnn_fpn_voc": {**_TV_FRCNN,
                         "training": {**_TV_FRCNN["training"], "epochs": 17,
                                      "schedule": {"name": "multistep", "milestones": [11.6, 15.5], "gamma": 0.1,
                                                   "warmup_epochs": 0.097}},
                         "model": {**_TV_FRCNN["model"], "train_sizes": list(range(480, 801, 32))}},
}

TASKS: dict[str, Task] = {
    "classification": Task("classification", rule="transfer_cls", protocol_schema="cls_protocol", metric="top1",
                           builtin_protocols=BUILTIN_CLS_PROTOCOLS),
    "segmentation": Task("segmentation", rule="transfer_seg", protocol_schema="seg_protocol", metric="mIoU",
                         builtin_protocols=BUILTIN_SEG_PROTOCOLS, dataset_kind="segmentation", export="mmseg"),
    "detection": Task("detection", rule="transfer_det", protocol_schema="det_protocol", metric="AP",
                      builtin_protocols=BUILTIN_DET_PROTOCOLS, dataset_kind="detection",
                      engine_exports={"torchvision": None, "detectron2": "detectron2"}),
}

# Decode heads built from mmcv ops that need its compiled extension (CCNet's criss-cross
# attention): refused when the config is read on an install without them (mmcv-lite).
HEADS_NEEDING_COMPILED_OPS = ("cc",)

# The kind of data each dataset format holds (a grid of a task names datasets of its kind only).
from kdflow.data.detection import DETECTION_FORMATS  # noqa: E402  (torch-free)
from kdflow.data.segmentation import SEGMENTATION_FORMATS  # noqa: E402  (torch-free)


def dataset_kind(entry: dict) -> str:
    """``segmentation``, ``detection`` or ``classification``, from a dataset entry's format."""
    if entry.get("format") in SEGMENTATION_FORMATS:
        return "segmentation"
    return "detection" if entry.get("format") in DETECTION_FORMATS else "classification"


def merge(base: dict, override: dict) -> dict:
    """``override`` deep-merged over ``base`` (dicts merge key by key; anything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def protocol_for_arch(protocol: dict, arch: str) -> dict:
    """A protocol as it applies to a student of ``arch``: its ``arch_overrides`` entry merged in."""
    overrides = protocol.get("arch_overrides", {})
    base = {k: v for k, v in protocol.items() if k != "arch_overrides"}
    return merge(base, overrides.get(arch, {}))


def builtin_protocols() -> dict:
    """Every task's built-in protocols, by name (names are unique across tasks)."""
    merged: dict = {}
    for task in TASKS.values():
        clash = set(merged) & set(task.builtin_protocols)
        if clash:
            raise ValueError(f"built-in protocol names used by two tasks: {sorted(clash)}")
        merged.update(copy.deepcopy(task.builtin_protocols))
    return merged
