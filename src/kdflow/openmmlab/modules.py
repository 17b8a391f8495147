"""kdflow's components in mmsegmentation's registries (imported by compat.import_mmseg()).

- ``KdepPSPHead``: PSPNet's head as KDEP trains it. Its pyramid bins reduce the input to
  ``in_channels / len(bins)`` channels each (128 per bin on ResNet-18's 512), so the concatenation
  is ``2 x in_channels`` wide before the 3x3 bottleneck; stock ``PSPHead`` gives every bin the
  head's full width (4 x 512 more channels on ResNet-18), a different and larger model.
- ``KdflowSegDataset``: reads a kdflow segmentation manifest (kdflow.data.segmentation), so every
  dataset layout is prepared once, by the prepare_dataset rule, and read the same way here.
- ``KdflowLoadImage`` / ``KdflowLoadAnnotations``: mmcv's loaders, failing with the file's path
  when it cannot be decoded (mmcv's would raise on ``None.shape`` without a path).
- ``KdflowRandomScale``: rescale by a random factor of the image's own size (KDEP's RandScale;
  mmcv's RandomResize scales relative to a fixed target size instead).
- ``KdflowGaussianBlur``: KDEP's random Gaussian blur (5x5 kernel, probability 0.5).
- ``KdflowIoUMetric``: aAcc, mIoU, mAcc (%) and every class's IoU as separate metrics.
- ``KdflowStrictBackbone``: a weight initializer that loads an exported backbone with every key
  checked (mmengine's ``Pretrained`` init loads non-strictly) and records the load report.
- ``KdflowJobHook``: what a kdflow job needs around mmengine's loop — evaluation history kept in
  the checkpoint (best and final survive an interruption), checkpoints a weights-only torch.load
  reads, a stop on SIGTERM/SIGURG that saves first, and a per-iteration CSV log.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from mmcv.cnn import ConvModule
from mmcv.transforms import BaseTransform, LoadImageFromFile
from mmengine.hooks import Hook
from mmengine.registry import HOOKS, WEIGHT_INITIALIZERS
from mmseg.datasets import BaseSegDataset
from mmseg.datasets.transforms import LoadAnnotations, Resize
from mmseg.evaluation.metrics import IoUMetric
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.decode_heads.psp_head import PPM
from mmseg.registry import DATASETS, METRICS, MODELS, TRANSFORMS

from kdflow.io import append_csv_row, keep_csv_rows_through
from kdflow.openmmlab import backbones  # noqa: F401  (registers KdflowMobileNetV2)


# ----------------------------------------------------------------------------- model
@MODELS.register_module()
class KdepPSPHead(BaseDecodeHead):
    """PSPNet head with KDEP's channel split: bins of ``bin_channels`` (default: in / #bins)."""

    def __init__(self, pool_scales=(1, 2, 3, 6), bin_channels: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.pool_scales = tuple(pool_scales)
        self.bin_channels = bin_channels or self.in_channels // len(self.pool_scales)
        self.psp_modules = PPM(self.pool_scales, self.in_channels, self.bin_channels, conv_cfg=self.conv_cfg,
                               norm_cfg=self.norm_cfg, act_cfg=self.act_cfg, align_corners=self.align_corners)
        self.bottleneck = ConvModule(self.in_channels + len(self.pool_scales) * self.bin_channels, self.channels,
                                     3, padding=1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                                     act_cfg=self.act_cfg)

    def forward(self, inputs):
        x = self._transform_inputs(inputs)
        pyramid = torch.cat([x, *self.psp_modules(x)], dim=1)
        return self.cls_seg(self.bottleneck(pyramid))


@WEIGHT_INITIALIZERS.register_module(name="KdflowStrictBackbone")
class KdflowStrictBackbone:
    """``init_cfg=dict(type="KdflowStrictBackbone", checkpoint=..., report=...)`` on a backbone:
    load the exported weights strictly (kdflow.export.mmseg.load_exported_backbone) and write the
    load report (rank 0) to ``report``."""

    def __init__(self, checkpoint: str, report: str | None = None, **_ignored):
        self.checkpoint = checkpoint
        self.report = report
        self.wholemodule = False

    def __call__(self, module) -> None:
        from kdflow.export.mmseg import load_exported_backbone
        from kdflow.io import write_json

        result = load_exported_backbone(module, self.checkpoint)
        if self.report and int(os.environ.get("RANK", "0")) == 0:
            write_json(self.report, {"checkpoint": self.checkpoint, **result})

    def _get_init_info(self) -> str:
        return f"{self.__class__.__name__}: strict load of {self.checkpoint}"


# ----------------------------------------------------------------------------- data
def _palette(n: int) -> list[list[int]]:
    """A fixed colour per class (for mmseg's visualiser; never part of a result)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, 3)).tolist()


@DATASETS.register_module()
class KdflowSegDataset(BaseSegDataset):
    """``manifest``: a kdflow segmentation manifest; ``dataset``: the resolved dataset entry whose
    ``root``/``work_dir`` the manifest's paths are relative to."""

    def __init__(self, manifest: str, dataset: dict, **kwargs):
        from kdflow.data.segmentation import read_seg_manifest

        seg = read_seg_manifest(manifest, dataset)
        self._pairs = seg.pairs()
        self.manifest_path = manifest
        metainfo = {"classes": tuple(seg.classes), "palette": _palette(len(seg.classes))}
        super().__init__(metainfo=metainfo, reduce_zero_label=seg.reduce_zero_label,
                         ignore_index=seg.ignore_index, data_root="", img_suffix="", seg_map_suffix="", **kwargs)

    def load_data_list(self) -> list[dict]:
        return [{"img_path": image, "seg_map_path": mask, "label_map": self.label_map,
                 "reduce_zero_label": self.reduce_zero_label, "seg_fields": []}
                for image, mask in self._pairs]


class UnreadableFile(RuntimeError):
    pass


@TRANSFORMS.register_module()
class KdflowLoadImage(LoadImageFromFile):
    def transform(self, results: dict) -> dict:
        try:
            out = super().transform(results)
        except Exception as exc:
            raise UnreadableFile(f"cannot read image {results.get('img_path')}: {exc}") from exc
        if out is None or out.get("img") is None:
            raise UnreadableFile(f"cannot read image {results.get('img_path')}")
        return out


@TRANSFORMS.register_module()
class KdflowLoadAnnotations(LoadAnnotations):
    def transform(self, results: dict) -> dict:
        try:
            out = super().transform(results)
        except Exception as exc:
            raise UnreadableFile(f"cannot read mask {results.get('seg_map_path')}: {exc}") from exc
        mask, image = out.get("gt_seg_map"), out.get("img")
        if mask is None:
            raise UnreadableFile(f"cannot read mask {results.get('seg_map_path')}")
        if image is not None and mask.shape[:2] != image.shape[:2]:
            raise UnreadableFile(f"mask {results.get('seg_map_path')} is {mask.shape[1]}x{mask.shape[0]}, its image "
                                 f"{results.get('img_path')} {image.shape[1]}x{image.shape[0]}")
        return out


@TRANSFORMS.register_module()
class KdflowRandomScale(BaseTransform):
    """Rescale image and mask by a factor drawn uniformly from ``ratio_range``."""

    def __init__(self, ratio_range=(0.5, 2.0)):
        self.ratio_range = tuple(ratio_range)

    def transform(self, results: dict) -> dict:
        factor = float(np.random.uniform(*self.ratio_range))
        return Resize(scale_factor=factor, keep_ratio=True).transform(results)


@TRANSFORMS.register_module()
class KdflowGaussianBlur(BaseTransform):
    """Blur the image (not the mask) with a ``kernel`` x ``kernel`` Gaussian, with probability ``prob``."""

    def __init__(self, kernel: int = 5, prob: float = 0.5):
        self.kernel, self.prob = int(kernel), float(prob)

    def transform(self, results: dict) -> dict:
        if np.random.rand() < self.prob:
            import cv2

            results["img"] = cv2.GaussianBlur(results["img"], (self.kernel, self.kernel), 0)
        return results


# ----------------------------------------------------------------------------- evaluation
@METRICS.register_module()
class KdflowIoUMetric(IoUMetric):
    """Pixel accuracy, mean IoU, mean class accuracy (all %) and ``IoU.<class>`` per class.

    A class absent from both the predictions and the ground truth has no IoU (NaN) and does not
    count in the mean, as in mmseg."""

    def compute_metrics(self, results: list) -> dict[str, float]:
        intersect, union, _, label = (torch.stack(list(parts)).sum(0).double() for parts in zip(*results))
        iou = intersect / union
        acc = intersect / label
        out = {"aAcc": 100 * float(intersect.sum() / label.sum()),
               "mIoU": 100 * float(np.nanmean(iou.numpy())),
               "mAcc": 100 * float(np.nanmean(acc.numpy()))}
        for name, value in zip(self.dataset_meta["classes"], iou.tolist()):
            out[f"IoU.{name}"] = 100 * value if not math.isnan(value) else float("nan")
        return {k: round(v, 4) if not math.isnan(v) else v for k, v in out.items()}


# ----------------------------------------------------------------------------- the job's hook
def _plain(obj):
    """A copy of ``obj`` that a weights-only ``torch.load`` reads: tensors, numbers, strings,
    lists and dicts. numpy values become tensors or numbers; other objects (mmengine's
    HistoryBuffer of smoothed log values) are left out."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            plain = _plain(value)
            if plain is not _DROP:
                out[key] = plain
        return out
    if isinstance(obj, (list, tuple)):
        items = [_plain(v) for v in obj]
        items = [v for v in items if v is not _DROP]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return _DROP


_DROP = object()
_LOG_FIELDS = ["iteration", "phase", "lr", "loss", "decode.loss_ce", "aux.loss_ce", "aAcc", "mIoU", "mAcc"]


@HOOKS.register_module()
class KdflowJobHook(Hook):
    """See the module docstring. ``log_csv``: per-iteration rows (loss terms, lr) and one row per
    evaluation; ``log_every``: iterations between training rows."""

    priority = "VERY_LOW"  # after mmengine's own hooks at every point (the checkpoint hook saves first)

    def __init__(self, log_csv: str | None = None, log_every: int = 10):
        self.log_csv = log_csv
        self.log_every = max(1, int(log_every))
        self.evaluations: list[dict] = []
        self.stop = None
        self.interrupted_by: str | None = None

    # evaluation history, carried by the checkpoint so a resumed job keeps its earlier evaluations
    def after_val_epoch(self, runner, metrics=None) -> None:
        row = {"iteration": runner.iter, **{k: float(v) for k, v in (metrics or {}).items()}}
        self.evaluations.append(row)
        self._write_row(runner, {"iteration": runner.iter, "phase": "eval",
                                 **{k: row[k] for k in ("aAcc", "mIoU", "mAcc") if k in row}})

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint["kdflow_evaluations"] = [dict(r) for r in self.evaluations]
        for key in list(checkpoint):
            checkpoint[key] = _plain(checkpoint[key])
        checkpoint["message_hub"].setdefault("log_scalars", {})

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self.evaluations = [dict(r) for r in checkpoint.get("kdflow_evaluations", [])]
        self._truncate_log(runner, int(checkpoint.get("meta", {}).get("iter", 0)))

    def _truncate_log(self, runner, iteration: int) -> None:
        """Rows written after the resumed checkpoint are re-made by the resumed run."""
        if self.log_csv and runner.rank == 0:
            keep_csv_rows_through(self.log_csv, _LOG_FIELDS, iteration)

    # stop requests (kdflow.train.preemption): saved at the next iteration's end, then stopped
    def before_train(self, runner) -> None:
        from kdflow.train.preemption import StopRequests

        self.stop = StopRequests(runner.world_size).__enter__()

    def after_train(self, runner) -> None:
        if self.stop is not None:
            self.stop.__exit__(None, None, None)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if (runner.iter + 1) % self.log_every == 0 and outputs:
            row = {"iteration": runner.iter + 1, "phase": "train",
                   "lr": runner.optim_wrapper.get_lr()["lr"][0]}
            row.update({k: round(float(torch.as_tensor(v).detach()), 6) for k, v in outputs.items() if "loss" in k})
            self._write_row(runner, row)
        if self.stop is not None and self.stop.requested():
            from kdflow.train.preemption import Interrupted

            filename = f"iter_{runner.iter + 1}.pth"
            runner.save_checkpoint(runner.work_dir, filename, save_optimizer=True, save_param_scheduler=True,
                                   by_epoch=False)  # meta iter = iterations done
            if runner.rank == 0:
                Path(runner.work_dir, "last_checkpoint").write_text(str(Path(runner.work_dir, filename)))
            self.stop.__exit__(None, None, None)
            raise Interrupted(f"stopped by {self.stop.signal_name} after iteration {runner.iter + 1}; "
                              f"state saved to {runner.work_dir}/{filename}; re-run the job to resume")

    def _write_row(self, runner, row: dict) -> None:
        if self.log_csv and runner.rank == 0:
            append_csv_row(self.log_csv, _LOG_FIELDS, row)