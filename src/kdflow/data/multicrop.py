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


# --------------------------------------------------------------------------- photometric


@dataclass(frozen=True)
class Photometric:
    """KDEP's colour augmentation, per crop and reproducible from a seed: colour jitter
    (brightness, contrast and saturation factors in [1 - j, 1 + j], applied in a random order, as
    torchvision's ``ColorJitter``) then AlexNet's PCA lighting (``Lighting``, ``alpha ~ N(0, std)``).

    Stores of teacher outputs keep no pixels: the parameters of a crop are regenerated from the
    image's seed at generation and at replay, so the student sees exactly the tensor the teacher saw.
    """

    color_jitter: float = 0.0
    lighting: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.color_jitter > 0 or self.lighting > 0

    def params(self, seed: int, num_crops: int) -> np.ndarray:
        """(num_crops, 9) float32: three factors, the order of the three jitter operations (as
        floats), three lighting alphas. Its own stream: the boxes of ``sample_crops`` are unchanged."""
        rng = np.random.Generator(np.random.PCG64([seed, 1]))
        j = self.color_jitter
        factors = rng.uniform(max(0.0, 1 - j), 1 + j, size=(num_crops, 3))
        order = np.argsort(rng.random((num_crops, 3)), axis=1)
        alpha = rng.normal(0.0, 1.0, size=(num_crops, 3)) * self.lighting
        return np.concatenate([factors, order, alpha], axis=1).astype(np.float32)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Crops ``(K, 3, H, W)`` in [0, 1] (any device) and their ``params`` -> augmented crops."""
        if not self.enabled:
            return x
        from kdflow.data.transforms import lighting_shift

        params = params.to(x.device, torch.float32)
        factors, order, alpha = params[:, :3], params[:, 3:6].long(), params[:, 6:]
        if self.color_jitter > 0:
            for step in range(3):
                op = order[:, step]
                f = factors.gather(1, op[:, None]).view(-1, 1, 1, 1)
                candidates = torch.stack([_brightness(x, f), _contrast(x, f), _saturation(x, f)])
                x = candidates[op, torch.arange(len(x), device=x.device)]
        if self.lighting > 0:
            x = x + lighting_shift(alpha).view(-1, 3, 1, 1)
        return x


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Luma with torchvision's ``rgb_to_grayscale`` weights: (K, 1, H, W)."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f * x + (1 - f) * other).clamp(0, 1)


def _brightness(x, f):
    return _blend(x, torch.zeros_like(x), f)


def _contrast(x, f):
    return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x, f):
    return _blend(x, _grey(x), f)
