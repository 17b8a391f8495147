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

detectron2 has no MobileNetV2 (nor any other non-ResNet) backbone. kdflow registers its own in
detectron2's ``BACKBONE_REGISTRY`` (``build_kdflow_timm_fpn_backbone``,
kdflow.transfer.detection.detectron2_backbone): the student's timm ``features_only`` body at
strides 4-32 under detectron2's FPN. Such a student is exported under that body's names
(``body.<timm name>``), checked against the body itself (built by timm, no detectron2 needed),
and its ``config.yaml`` names the backbone and the arch (``MODEL.BACKBONE.NAME``,
``KDFLOW.ARCH``). The student tensors the pyramid does not read (MobileNetV2's 1280-wide head
conv) are dropped, and the report says so.
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


TIMM_BACKBONE = "build_kdflow_timm_fpn_backbone"  # kdflow's detectron2 backbone for non-ResNet students
_TIMM_PREFIX = "body."


def is_resnet(arch: str) -> bool:
    """True for the archs exported to detectron2's own ResNet; the others go to kdflow's backbone."""
    return arch in RESNET_DEPTHS


def _depth(arch: str) -> int:
    if arch not in RESNET_DEPTHS:
        raise ValueError(f"student arch {arch!r} is not one of detectron2's ResNets ({', '.join(RESNET_DEPTHS)})")
    return RESNET_DEPTHS[arch]


def _timm_body(arch: str):
    """kdflow's detectron2 bottom-up for ``arch`` (timm ``features_only`` at strides 4-32), on the
    meta device; a clear error for an arch without feature maps at those strides."""
    from kdflow.transfer.detection.features import feature_body

    try:
        return feature_body(arch, "meta")
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"no detectron2 export for student arch {arch!r}: it is not one of detectron2's ResNets "
                         f"({', '.join(RESNET_DEPTHS)}) and kdflow's detectron2 backbone cannot read it ({exc})") from exc


def to_detectron2_names(arch: str, timm_state_dict: dict[str, torch.Tensor], source: str = "state dict"):
    """(mapped ``{detectron2 name: tensor}``, per-key report) for a timm-named student: a ResNet
    in detectron2's ResNet names, any other arch in kdflow's backbone's (``body.<timm name>``;
    see kdflow.export.mmseg.rename_student_keys)."""
    if is_resnet(arch):
        return rename_student_keys(timm_state_dict, _resnet_name, _HEAD, "detectron2", arch, source)
    from kdflow.transfer.detection.features import unused_student_keys

    body = set(_timm_body(arch).state_dict())
    unused = {key: "not read by the feature pyramid (strides 4-32)" for key in unused_student_keys(arch)}
    head = _classifier_prefix(arch)
    return rename_student_keys(timm_state_dict, lambda key: _TIMM_PREFIX + key if key in body else None, head,
                               "detectron2", arch, source, unused=unused)


def _classifier_prefix(arch: str) -> str:
    import timm

    with torch.device("meta"):
        return timm.create_model(arch, pretrained=False).default_cfg["classifier"] + "."


def detectron2_config(arch: str, input_spec: dict) -> dict:
    """The detectron2 config values the exported weights dictate (merge them into a detection
    config; everything else is the protocol's choice)."""
    model = {
        # detectron2 normalises in INPUT.FORMAT's channel order, the order the student's mean/std
        # are given in, on the 0-255 scale
        "PIXEL_MEAN": [round(255.0 * m, 4) for m in input_spec["mean"]],
        "PIXEL_STD": [round(255.0 * s, 4) for s in input_spec["std"]],
    }
    config = {"MODEL": model, "INPUT": {"FORMAT": input_spec["channel_order"]}}
    if is_resnet(arch):
        depth = _depth(arch)
        model["RESNETS"] = {"DEPTH": depth,
                            "STRIDE_IN_1X1": False,  # torchvision/timm put the stride on the 3x3 conv
                            "RES2_OUT_CHANNELS": 64 if depth < 50 else 256}  # BasicBlock: res2 is 64 wide
    else:
        _timm_body(arch)
        model["BACKBONE"] = {"NAME": TIMM_BACKBONE}
        config["KDFLOW"] = {"ARCH": arch}  # the key kdflow's backbone adds to detectron2's config
    return config


@lru_cache(maxsize=None)
def recorded_parameters(arch: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of detectron2's ResNet backbone for ``arch``, as recorded from detectron2."""
    depth = _depth(arch)
    recorded = json.loads(_RECORDED.read_text())["resnets"]
    if f"resnet{depth}" not in recorded:
        raise ValueError(f"no recorded detectron2 parameters for {arch} (recorded: {', '.join(recorded)}); "
                         "install detectron2 to verify against the real backbone")
    return {name: tuple(shape) for name, shape in recorded[f"resnet{depth}"].items()}


@lru_cache(maxsize=None)
def recorded_detector(arch: str, head: str) -> dict:
    """detectron2's own parameters for a ResNet ``arch`` under ``head``, as recorded from a build:
    ``fpn``: ``{name: shape}`` of ``build_resnet_fpn_backbone`` (``bottom_up.*`` and the pyramid);
    ``c4``: ``{"backbone": {...}, "roi_heads.res5": {...}}`` (stem-res4, and the head's res5)."""
    recorded = json.loads(_RECORDED.read_text())[head][arch]
    as_shapes = lambda d: {name: tuple(shape) for name, shape in d.items()}  # noqa: E731
    return as_shapes(recorded) if head == "fpn" else {part: as_shapes(d) for part, d in recorded.items()}


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
    """Strict check of ``mapped`` against detectron2's backbone (the real one where importable;
    for a non-ResNet, kdflow's backbone's timm body, which is that backbone's bottom-up)."""
    backbone = _real_backbone(arch) if is_resnet(arch) else None
    if not is_resnet(arch):
        own = {_TIMM_PREFIX + k: tuple(v.shape) for k, v in _timm_body(arch).state_dict().items()}
        against = f"kdflow's detectron2 backbone {TIMM_BACKBONE} (timm features_only body of {arch})"
    elif backbone is not None:
        own = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
        against = "detectron2's build_resnet_backbone"
    else:
        own, against = recorded_parameters(arch), f"detectron2's recorded parameters ({_RECORDED.name})"
    counts = check_strict(own, {k: tuple(v.shape) for k, v in mapped.items()}, source=f"{source} (as {against})")
    return {**counts, "against": against, "order": list(own)}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler for detectron2 checkpoints of plain arrays: numpy's array reconstruction and
    builtin containers only; any other global (the vehicle of code execution) is refused."""

    _ALLOWED = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                for name in ("_reconstruct", "scalar")} | {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a detectron2 weights file holds arrays only")
        return super().find_class(module, name)


def read_detectron2_pkl(path: str | Path) -> dict:
    """A detectron2 ``.pkl`` of arrays (``{"model": {name: array}, ...}``), read without running any
    code it might carry; a file that is not one fails naming the file."""
    try:
        with open(path, "rb") as fh:
            loaded = _ArraysOnly(fh).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not a detectron2 weights file of arrays ({exc})") from exc
    if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
        raise CheckpointError(f"{path}: not a detectron2 weights file (expected a dict with 'model': {{name: array}})")
    return loaded


def _check_readback(path: Path, expected: dict[str, np.ndarray], final: Path) -> None:
    loaded = read_detectron2_pkl(path)
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
