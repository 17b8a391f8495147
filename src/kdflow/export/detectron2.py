"""A pre-trained student as a detectron2 backbone checkpoint, verified before it is written.

KDEP converts its students for detectron2 by renaming torchvision keys and pickling them with
``matching_heuristics``, which makes detectron2 align names by suffix and skip whatever does not
match, silently (methods.md 1.7c); its fine-tuning configs then paired the RGB-trained weights
with detectron2's BGR defaults. Here every student key is renamed to detectron2's ResNet names
(``stem.conv1``, ``stem.conv1.norm``, ``res2..res5``, ``convN.norm``, ``shortcut``,
``shortcut.norm``) and checked against detectron2's own backbone before anything is written:
the real one where detectron2 is importable, else the names and shapes of detectron2's ResNets
recorded from it (``detectron2_resnets.json``, generated from detectron2's
``build_resnet_backbone``). Any missing, unexpected or mis-shaped key fails the export, naming it.

Written under ``pretrain/<run>/export/detectron2/``: ``model.pkl`` (detectron2's checkpoint format,
``{"model": {name: numpy array}, "__author__": "kdflow", "matching_heuristics": True}``),
``report.json`` (every source key and where it went), and ``config.yaml``: the detectron2 config
values that must agree with the weights (pixel mean/std and channel order of the student's input
spec, stride placement, depth, res2 width), so nobody fine-tunes RGB weights on BGR input again.
"""

from __future__ import annotations

import json
import pickle
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from kdflow.export.mmseg import (RESNET_DEPTHS, discard, rename_student_keys, report_head, student_arch,
                                  with_student_names)
from kdflow.io import atomic_path, sha256_file, write_json, write_text
from kdflow.models.checkpoints import CheckpointError, check_strict, read_weights

_RECORDED = Path(__file__).with_name("detectron2_resnets.json")
_BN_LEAVES = "weight|bias|running_mean|running_var|num_batches_tracked"
# torchvision/timm ResNet names -> detectron2's (the rules of detectron2's
# tools/convert-torchvision-to-d2.py, which KDEP's converter repeats)
_RULES = (
    (re.compile(r"conv1\.weight"), lambda m: "stem.conv1.weight"),
    (re.compile(rf"bn1\.({_BN_LEAVES})"), lambda m: f"stem.conv1.norm.{m[1]}"),
    (re.compile(r"layer(\d)\.(\d+)\.conv(\d)\.weight"), lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"),
    (re.compile(rf"layer(\d)\.(\d+)\.bn(\d)\.({_BN_LEAVES})"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (re.compile(r"layer(\d)\.(\d+)\.downsample\.0\.weight"), lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.weight"),
    (re.compile(rf"layer(\d)\.(\d+)\.downsample\.1\.({_BN_LEAVES})"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
)
_HEAD = "fc."


def _resnet_name(key: str) -> str | None:
    for pattern, rename in _RULES:
        match = pattern.fullmatch(key)
        if match:
            return rename(match)
    return None


def _depth(arch: str) -> int:
    if arch not in RESNET_DEPTHS:
        raise ValueError(f"no detectron2 export for student arch {arch!r}; supported: "
                         f"{', '.join(RESNET_DEPTHS)} (MobileNetV2 needs kdflow's detectron2 backbone, "
                         "which is not written yet)")
    return RESNET_DEPTHS[arch]


def to_detectron2_names(arch: str, timm_state_dict: dict[str, torch.Tensor], source: str = "state dict"):
    """(mapped ``{detectron2 name: tensor}``, per-key report) for a timm-named ResNet student
    (see kdflow.export.mmseg.rename_student_keys)."""
    _depth(arch)
    return rename_student_keys(timm_state_dict, _resnet_name, _HEAD, "detectron2", arch, source)


def detectron2_config(arch: str, input_spec: dict) -> dict:
    """The detectron2 config values the exported weights dictate (merge them into a detection
    config; everything else is the protocol's choice)."""
    depth = _depth(arch)
    return {
        "MODEL": {
            # detectron2 normalises in INPUT.FORMAT's channel order, the order the student's
            # mean/std are given in, on the 0-255 scale
            "PIXEL_MEAN": [round(255.0 * m, 4) for m in input_spec["mean"]],
            "PIXEL_STD": [round(255.0 * s, 4) for s in input_spec["std"]],
            "RESNETS": {"DEPTH": depth,
                        "STRIDE_IN_1X1": False,  # torchvision/timm put the stride on the 3x3 conv
                        "RES2_OUT_CHANNELS": 64 if depth < 50 else 256},  # BasicBlock: res2 is 64 wide
        },
        "INPUT": {"FORMAT": input_spec["channel_order"]},
    }


@lru_cache(maxsize=None)
def recorded_parameters(arch: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of detectron2's ResNet backbone for ``arch``, as recorded from detectron2."""
    depth = _depth(arch)
    recorded = json.loads(_RECORDED.read_text())["resnets"]
    if f"resnet{depth}" not in recorded:
        raise ValueError(f"no recorded detectron2 parameters for {arch} (recorded: {', '.join(recorded)}); "
                         "install detectron2 to verify against the real backbone")
    return {name: tuple(shape) for name, shape in recorded[f"resnet{depth}"].items()}


def _real_backbone(arch: str):
    """detectron2's own ResNet backbone for ``arch``, or None where detectron2 is not installed."""
    try:
        from detectron2.config import get_cfg
        from detectron2.layers import ShapeSpec
        from detectron2.modeling.backbone.resnet import build_resnet_backbone
    except ImportError:
        return None
    cfg = get_cfg()
    resnets = detectron2_config(arch, {"mean": [0, 0, 0], "std": [1, 1, 1], "channel_order": "RGB"})["MODEL"]["RESNETS"]
    for key, value in resnets.items():
        setattr(cfg.MODEL.RESNETS, key, value)
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def verify(arch: str, mapped: dict[str, torch.Tensor], source: str) -> dict:
    """Strict check of ``mapped`` against detectron2's backbone (the real one where importable)."""
    backbone = _real_backbone(arch)
    if backbone is not None:
        own = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
        against = "detectron2's build_resnet_backbone"
    else:
        own, against = recorded_parameters(arch), f"detectron2's recorded parameters ({_RECORDED.name})"
    counts = check_strict(own, {k: tuple(v.shape) for k, v in mapped.items()}, source=f"{source} (as {against})")
    return {**counts, "against": against, "order": list(own)}


def _check_readback(path: Path, expected: dict[str, np.ndarray], final: Path) -> None:
    with open(path, "rb") as fh:
        loaded = pickle.load(fh)
    model = loaded.get("model") if isinstance(loaded, dict) else None
    if not isinstance(model, dict) or list(model) != list(expected):
        raise CheckpointError(f"{final}: the written checkpoint does not read back with the keys written")
    changed = [k for k, v in expected.items() if not np.array_equal(model[k], v) or model[k].dtype != v.dtype]
    if changed:
        raise CheckpointError(f"{final}: arrays differ after reading back: {', '.join(changed)}")


def export_detectron2(student_path, out_path, report_path, config_path) -> dict:
    """Convert ``student_path`` to detectron2's ``.pkl`` at ``out_path``, with its report and the
    matching config values; returns the report. Nothing is left at any of the three paths unless
    all were written after a successful verification."""
    student_path, out_path, report_path, config_path = map(Path, (student_path, out_path, report_path, config_path))
    discard(out_path, report_path, config_path)
    weights = read_weights(student_path)
    arch = student_arch(weights, student_path)
    mapped, keys = to_detectron2_names(arch, weights.state_dict, source=str(student_path))
    try:
        checked = verify(arch, mapped, str(student_path))
    except CheckpointError as exc:
        raise with_student_names(exc, keys) from exc
    arrays = {k: mapped[k].detach().cpu().contiguous().numpy() for k in checked.pop("order")}
    config = detectron2_config(arch, weights.metadata["input"])
    report = {**report_head("detectron2", student_path, weights, arch, keys), "config": config,
              "verification": {"strict": True, **checked}}
    header = (f"# detectron2 config values that the weights in {out_path.name} dictate ({arch}, written by kdflow\n"
              "# from the student's input spec): merge them into the detection config, change none of them\n")
    try:
        with atomic_path(out_path) as tmp:
            with open(tmp, "wb") as fh:
                pickle.dump({"model": arrays, "__author__": "kdflow", "matching_heuristics": True}, fh)
            _check_readback(tmp, arrays, out_path)
            report["output"] = {"path": str(out_path), "sha256": sha256_file(tmp)}
        import yaml

        write_text(config_path, header + yaml.safe_dump(config, sort_keys=False))
        write_json(report_path, report)
    except BaseException:
        discard(out_path, report_path, config_path)
        raise
    return report
