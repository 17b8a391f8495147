"""Segmentation transfer with mmsegmentation: a kdflow protocol -> an mmseg config -> mmengine's Runner.

The config is built here, in code, from the protocol (kdflow.tasks, schema ``seg_protocol``) and the
student's architecture and input spec, and written to the job folder as a plain mmseg config file,
so mmseg's own tools can re-run or test the model. The backbone is initialised from the exported
student (kdflow.export.mmseg) by a strict loader, never by mmengine's non-strict ``Pretrained``;
a scratch run starts from mmseg's own random init under the job's seed.

mmengine's Runner trains (iteration-based loop, poly schedule, x10 lr on the heads) and evaluates
the val split every ``eval.every`` iterations and at the end. Its resumable state (checkpoints a
weights-only ``torch.load`` reads) lives in the job's state folder, so an interrupted job resumes
from its last saved iteration. The job around it (provenance, metrics.json) is kdflow.jobs.transfer.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kdflow.tasks import protocol_for_arch

# decode heads by protocol name: (mmseg type, which backbone outputs it reads, extra arguments)
_HEADS = {
    "kdep_psp": ("KdepPSPHead", -1, {"pool_scales": (1, 2, 3, 6)}),
    "psp": ("PSPHead", -1, {"pool_scales": (1, 2, 3, 6)}),
    "fcn": ("FCNHead", -1, {"num_convs": 2, "concat_input": True}),
    "aspp": ("ASPPHead", -1, {"dilations": (1, 12, 24, 36)}),
    "uper": ("UPerHead", "all", {"pool_scales": (1, 2, 3, 6)}),
    "cc": ("CCHead", -1, {"recurrence": 2}),
}
_RESNET_DILATION = {  # output stride -> (strides, dilations) of the four stages
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
}
_MNV2_DILATION = {  # output stride -> (strides, dilations) of MobileNetV2's seven stages
    8: ((1, 2, 2, 1, 1, 1, 1), (1, 1, 1, 2, 2, 4, 4)),
    16: ((1, 2, 2, 2, 1, 1, 1), (1, 1, 1, 1, 1, 2, 2)),
    32: ((1, 2, 2, 2, 1, 2, 1), (1, 1, 1, 1, 1, 1, 1)),
}


class SegmentationProtocolError(ValueError):
    pass


def _backbone(arch: str, output_stride: int, norm_cfg: dict) -> dict:
    from kdflow.export.mmseg import backbone_config

    if arch.startswith("resnet"):
        strides, dilations = _RESNET_DILATION[output_stride]
        return backbone_config(arch, strides=strides, dilations=dilations, norm_cfg=norm_cfg)
    if arch.startswith("mobilenetv2"):
        strides, dilations = _MNV2_DILATION[output_stride]
        return backbone_config(arch, strides=strides, dilations=dilations, norm_cfg=norm_cfg)
    return backbone_config(arch)  # raises, naming the supported architectures


def _heads(protocol: dict, arch: str, num_classes: int, norm_cfg: dict) -> dict:
    from kdflow.export.mmseg import backbone_channels

    model = protocol["model"]
    channels = backbone_channels(arch)
    head_type, reads, extra = _HEADS[model["decode_head"]]
    in_index = list(range(len(channels))) if reads == "all" else len(channels) - 1
    in_channels = list(channels) if reads == "all" else channels[-1]
    common = {"num_classes": num_classes, "norm_cfg": norm_cfg, "align_corners": False,
              "dropout_ratio": model["dropout"]}
    decode = {"type": head_type, "in_channels": in_channels, "in_index": in_index, "channels": model["channels"],
              **extra, **common,
              "loss_decode": {"type": "CrossEntropyLoss", "use_sigmoid": False,
                              "loss_weight": model["decode_loss_weight"]}}
    heads = {"decode_head": decode}
    if model["aux_weight"] > 0:
        heads["auxiliary_head"] = {
            "type": "FCNHead", "in_channels": channels[-2], "in_index": len(channels) - 2,
            "channels": model["aux_channels"], "num_convs": 1, "concat_input": False, **common,
            "loss_decode": {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": model["aux_weight"]}}
    return heads


def _pipelines(protocol: dict) -> tuple[list, list]:
    crop, aug, ev = protocol["crop_size"], protocol["augment"], protocol["eval"]
    train = [{"type": "KdflowLoadImage"}, {"type": "KdflowLoadAnnotations"},
             {"type": "KdflowRandomScale", "ratio_range": list(aug["scale_range"])}]
    if aug["rotate"] > 0:
        train.append({"type": "RandomRotate", "prob": 1.0, "degree": aug["rotate"], "pad_val": 0, "seg_pad_val": 255})
    if aug["blur"]:
        train.append({"type": "KdflowGaussianBlur", "kernel": 5, "prob": 0.5})
    train.append({"type": "RandomCrop", "crop_size": (crop, crop), "cat_max_ratio": 1.0})
    if aug["flip"] > 0:
        train.append({"type": "RandomFlip", "prob": aug["flip"]})
    if aug["photometric"]:
        train.append({"type": "PhotoMetricDistortion"})
    train.append({"type": "PackSegInputs"})
    test = [{"type": "KdflowLoadImage"},
            {"type": "Resize", "scale": (ev["long_side"], ev["long_side"]), "keep_ratio": True},
            {"type": "KdflowLoadAnnotations"}, {"type": "PackSegInputs"}]
    return train, test


def _loader(manifest: str, dataset: dict, pipeline: list, batch: int, workers: int, train: bool) -> dict:
    # training draws batches from an endless shuffled stream (iterations, not epochs)
    sampler = {"type": "InfiniteSampler", "shuffle": True} if train else {"type": "DefaultSampler", "shuffle": False}
    return {
        "batch_size": batch, "num_workers": workers, "persistent_workers": workers > 0, "sampler": sampler,
        "dataset": {"type": "KdflowSegDataset", "manifest": str(manifest), "dataset": _plain_entry(dataset),
                    "pipeline": pipeline},
    }


def _plain_entry(dataset: dict) -> dict:
    """The dataset entry the manifest's paths resolve against, as plain config values."""
    return {"name": dataset["name"], "root": str(dataset["root"]), "work_dir": str(dataset["work_dir"])}


def build_config(*, protocol: dict, arch: str, input_spec: dict, num_classes: int, manifests: dict, dataset: dict,
                 seed: int, work_dir: str | Path, backbone_weights: str | None, load_report: str | None,
                 log_csv: str, world_size: int, cuda: bool) -> dict:
    """The mmseg config (a plain dict) of one transfer job; ``protocol`` is the resolved slice."""
    protocol = protocol_for_arch(protocol, arch)
    model_cfg, optim = protocol["model"], protocol["optim"]
    if protocol["batch_size"] % world_size:
        raise SegmentationProtocolError(f"batch_size {protocol['batch_size']} does not split over {world_size} "
                                        "processes; give the job a GPU count that divides it")
    norm_type = "SyncBN" if model_cfg["norm"] == "sync_bn" and world_size > 1 and cuda else "BN"
    norm_cfg = {"type": norm_type, "requires_grad": True}
    backbone = _backbone(arch, model_cfg["output_stride"], norm_cfg)
    if backbone_weights is not None:
        backbone["init_cfg"] = {"type": "KdflowStrictBackbone", "checkpoint": str(backbone_weights),
                                "report": load_report}
    crop = protocol["crop_size"]
    scale = 255.0
    mean = [m * scale for m in input_spec["mean"]]
    std = [s * scale for s in input_spec["std"]]
    ev = protocol["eval"]
    test_cfg = {"mode": "whole"} if ev["mode"] == "whole" else {
        "mode": "slide", "crop_size": (crop, crop), "stride": (ev["stride"], ev["stride"])}
    model = {
        "type": "EncoderDecoder",
        "data_preprocessor": {"type": "SegDataPreProcessor", "mean": mean, "std": std,
                              # images are read BGR (OpenCV); an RGB student gets them flipped
                              "bgr_to_rgb": input_spec["channel_order"] == "RGB",
                              "pad_val": 0, "seg_pad_val": 255, "size": (crop, crop)},
        "backbone": backbone,
        **_heads(protocol, arch, num_classes, norm_cfg),
        "train_cfg": {},
        "test_cfg": test_cfg,
    }
    train_pipeline, test_pipeline = _pipelines(protocol)
    per_rank = protocol["batch_size"] // world_size
    iterations = protocol["iterations"]
    every = ev["every"] or iterations
    workers = protocol["workers"]
    return {
        "default_scope": "mmseg",
        "custom_imports": {"imports": ["kdflow.openmmlab.modules"], "allow_failed_imports": False},
        "work_dir": str(work_dir),
        "model": model,
        "train_dataloader": _loader(manifests["train"], dataset, train_pipeline, per_rank, workers, train=True),
        "val_dataloader": _loader(manifests["test"], dataset, test_pipeline, 1, workers, train=False),
        "val_evaluator": {"type": "KdflowIoUMetric", "iou_metrics": ["mIoU"]},
        "train_cfg": {"type": "IterBasedTrainLoop", "max_iters": iterations, "val_interval": every},
        "val_cfg": {"type": "ValLoop"},
        "optim_wrapper": {
            "type": "OptimWrapper",
            "optimizer": {"type": "SGD", "lr": optim["lr"], "momentum": optim["momentum"],
                          "weight_decay": optim["weight_decay"]},
            "paramwise_cfg": {"custom_keys": {"decode_head": {"lr_mult": optim["head_lr_mult"]},
                                              "auxiliary_head": {"lr_mult": optim["head_lr_mult"]}}},
        },
        "param_scheduler": [{"type": "PolyLR", "eta_min": optim["min_lr"], "power": optim["poly_power"],
                             "begin": 0, "end": iterations, "by_epoch": False}],
        "default_hooks": {
            "timer": {"type": "IterTimerHook"},
            "logger": {"type": "LoggerHook", "interval": protocol["log_every"], "log_metric_by_epoch": False},
            "param_scheduler": {"type": "ParamSchedulerHook"},
            "checkpoint": {"type": "CheckpointHook", "by_epoch": False, "interval": protocol["checkpoint_every"],
                           "max_keep_ckpts": 1, "save_last": False},
            "sampler_seed": {"type": "DistSamplerSeedHook"},
        },
        "custom_hooks": [{"type": "KdflowJobHook", "log_csv": str(log_csv), "log_every": protocol["log_every"]}],
        "env_cfg": {"cudnn_benchmark": False, "mp_cfg": {"mp_start_method": "fork", "opencv_num_threads": 0},
                    "dist_cfg": {"backend": "nccl" if cuda else "gloo"}},
        "randomness": {"seed": seed, "deterministic": False},
        "launcher": "pytorch" if world_size > 1 else "none",
        "log_level": "INFO",
        "load_from": None,
        "resume": True,
        **_ddp_on_cpu(world_size, cuda),
    }


def _ddp_on_cpu(world_size: int, cuda: bool) -> dict:
    """mmengine wraps a distributed model with ``device_ids=[LOCAL_RANK]``, which DDP refuses for
    a CPU module (gloo ranks); there it must be None."""
    if world_size == 1 or cuda:
        return {}
    return {"model_wrapper_cfg": {"type": "MMDistributedDataParallel", "device_ids": None,
                                  "broadcast_buffers": False, "find_unused_parameters": False}}


def finetune(config: dict, out_dir: str | Path) -> dict:
    """Train and evaluate with mmengine's Runner; returns the evaluations and the final model path.

    The config is written to ``out_dir/config.py`` first (mmseg's tools read it). Every rank runs
    this; rank 0 writes the files."""
    from kdflow.openmmlab.compat import import_mmseg

    import_mmseg()
    from mmengine.config import Config
    from mmengine.runner import Runner

    out_dir = Path(out_dir)
    cfg = Config(config)
    last = Path(cfg.work_dir) / "last_checkpoint"  # mmengine's pointer to the state it resumes from
    if last.is_file():
        from kdflow.models.checkpoints import check_engine_state

        check_engine_state(last.read_text().strip(), "mmengine")
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg.dump(str(out_dir / "config.py"))
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook = next(h for h in runner.hooks if type(h).__name__ == "KdflowJobHook")
    model_path = out_dir / "model.pth"
    if rank == 0:
        _save_model(runner, model_path)
    return {"evaluations": list(hook.evaluations), "model": str(model_path), "log_dir": runner.log_dir,
            "iterations": runner.iter}


def _save_model(runner, path: Path) -> None:
    """The fine-tuned model as plain tensors (``{"state_dict": ...}``): mmseg's tools and a
    weights-only torch.load both read it."""
    import torch

    from kdflow.io import write_with

    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    write_with(path, lambda tmp: torch.save({"state_dict": state}, tmp))


def keep_engine_log(log_dir: str | Path, out_dir: str | Path) -> None:
    """Copy mmengine's text log of this attempt next to the results."""
    for log in Path(log_dir).glob("*.log"):
        shutil.copy2(log, Path(out_dir) / "mmengine.log")


def summarise(evaluations: list[dict]) -> list[dict]:
    """mIoU, mAcc and aAcc at the best (by mIoU) and at the final evaluation; per-class IoU at both."""
    if not evaluations:
        raise RuntimeError("fine-tuning ended without an evaluation of the val split")
    best = max(evaluations, key=lambda r: r["mIoU"])
    final = evaluations[-1]
    rows = []
    for which, row in (("best", best), ("final", final)):
        for metric, value in row.items():
            if metric == "iteration" or value != value:  # NaN: a class absent from predictions and labels
                continue
            rows.append({"metric": metric, "value": round(float(value), 4), "checkpoint": which,
                         "iteration": int(row["iteration"])})
    return rows
