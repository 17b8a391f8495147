"""One wrapper for every network kdflow trains or distils from: a timm model plus its input spec.

``Network(x, output=...)`` takes RGB tensors in [0, 1], applies the network's own channel order
and normalisation, and returns logits, the pooled *pre-activation* last-stage feature (KDEP's
feature: the final ReLU of the last block is not applied), or both. The feature is read through a
tap module that replaces the last activation; it has no parameters, so state-dict keys stay
exactly timm's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import timm
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """What a network expects: channel order and mean/std (in that channel order's RGB terms)."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"

    @classmethod
    def from_config(cls, spec: dict | None) -> "InputSpec":
        spec = spec or {}
        return cls(
            mean=tuple(float(v) for v in spec.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in spec.get("std", IMAGENET_STD)),
            channel_order=spec.get("channel_order", "RGB"),
        )

    def as_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "channel_order": self.channel_order}


class PreActTap(nn.Module):
    """Stands in for the last activation: keeps its input (the pre-activation map), then applies it."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = copy.deepcopy(act)
        if hasattr(self.act, "inplace"):  # the kept input must not be overwritten in place
            self.act.inplace = False
        self.pre: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.pre = x
        return self.act(x)


def _last_activation_owner(net: nn.Module, arch: str) -> tuple[nn.Module, str]:
    """(module, attribute) of the last activation before global pooling, per model family."""
    if hasattr(net, "layer4"):  # timm ResNet family: BasicBlock.act2 / Bottleneck.act3
        block = net.layer4[-1]
        for name in ("act3", "act2"):
            if hasattr(block, name):
                return block, name
    if hasattr(net, "bn2") and hasattr(net.bn2, "act"):  # timm EfficientNet / MobileNetV2 head
        return net.bn2, "act"
    raise NotImplementedError(
        f"no pre-activation feature tap is defined for arch {arch!r}; "
        "add its last activation to kdflow.models.network._last_activation_owner"
    )


def classifier_prefix(net: nn.Module) -> str:
    """State-dict prefix of the classification head (``fc`` for ResNets, ``classifier`` ...)."""
    name = net.pretrained_cfg.get("classifier") if hasattr(net, "pretrained_cfg") else None
    return name or "fc"


def num_features_of(arch: str) -> int:
    """Width of an architecture's pooled feature, without allocating its weights."""
    with torch.device("meta"):
        return timm.create_model(arch, pretrained=False, num_classes=0).num_features


class Network(nn.Module):
    def __init__(self, arch: str, num_classes: int, input_spec: InputSpec | None = None,
                 pretrained: bool = False, **timm_kwargs):
        super().__init__()
        self.arch = arch
        self.input_spec = input_spec or InputSpec()
        self.net = timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, **timm_kwargs)
        owner, attr = _last_activation_owner(self.net, arch)
        self.tap = PreActTap(getattr(owner, attr))
        setattr(owner, attr, self.tap)
        self.register_buffer("mean", torch.tensor(self.input_spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.input_spec.std).view(1, 3, 1, 1), persistent=False)

    @property
    def num_features(self) -> int:
        return self.net.num_features

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_spec.channel_order == "BGR":
            x = x.flip(1)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor, output: str = "logits"):
        """``output``: ``logits``, ``features`` (pooled pre-activation) or ``both``."""
        fmap = self.net.forward_features(self.normalise(x))
        if output == "features":
            return self.tap.pre.mean(dim=(2, 3))
        logits = self.net.forward_head(fmap)
        if output == "logits":
            return logits
        if output == "both":
            return logits, self.tap.pre.mean(dim=(2, 3))
        raise ValueError(f"unknown output {output!r}")

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """timm-named weights without the classification head (what a pre-trained student exports)."""
        prefix = classifier_prefix(self.net) + "."
        return {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()
                if not k.startswith(prefix)}
