"""The feature maps a detector reads from a student: strides 4, 8, 16 and 32.

Both detection engines build the same bottom-up for a timm student (the torchvision engine for
every arch; the detectron2 engine for the archs detectron2 has no backbone of its own, such as
MobileNetV2): timm's ``features_only`` model at those strides, whose tensor names are the
student's own. ResNet: its four stages; MobileNetV2: its blocks of 24, 32, 96 and 320 channels,
as KDEP's MobileNetV2-FPN.
"""

from __future__ import annotations

import torch

FEATURE_STRIDES = (4, 8, 16, 32)


def feature_layout(arch: str) -> tuple[list[int], list[int]]:
    """(timm ``out_indices``, channels) of an architecture's feature maps at strides 4-32."""
    import timm

    with torch.device("meta"):
        net = timm.create_model(arch, pretrained=False, features_only=True)
    info = net.feature_info
    indices = [i for i, r in enumerate(info.reduction()) if r in FEATURE_STRIDES]
    if [info.reduction()[i] for i in indices] != list(FEATURE_STRIDES):
        raise ValueError(f"arch {arch!r} has feature maps at strides {info.reduction()}; a feature pyramid needs "
                         f"one at each of {FEATURE_STRIDES}")
    return indices, [info.channels()[i] for i in indices]


def feature_body(arch: str, device: str | torch.device | None = None) -> torch.nn.Module:
    """timm's ``features_only`` ``arch`` at strides 4-32 (random init under the caller's seed)."""
    import timm

    with torch.device(device or "cpu"):
        return timm.create_model(arch, pretrained=False, features_only=True, out_indices=feature_layout(arch)[0])


def unused_student_keys(arch: str) -> list[str]:
    """The student's tensors that a feature pyramid does not read (timm's full model without its
    classifier, minus ``features_only``'s: MobileNetV2's 1280-wide head conv, for instance)."""
    import timm

    with torch.device("meta"):
        full = timm.create_model(arch, pretrained=False, num_classes=0).state_dict()
    body = feature_body(arch, "meta").state_dict()
    return sorted(set(full) - set(body))
