"""Multi-crop sampling for FKD: RandomResizedCrop boxes drawn from a per-image seed, and cutting
several crops from one decoded image.

The boxes of an image are a pure function of ``(seed, image width, image height, num_crops,
scale, ratio)``, so a soft-label store keeps one 64-bit seed per image instead of 500 boxes and
flips, and the replay regenerates exactly the boxes the teacher saw. The sampling follows
torchvision's ``RandomResizedCrop.get_params`` (ten tries of area-and-aspect sampling, then a
centre crop with the ratio clamped), drawn from a NumPy PCG64 stream rather than torch's global
RNG so that it is independent of the process, the worker and the thread that runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

#: Fixed-point scale of fractional boxes (imported FKD sets): 1/65535 of the image side.
BOX_SCALE = 65535
#: Tries of area-and-aspect sampling per crop before the centre-crop fallback (as torchvision).
TRIES = 10


@dataclass(frozen=True)
class CropPlan:
    """Pixel boxes ``(top, left, height, width)`` and horizontal flips of one image's crops."""

    boxes: np.ndarray  # (K, 4) int64
    flips: np.ndarray  # (K,) bool

    def __len__(self) -> int:
        return len(self.flips)

    def take(self, rows) -> "CropPlan":
        return CropPlan(self.boxes[rows], self.flips[rows])


def sample_crops(seed: int, width: int, height: int, num_crops: int, scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3)) -> CropPlan:
    """``num_crops`` RandomResizedCrop boxes and 50 % flips, reproducible from ``seed``.

    Vectorised: each crop gets a fixed block of uniforms (ten tries of area, aspect, top and
    left, then its flip), so regenerating the boxes of 500 crops costs well under a millisecond.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    u = rng.random((num_crops, TRIES, 4))
    flips = rng.random(num_crops) < 0.5
    area = float(width * height)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    tried = ok.argmax(axis=1)  # the first successful try
    rows = np.arange(num_crops)
    w, h, u = w[rows, tried], h[rows, tried], u[rows, tried]
    top = np.floor(u[:, 2] * (height - h + 1)).astype(np.int64)
    left = np.floor(u[:, 3] * (width - w + 1)).astype(np.int64)
    boxes = np.stack([top, left, h, w], axis=1)
    failed = ~ok.any(axis=1)
    if failed.any():
        boxes[failed] = _fallback_box(width, height, ratio)
    return CropPlan(boxes, flips)


def _fallback_box(width: int, height: int, ratio) -> tuple[int, int, int, int]:
    """After ten failed tries: the largest centred box whose aspect lies within ``ratio``."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def boxes_from_fractions(fractions: np.ndarray, width: int, height: int) -> np.ndarray:
    """FKD's fractional boxes ``(top/H, left/W, h/H, w/W)`` -> pixel boxes of this image."""
    f = np.asarray(fractions, dtype=np.float64)
    sides = np.array([height, width, height, width], dtype=np.float64)
    boxes = np.rint(f * sides).astype(np.int64)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], 1)
    boxes[:, 0] = np.clip(boxes[:, 0], 0, height - boxes[:, 2])
    boxes[:, 1] = np.clip(boxes[:, 1], 0, width - boxes[:, 3])
    return boxes


def cut_crops(image: Image.Image, plan: CropPlan, size: int, interpolation: str) -> torch.Tensor:
    """All crops of ``plan`` from one decoded RGB image: a ``(K, 3, size, size)`` uint8 tensor
    (normalisation happens on the device, in the network's own input adapter)."""
    resample = INTERPOLATIONS[interpolation]
    out = np.empty((len(plan), size, size, 3), dtype=np.uint8)
    for j, (top, left, h, w) in enumerate(plan.boxes.tolist()):
        crop = image.resize((size, size), resample, box=(left, top, left + w, top + h))
        pixels = np.asarray(crop)
        out[j] = pixels[:, ::-1] if plan.flips[j] else pixels
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def to_unit_float(crops: torch.Tensor) -> torch.Tensor:
    """uint8 crops -> float in [0, 1], the input every ``Network`` normalises itself."""
    return crops.float().div_(255.0)
