"""Teachers: every source becomes one timm-named safetensors file with its input spec.

The ``teacher`` stage turns whatever the config names (timm pretrained weights from the local
cache, a local file in timm/torchvision/robustness naming, a seeded untrained network, or a network
the pipeline trains) into ``teachers/<name>/model.safetensors``. Consumers read only that file,
so SVD, soft labels and distillation never care where a teacher came from.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from kdflow.models.checkpoints import (CheckpointError, load_strict, read_weights, save_weights,
                                       to_timm_names)
from kdflow.models.network import InputSpec, Network, classifier_prefix

DEFAULT_NUM_CLASSES = 1000


def teacher_metadata(net: Network, name: str, source: str, extra: dict | None = None) -> dict:
    return {
        "kind": "teacher",
        "name": name,
        "arch": net.arch,
        "naming": "timm",
        "num_classes": net.net.num_classes,
        "num_features": net.num_features,
        "input": net.input_spec.as_dict(),
        "channel_order": net.input_spec.channel_order,
        "source": source,
        **(extra or {}),
    }


def from_pretrained(cfg: dict) -> Network:
    """timm's pretrained weights, from the local Hugging Face cache only (no download)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return Network(cfg["arch"], num_classes=cfg.get("num_classes", DEFAULT_NUM_CLASSES),
                       input_spec=InputSpec.from_config(cfg.get("input")), pretrained=True)
    except Exception as exc:  # timm/hub raise many kinds; all mean "not available offline"
        raise CheckpointError(
            f"teacher {cfg['name']!r}: timm pretrained weights for {cfg['arch']!r} are not in the local "
            f"Hugging Face cache (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}): {exc}. Download them "
            "once on a machine with network access, or give the teacher a 'checkpoint:' file."
        ) from exc


def from_checkpoint(cfg: dict) -> tuple[Network, dict]:
    """A local file (timm, torchvision or robustness naming), loaded strictly."""
    src = cfg["checkpoint"]
    weights = read_weights(src["path"], trust_pickle=src["trust_pickle"])
    if src["naming"] != "auto" and src["naming"] != weights.naming:
        if not (src["naming"] in ("timm", "torchvision") and weights.naming in ("timm", "torchvision")):
            raise CheckpointError(f"{src['path']}: config says naming {src['naming']!r}, "
                                  f"the file is in {weights.naming!r} naming")
    spec = InputSpec.from_config(cfg.get("input"))
    if weights.normaliser is not None:
        _check_normaliser(weights.normaliser, spec, src["path"], cfg["name"])
    num_classes = cfg.get("num_classes") or _infer_num_classes(weights.state_dict, cfg["arch"])
    net = Network(cfg["arch"], num_classes=num_classes, input_spec=spec)
    sd = to_timm_names(weights.state_dict, net.net, weights.naming, src["path"])
    report = load_strict(net.net, sd, source=src["path"], allow_missing=src["allow_missing"],
                         allow_unexpected=src["allow_unexpected"])
    return net, {"file_naming": weights.naming, "file_normaliser": weights.normaliser, "load": report}


def _check_normaliser(found: dict, spec: InputSpec, path: str, name: str) -> None:
    for key in ("mean", "std"):
        declared = list(getattr(spec, key))
        if any(abs(a - b) > 1e-4 for a, b in zip(found[key], declared)):
            raise CheckpointError(
                f"{path}: the file's normaliser {key} {found[key]} differs from teacher {name!r}'s "
                f"declared input {key} {declared}; declare the file's values under teachers.{name}.input"
            )


def _infer_num_classes(sd: dict, arch: str) -> int:
    with torch.device("meta"):
        probe = Network(arch, num_classes=1)
    weight = sd.get(classifier_prefix(probe.net) + ".weight")
    if weight is None:  # other naming schemes: torchvision's classifier.1 / fc, tonylins' classifier
        heads = [v for k, v in sd.items() if re.search(r"(^|\.)(classifier|fc)(\.\d+)?\.weight$", k) and v.ndim == 2]
        weight = heads[-1] if heads else None
    return int(weight.shape[0]) if weight is not None else 0


def from_random_init(cfg: dict) -> Network:
    torch.manual_seed(cfg["random_init"]["seed"])
    return Network(cfg["arch"], num_classes=cfg.get("num_classes", DEFAULT_NUM_CLASSES),
                   input_spec=InputSpec.from_config(cfg.get("input")))


def save_teacher(path: str | Path, net: Network, name: str, source: str, extra: dict | None = None):
    save_weights(path, net.net.state_dict(), teacher_metadata(net, name, source, extra))


def load_teacher(path: str | Path, device: torch.device | str = "cpu") -> Network:
    """A frozen teacher in eval mode, from a file written by the teacher stage."""
    weights = read_weights(path)
    meta = weights.metadata
    if meta.get("kind") != "teacher":
        raise CheckpointError(f"{path}: not a kdflow teacher file (metadata kind={meta.get('kind')!r})")
    net = Network(meta["arch"], num_classes=meta["num_classes"], input_spec=InputSpec.from_config(meta["input"]))
    load_strict(net.net, weights.state_dict, source=str(path))
    net.eval().requires_grad_(False)
    return net.to(device)
