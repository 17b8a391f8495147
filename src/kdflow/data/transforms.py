"""Image transforms. They output RGB tensors in [0, 1]; normalisation is not done here.

Each network normalises its own input (``kdflow.models.InputAdapter``), so a teacher that expects
BGR with its own mean/std and a student that expects RGB see the *same* augmented crop, each as it
needs it.
"""

from __future__ import annotations

import torch
from torchvision import transforms as T

# AlexNet's PCA of ImageNet RGB pixels (used by KDEP's "lighting" augmentation).
_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
_EIGVEC = torch.tensor([
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
])


def lighting_shift(alpha: torch.Tensor) -> torch.Tensor:
    """``Lighting``'s RGB shift ``eigvec @ (alpha * eigval)`` for a batch of alphas ``(K, 3)``."""
    return (alpha * _EIGVAL.to(alpha.device)) @ _EIGVEC.to(alpha.device).T


class Lighting:
    """Add ``eigvec @ (alpha * eigval)`` with ``alpha ~ N(0, std)`` to every pixel."""

    def __init__(self, std: float):
        self.std = std

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return img
        alpha = torch.randn(3) * self.std
        rgb = _EIGVEC @ (alpha * _EIGVAL)
        return img + rgb.view(3, 1, 1)

    def __repr__(self) -> str:
        return f"Lighting(std={self.std})"


def train_transform(augment: dict) -> T.Compose:
    """KDEP's training augmentation with the config's size and strengths."""
    steps = [T.RandomResizedCrop(augment["size"], scale=tuple(augment["scale"]), antialias=True)]
    if augment["hflip"]:
        steps.append(T.RandomHorizontalFlip())
    jitter = augment["color_jitter"]
    if jitter > 0:
        steps.append(T.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    steps.append(T.ToTensor())
    if augment["lighting"] > 0:
        steps.append(Lighting(augment["lighting"]))
    return T.Compose(steps)


def eval_transform(spec: dict) -> T.Compose:
    return T.Compose([T.Resize(spec["resize"], antialias=True), T.CenterCrop(spec["crop"]), T.ToTensor()])
