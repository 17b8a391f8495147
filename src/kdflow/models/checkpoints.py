"""Reading weight files in the formats researchers have, and loading them strictly.

Formats read: safetensors; torch pickles holding a bare state dict or one under ``model`` /
``state_dict``; KDEP's robustness format (``module.model.[model.]<key>`` with an
``module.attacker.model.*`` copy and ``module.normalizer.new_mean/new_std`` buffers).

Loading is strict: every missing, unexpected or mis-shaped key is reported, and the load fails
unless each is covered by an explicit ``allow_missing`` / ``allow_unexpected`` pattern.
"""

from __future__ import annotations

import fnmatch
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from kdflow.io import write_with

_WRAPPER_KEYS = ("state_dict", "model", "model_state", "module")


class CheckpointError(ValueError):
    """A weight file that cannot be used as asked; the message names the file and keys at fault."""


@dataclass
class LoadedWeights:
    state_dict: dict[str, torch.Tensor]
    naming: str  # timm | torchvision | robustness (as found in the file)
    metadata: dict = field(default_factory=dict)
    normaliser: dict | None = None  # mean/std buffers carried by a robustness file


def read_weights(path: str | Path, trust_pickle: bool = False) -> LoadedWeights:
    """Read a weight file into a flat ``{name: tensor}`` dict (no model needed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
            sd = load_file(str(path))
        except SafetensorError as exc:  # truncated (a crash while copying) or not a safetensors file
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); it may be truncated: "
                                  f"{path.stat().st_size} bytes. Re-make or re-copy it") from None
        metadata = json.loads(meta["kdflow"]) if "kdflow" in meta else meta
        return LoadedWeights(sd, naming=metadata.get("naming", "timm"), metadata=metadata)
    if trust_pickle:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    else:
        obj = _load_weights_only(path, lambda why: f"{path}: cannot be read weights-only ({why}). If you trust "
                                                   "this file, set 'trust_pickle: true' for it in the config.")
    sd = _unwrap(obj, path)
    if any(k.startswith(("module.model.", "module.attacker.")) for k in sd):
        plain, normaliser = from_robustness(sd, path)
        return LoadedWeights(plain, naming="robustness", normaliser=normaliser)
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    return LoadedWeights(sd, naming="torchvision")


def check_engine_state(path: str | Path, engine: str) -> None:
    """Refuse an engine's resumable state (mmengine's, detectron2's) that a weights-only
    ``torch.load`` cannot read: the engine then unpickles it itself, and under
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` (or an older torch) a crafted file would run code. kdflow
    writes these states as plain tensors and containers, so a refused one was not written by it."""
    _load_weights_only(path, lambda why: (
        f"{path}: {engine}'s resumable state holds objects a weights-only load refuses ({why}); refusing to "
        "unpickle it, as it could run code. kdflow never writes such a state: delete it to start the job over"))


def _load_weights_only(path: str | Path, refused: Callable[[str], str]):
    """``torch.load`` with the weights-only unpickler; a file it refuses raises CheckpointError with
    ``refused(the unpickler's first line)``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(refused(str(exc).strip().splitlines()[0])) from None


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, dict) and not _is_state_dict(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
        if inner is None:
            raise CheckpointError(f"{path}: no state dict found (top-level keys: {sorted(obj)[:10]})")
        obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def from_robustness(sd: dict[str, torch.Tensor], path: Path | str = "<state dict>"):
    """Strip robustness' wrappers; returns (plain state dict, normaliser mean/std or None).

    The ``attacker`` copy must equal the ``model`` copy tensor for tensor; if it does not, the
    file is ambiguous and loading fails.
    """
    model = {k[len("module.model."):]: v for k, v in sd.items() if k.startswith("module.model.")}
    attacker = {k[len("module.attacker.model."):]: v for k, v in sd.items()
                if k.startswith("module.attacker.model.")}
    if model and all(k.startswith("model.") for k in model):  # KDEP students: DummyModel wrapper
        model = {k[len("model."):]: v for k, v in model.items()}
        attacker = {k[len("model."):] if k.startswith("model.") else k: v for k, v in attacker.items()}
    for key, tensor in attacker.items():
        if key in model and not torch.equal(model[key], tensor):
            raise CheckpointError(f"{path}: the attacker copy of {key} differs from its model copy")
    normaliser = None
    if "module.normalizer.new_mean" in sd and "module.normalizer.new_std" in sd:
        normaliser = {
            "mean": [round(float(v), 6) for v in sd["module.normalizer.new_mean"].flatten()],
            "std": [round(float(v), 6) for v in sd["module.normalizer.new_std"].flatten()],
        }
    handled = ("module.model.", "module.attacker.", "module.normalizer.")
    leftovers = {k: v for k, v in sd.items() if not k.startswith(handled)}
    model.update(leftovers)  # unknown keys stay visible to the strict load
    return model, normaliser


def to_timm_names(sd: dict[str, torch.Tensor], model: nn.Module, naming: str, path: str = "") -> dict:
    """Rename a torchvision-named (or robustness-wrapped) state dict for the timm ``model``.

    timm's ResNet family uses torchvision's names verbatim. MobileNetV2's names differ in every
    key (torchvision and KDEP's tonylins model: ``features.<i>.conv.<j>``, timm: ``blocks.<s>.<b>
    .conv_pw``), but all three list the same tensors in the same order, so the map is positional,
    checked tensor by tensor (same shape, same kind of tensor). Other families are refused.
    """
    from timm.models.efficientnet import EfficientNet
    from timm.models.resnet import ResNet

    if naming == "timm" or isinstance(model, ResNet):
        return dict(sd)
    if isinstance(model, EfficientNet):
        return positional_names(sd, model, path)
    raise CheckpointError(
        f"{path}: no key map from {naming} names to timm's {type(model).__name__}; "
        "convert the file to timm names"
    )


def positional_names(sd: dict[str, torch.Tensor], model: nn.Module, path: str = "") -> dict:
    """Give the i-th tensor of ``sd`` the name of the model's i-th state-dict entry, verifying
    that every pair has the same shape and the same leaf name (weight, bias, running_mean, ...)."""
    own = list(model.state_dict().items())
    theirs = list(sd.items())
    if len(own) != len(theirs):
        raise CheckpointError(f"{path}: {len(theirs)} tensors in the file, {len(own)} in timm's "
                              f"{type(model).__name__}; the positional key map needs equal counts")
    renamed = {}
    for (key, value), (own_key, own_value) in zip(theirs, own):
        if key.rsplit(".", 1)[-1] != own_key.rsplit(".", 1)[-1] or value.shape != own_value.shape:
            raise CheckpointError(f"{path}: positional key map fails at {key} {tuple(value.shape)} -> "
                                  f"{own_key} {tuple(own_value.shape)}")
        renamed[own_key] = value
    return renamed


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def check_strict(own: dict[str, tuple], theirs: dict[str, tuple], source: str,
                 allow_missing: Iterable[str] = (), allow_unexpected: Iterable[str] = ()) -> dict:
    """Compare names and shapes (``{name: shape}`` of the model, ``own``, and of the weights,
    ``theirs``); fail naming every key that does not match, unless allowed. Returns the accounting
    ``{"loaded": n, "missing": [...], "unexpected": [...]}`` (allowed ones)."""
    missing = sorted(k for k in own if k not in theirs)
    unexpected = sorted(k for k in theirs if k not in own)
    mismatched = sorted(
        f"{k}: file {tuple(theirs[k])} vs model {tuple(own[k])}"
        for k in own if k in theirs and tuple(theirs[k]) != tuple(own[k])
    )
    bad_missing = [k for k in missing if not _matches(k, allow_missing)]
    bad_unexpected = [k for k in unexpected if not _matches(k, allow_unexpected)]
    if bad_missing or bad_unexpected or mismatched:
        parts = [f"{source}: does not match the model strictly"]
        if bad_missing:
            parts.append(f"missing keys ({len(bad_missing)}): " + ", ".join(bad_missing))
        if bad_unexpected:
            parts.append(f"unexpected keys ({len(bad_unexpected)}): " + ", ".join(bad_unexpected))
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): " + ", ".join(mismatched))
        parts.append("(allow specific keys with allow_missing / allow_unexpected patterns)")
        raise CheckpointError("\n  ".join(parts))
    return {"loaded": len(own) - len(missing), "missing": missing, "unexpected": unexpected}


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], source: str,
                allow_missing: Iterable[str] = (), allow_unexpected: Iterable[str] = ()) -> dict:
    """Load ``sd`` into ``module``; fail naming every key that does not match, unless allowed.

    Returns the accounting ``{"loaded": n, "missing": [...], "unexpected": [...]}`` (allowed ones).
    """
    own = module.state_dict()
    counts = check_strict({k: tuple(v.shape) for k, v in own.items()}, {k: tuple(v.shape) for k, v in sd.items()},
                          source, allow_missing, allow_unexpected)
    module.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return counts


def save_weights(path: str | Path, sd: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write safetensors atomically; ``metadata`` (JSON-able) is stored under the ``kdflow`` key,
    with the common fields also as plain strings for tools that only read flat metadata."""
    from safetensors.torch import save_file

    flat = {"kdflow": json.dumps(metadata, sort_keys=True)}
    for key in ("arch", "naming", "channel_order"):
        if key in metadata:
            flat[key] = str(metadata[key])
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    return write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=flat))
