"""A pre-trained student as an mmsegmentation backbone, verified before it is written.

KDEP hands its students to segmentation as a bare torchvision state dict that the segmentation
code loads with ``strict=False`` (methods.md 1.7b): a key that does not match is skipped without a
word and that layer trains from its random init. Here the student's timm names are mapped to the
mmseg backbone's names, the backbone is built and the mapped weights are loaded into it strictly
(every missing, unexpected or mis-shaped key fails the export), and only then are the weights and
a per-key report written. The transfer job loads them strictly again (:func:`load_exported_backbone`;
mmengine's ``Pretrained`` init would load non-strictly).

Backbones: torchvision/timm ResNets load into mmseg ``ResNet`` under their own names (mmseg's
``ResNetV1c`` has a three-conv stem that matches no torchvision key); MobileNetV2 goes into
kdflow's ``KdflowMobileNetV2`` (mmseg's MobileNetV2 plus the 1280-wide head conv KDEP distils
into; kdflow.openmmlab.backbones), whose names differ from timm's in every key.
"""

from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from kdflow.io import atomic_path, sha256_file, write_json
from kdflow.models.checkpoints import CheckpointError, load_strict, read_weights

RESNET_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
MOBILENET_V2 = "mobilenetv2_100"
SUPPORTED = (*RESNET_DEPTHS, MOBILENET_V2)

_CLASSIFIERS = {"resnet": "fc", "mobilenetv2": "classifier"}  # timm's head prefix per family

# timm mobilenetv2_100 -> mmseg MobileNetV2. mmseg's InvertedResidual keeps its convolutions in one
# Sequential ``conv``: [expand 1x1,] depthwise 3x3, linear 1x1, each a ConvModule (``.conv``, ``.bn``).
# The first stage (expand ratio 1: timm's DepthwiseSeparableConv) has no expand conv, so its
# depthwise conv is ``conv.0``; there timm's ``conv_pw`` is the *linear* conv, elsewhere the expand.
_MNV2_TOP = {"conv_stem": "conv1.conv", "bn1": "conv1.bn", "conv_head": "conv_head.conv", "bn2": "conv_head.bn"}
_MNV2_FIRST_BLOCK = {"conv_dw": "conv.0.conv", "bn1": "conv.0.bn", "conv_pw": "conv.1.conv", "bn2": "conv.1.bn"}
_MNV2_BLOCK = {"conv_pw": "conv.0.conv", "bn1": "conv.0.bn", "conv_dw": "conv.1.conv", "bn2": "conv.1.bn",
               "conv_pwl": "conv.2.conv", "bn3": "conv.2.bn"}
_LEAVES = {"conv": {"weight"}, "bn": {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}}
_MNV2_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(\w+)")
_MNV2_TOP_KEY = re.compile(r"(\w+)\.(\w+)")


def _unsupported(arch: str) -> ValueError:
    return ValueError(f"no mmseg backbone for student arch {arch!r}; supported: {', '.join(SUPPORTED)}")


def _family(arch: str) -> str:
    if arch in RESNET_DEPTHS:
        return "resnet"
    if arch == MOBILENET_V2:
        return "mobilenetv2"
    raise _unsupported(arch)


# ----------------------------------------------------------------------------- configs
def backbone_config(arch: str, **overrides) -> dict:
    """The mmseg backbone config for a student arch (default strides and dilations: output
    stride 32), with ``overrides`` (e.g. ``strides``/``dilations`` for a dilated ResNet) on top."""
    norm_cfg = dict(type="BN", requires_grad=True)
    if _family(arch) == "resnet":
        config = dict(type="ResNet", depth=RESNET_DEPTHS[arch], num_stages=4, out_indices=(0, 1, 2, 3),
                      strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1),
                      style="pytorch",  # stride on the 3x3 conv, as torchvision and timm
                      contract_dilation=False,  # every block of a dilated stage dilated, as KDEP's PSPNet
                      norm_cfg=norm_cfg, norm_eval=False)
    else:
        config = dict(type="KdflowMobileNetV2", widen_factor=1.0, strides=(1, 2, 2, 2, 1, 2, 1),
                      dilations=(1, 1, 1, 1, 1, 1, 1), out_indices=(1, 2, 4, 7), norm_cfg=norm_cfg,
                      act_cfg=dict(type="ReLU6"), norm_eval=False)
    config.update(copy.deepcopy(overrides))
    return config


def backbone_channels(arch: str) -> list[int]:
    """Channels of each output of :func:`backbone_config`'s backbone at its default out_indices."""
    if _family(arch) == "resnet":
        expansion = 1 if RESNET_DEPTHS[arch] < 50 else 4  # BasicBlock / Bottleneck
        return [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
    return [24, 32, 96, 1280]


def build_backbone(config: dict) -> nn.Module:
    """The mmseg backbone ``config`` describes (mmseg imported through kdflow's compat layer)."""
    from kdflow.openmmlab.compat import import_mmseg

    import_mmseg()
    from mmseg.registry import MODELS

    return MODELS.build(copy.deepcopy(config))


# ----------------------------------------------------------------------------- key map
def _mobilenetv2_name(key: str) -> str | None:
    """mmseg name of a timm mobilenetv2_100 backbone key; None for a key the map does not know."""
    block = _MNV2_BLOCK_KEY.fullmatch(key)
    if block:
        stage, index, module, leaf = block.groups()
        part = (_MNV2_FIRST_BLOCK if stage == "0" else _MNV2_BLOCK).get(module)
        prefix = f"layer{int(stage) + 1}.{index}.{part}"
    else:
        top = _MNV2_TOP_KEY.fullmatch(key)
        if not top:
            return None
        module, leaf = top.groups()
        part = prefix = _MNV2_TOP.get(module)
    if part is None or leaf not in _LEAVES[part.rsplit(".", 1)[-1]]:
        return None
    return f"{prefix}.{leaf}"


def _resnet_name(key: str) -> str:
    return key  # torchvision's names = timm's = mmseg ResNet's; load_strict judges them


def rename_student_keys(timm_state_dict: dict[str, torch.Tensor], rename, head: str, engine: str, arch: str,
                        source: str, unused: dict[str, str] | None = None):
    """(mapped ``{engine name: tensor}``, per-key report) by ``rename`` (a timm key -> the engine's
    name, or None for a key it does not know).

    Every source key appears in the report once: ``{"source", "target", "shape"}``, plus
    ``"reason"`` for a dropped key. Only the classifier head (keys starting with ``head``) and the
    keys of ``unused`` (key -> why the engine's backbone has no place for it) are dropped; any
    other key without a name fails, naming it, rather than vanish.
    """
    mapped: dict[str, torch.Tensor] = {}
    report, unknown = [], []
    unused = unused or {}
    for key, tensor in timm_state_dict.items():
        entry = {"source": key, "target": None, "shape": list(tensor.shape)}
        if key.startswith(head):
            entry["reason"] = f"classifier head ({head}*): not part of a {engine} backbone"
        elif key in unused:
            entry["reason"] = unused[key]
        else:
            entry["target"] = target = rename(key)
            if target is None:
                unknown.append(key)
                continue
            if target in mapped:
                raise CheckpointError(f"{source}: two keys map to {engine}'s {target} (the second: {key})")
            mapped[target] = tensor
        report.append(entry)
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} key(s) with no {engine} name for a {arch} backbone: "
                              + ", ".join(unknown))
    return mapped, report


def to_mmseg_names(arch: str, timm_state_dict: dict[str, torch.Tensor], source: str = "state dict"):
    """(mapped ``{mmseg name: tensor}``, per-key report) for a timm-named student (see
    :func:`rename_student_keys`)."""
    family = _family(arch)
    rename = _resnet_name if family == "resnet" else _mobilenetv2_name
    return rename_student_keys(timm_state_dict, rename, _CLASSIFIERS[family] + ".", "mmseg", arch, source)


# ----------------------------------------------------------------------------- export
def student_arch(weights, path: Path) -> str:
    """The student's arch from its metadata; the file must be a kdflow student (timm names, input spec)."""
    meta = weights.metadata
    if weights.naming != "timm" or "arch" not in meta:
        raise CheckpointError(f"{path}: not a kdflow student (timm-named safetensors with 'arch' in its "
                              f"metadata); naming {weights.naming!r}, metadata keys {sorted(meta)}")
    if "input" not in meta:
        raise CheckpointError(f"{path}: its metadata has no 'input' (mean/std/channel_order), which the "
                              "transfer job needs to normalise images as the student was trained")
    return meta["arch"]


def with_student_names(exc: CheckpointError, report: list[dict]) -> CheckpointError:
    """A strict check's failure, with the student's own names added where the engine's differ."""
    message = str(exc)
    renamed = [f"{e['source']} -> {e['target']}" for e in report
               if e["target"] and e["target"] != e["source"]
               and re.search(rf"(?<![\w.]){re.escape(e['target'])}(?![\w.])", message)]
    return CheckpointError(message + "\n  student keys of those names: " + ", ".join(renamed)) if renamed else exc


def _load_verified(backbone: nn.Module, mapped: dict, report: list[dict], what: str) -> dict:
    """load_strict, with the student's own names added to a failure's message where they differ."""
    try:
        return load_strict(backbone, mapped, source=what)
    except CheckpointError as exc:
        raise with_student_names(exc, report) from exc


def _check_readback(path: Path, expected: dict[str, torch.Tensor], final: Path) -> None:
    """The written file, read weights-only, holds exactly ``expected``."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
        raise CheckpointError(f"{final}: the written backbone cannot be read back weights-only: {exc}") from exc
    if not isinstance(loaded, dict) or list(loaded) != list(expected):
        raise CheckpointError(f"{final}: the written backbone does not read back with the keys written")
    changed = [k for k, v in expected.items() if not isinstance(loaded[k], torch.Tensor)
               or loaded[k].dtype != v.dtype or not torch.equal(loaded[k], v)]
    if changed:
        raise CheckpointError(f"{final}: tensors differ after reading back: {', '.join(changed)}")


def report_head(engine: str, student_path: Path, weights, arch: str, keys: list[dict]) -> dict:
    """What every export's report starts with: the student file, its input spec, the key fates."""
    return {
        "engine": engine,
        "source": {"path": str(student_path), "sha256": sha256_file(student_path)},
        "arch": arch,
        "input": weights.metadata["input"],
        "student_config_hash": weights.metadata.get("config_hash"),
        "counts": {"source": len(keys), "mapped": sum(1 for e in keys if e["target"] is not None),
                   "dropped": sum(1 for e in keys if e["target"] is None)},
        "keys": keys,
    }


def discard(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def export_mmseg(student_path, out_path, report_path) -> dict:
    """Convert ``student_path`` to an mmseg backbone state dict at ``out_path`` (``torch.save`` of
    plain tensors) and its report at ``report_path`` (JSON); returns the report.

    Both files are written only after the strict load succeeded, and on any failure neither is
    left, not even from an earlier export: it would pass for this student's.
    """
    student_path, out_path, report_path = Path(student_path), Path(out_path), Path(report_path)
    discard(out_path, report_path)
    weights = read_weights(student_path)
    arch = student_arch(weights, student_path)
    mapped, keys = to_mmseg_names(arch, weights.state_dict, source=str(student_path))
    config = backbone_config(arch)
    backbone = build_backbone(config)
    loaded = _load_verified(backbone, mapped, keys, f"{student_path} (as mmseg {config['type']})")
    ordered = {k: mapped[k].detach().cpu().contiguous() for k in backbone.state_dict()}
    report = {
        **report_head("mmseg", student_path, weights, arch, keys),
        "backbone": config,
        "channels": backbone_channels(arch),
        "verification": {"strict": True, "loaded": loaded["loaded"], "weights_only_readback": True},
    }
    try:
        with atomic_path(out_path) as tmp:
            torch.save(ordered, tmp)
            _check_readback(tmp, ordered, out_path)
            report["output"] = {"path": str(out_path), "sha256": sha256_file(tmp)}
        write_json(report_path, report)
    except BaseException:
        discard(out_path, report_path)
        raise
    return report


def load_exported_backbone(backbone_module: nn.Module, path) -> dict:
    """Load an :func:`export_mmseg` file into a built backbone strictly (dilation changes no
    shape, so a dilated backbone takes the same file); returns load_strict's report."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"exported backbone not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: cannot be read weights-only as an exported backbone ({first})") from exc
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a plain {{name: tensor}} state dict (re-export it with "
                              "kdflow.export.mmseg.export_mmseg)")
    return load_strict(backbone_module, sd, source=str(path))
