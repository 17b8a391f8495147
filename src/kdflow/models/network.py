"""One wrapper for every network kdflow trains or distils from: a timm model plus its input spec.

``Network(x, output=...)`` takes RGB tensors in [0, 1], applies the network's own channel order
and normalisation, and returns logits, the pooled feature, or both. The pooled feature is
  - for CNNs, the *pre-activation* last-stage map averaged over space (KDEP's feature: the final
    ReLU of the last block is not applied), read through a tap module that replaces the last
    activation; it has no parameters, so state-dict keys stay exactly timm's;
  - for vision transformers (timm models with prefix tokens: ViT, DeiT), the mean of the final
    (normalised) patch tokens, class and distillation tokens excluded (VkD's feature for DeiT).
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


def classifier_prefixes(net: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the classification heads (``fc`` for ResNets, ``classifier``,
    ``head``; DeiT's distilled models have two: ``head`` and ``head_dist``)."""
    names = net.pretrained_cfg.get("classifier") if hasattr(net, "pretrained_cfg") else None
    if not names:
        return ("fc",)
    return tuple(names) if isinstance(names, (tuple, list)) else (names,)


def classifier_prefix(net: nn.Module) -> str:
    """State-dict prefix of the (main) classification head."""
    return classifier_prefixes(net)[0]


def is_token_model(net: nn.Module) -> bool:
    """A transformer whose ``forward_features`` returns tokens (B, N, D), the first
    ``num_prefix_tokens`` of them class/distillation tokens."""
    return hasattr(net, "num_prefix_tokens") and hasattr(net, "patch_embed")


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
        self.tap: PreActTap | None = None
        if not is_token_model(self.net):
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

    def pooled_feature(self, fmap: torch.Tensor) -> torch.Tensor:
        """The pooled feature of the forward pass that returned ``fmap`` (see the module doc)."""
        if self.tap is None:
            return fmap[:, self.net.num_prefix_tokens:].mean(dim=1)
        return self.tap.pre.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, output: str = "logits"):
        """``output``: ``logits``, ``features`` (the pooled feature) or ``both``."""
        fmap = self.net.forward_features(self.normalise(x))
        if output == "features":
            return self.pooled_feature(fmap)
        logits = self.net.forward_head(fmap)
        if output == "logits":
            return logits
        if output == "both":
            return logits, self.pooled_feature(fmap)
        raise ValueError(f"unknown output {output!r}")

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """timm-named weights without the classification heads (what a pre-trained student exports)."""
        prefixes = tuple(p + "." for p in classifier_prefixes(self.net))
        return {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()
                if not k.startswith(prefixes)}
