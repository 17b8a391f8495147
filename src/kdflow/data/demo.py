"""Seeded synthetic image datasets in real on-disk formats, for the built-in demo and the tests.

Every image shows one object drawn from a shared visual vocabulary: a *shape* (8 kinds), filled
with a *texture* (6 kinds), in a random colour, position, size and rotation, on a noisy background
of random colour. A class is a (shape, texture) pair. The ImageNet-like set and the downstream set
use *disjoint* pairs, so a downstream class never appears in pre-training, but the primitives it is
made of do: features that pre-training learns (edges, corners, stripes, dots) genuinely help
downstream, which is the premise of distillation as pre-training.

Layouts:
- ``kind: pretrain``: ImageNet style, ``train/<wnid>/<wnid>_<k>.JPEG`` and
  ``val/<wnid>/ILSVRC2012_val_<k>.JPEG`` plus ``LOC_synset_mapping.txt`` (wnid, description).
- ``kind: downstream``: ``train/<name>/<k>.jpg`` and ``val/<name>/<k>.jpg`` with readable names.
- ``kind: segmentation``: scenes of 2 or 3 objects (textured shapes, later ones painted over
  earlier ones) in mmseg's layout (the ``mmseg`` format of kdflow.data.segmentation):
  ``img_dir/{train,val}/<k>.png`` (lossless), ``ann_dir/{train,val}/<k>.png`` (index masks:
  0 background, 1..C the object's *shape*, its texture being random) and ``classes.txt``. Here
  ``classes`` counts shape kinds (at most 8) and ``train_per_class``/``val_per_class`` count
  images in all, not per class. Pre-training learns the same shapes and textures (as parts of
  its classes), so a pre-trained backbone genuinely helps to segment them.

Each image's randomness comes from ``SeedSequence([seed, split, class, k])`` (a scene's from
``[seed, split, k]``): the output depends on the config only, not on generation order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = ("disk", "ring", "square", "diamond", "cross", "triangle", "bars", "halfdisk")
TEXTURES = ("solid", "hstripes", "vstripes", "checker", "dots", "diagonal")
_SPLITS = {"train": 0, "val": 1}
MAX_CLASSES = 24


def class_pairs(kind: str, classes: int) -> list[tuple[str, str]]:
    """The (shape, texture) pairs of a demo dataset; pretrain and downstream lists are disjoint."""
    if classes > MAX_CLASSES:
        raise ValueError(f"a demo dataset has at most {MAX_CLASSES} classes, {classes} asked")
    by_residue = {r: [(s, t) for s in range(len(SHAPES)) for t in range(len(TEXTURES))
                      if (s + t) % 3 == r] for r in range(3)}
    if kind == "pretrain":
        order = by_residue[0] + by_residue[2][:8]
    elif kind == "downstream":
        order = by_residue[1] + by_residue[2][::-1][:8]
    else:
        raise ValueError(f"unknown demo dataset kind {kind!r} (pretrain, downstream)")
    return [(SHAPES[s], TEXTURES[t]) for s, t in order[:classes]]


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r = np.sqrt(u * u + v * v)
    if shape == "disk":
        return r <= 1.0
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.05
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if shape == "triangle":
        return (v <= 0.6) & (v >= 1.73 * np.abs(u) - 1.1)
    if shape == "bars":
        return (np.abs(u) <= 0.95) & (np.abs(v) >= 0.25) & (np.abs(v) <= 0.75)
    if shape == "halfdisk":
        return (r <= 1.0) & (u >= -0.05)
    raise ValueError(shape)


def _texture(texture: str, x: np.ndarray, y: np.ndarray, period: int) -> np.ndarray:
    half = period / 2
    if texture == "solid":
        return np.ones_like(x, dtype=bool)
    if texture == "hstripes":
        return (y // half) % 2 == 0
    if texture == "vstripes":
        return (x // half) % 2 == 0
    if texture == "checker":
        return ((x // half) + (y // half)) % 2 == 0
    if texture == "dots":
        return ((x % period) < half) & ((y % period) < half) & (((x // period) + (y // period)) % 2 == 0)
    if texture == "diagonal":
        return ((x + y) // half) % 2 == 0
    raise ValueError(texture)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _pose(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, radius: float,
          theta: float) -> np.ndarray:
    """Where ``shape``, centred at (cx, cy), of this radius and rotation, covers the pixel grid."""
    dx, dy = x + 0.5 - cx, y + 0.5 - cy
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / radius
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / radius
    return _shape_mask(shape, u, v)


def render(shape: str, texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``size`` x ``size`` RGB uint8 image of a textured shape on a noisy background."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    cx, cy = rng.uniform(0.35, 0.65, size=2) * size
    radius = rng.uniform(0.3, 0.42) * size
    theta = rng.uniform(0, 2 * np.pi)
    mask = _pose(shape, x, y, cx, cy, radius, theta)
    period = int(rng.integers(6, 9))
    ox, oy = rng.integers(0, period, size=2)
    on = _texture(texture, x + ox, y + oy, period)

    bg_value = rng.uniform(0.1, 0.9)
    fg_value = bg_value + (0.45 if bg_value < 0.5 else -0.45) * rng.uniform(0.8, 1.2)
    background = _hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.5), bg_value)
    foreground = _hsv_to_rgb(rng.uniform(), rng.uniform(0.5, 1.0), float(np.clip(fg_value, 0.05, 1.0)))
    shade = foreground * 0.45 + background * 0.55  # the texture's "off" cells

    img = np.empty((size, size, 3))
    img[:] = background
    img[mask & on] = foreground
    img[mask & ~on] = shade
    img += rng.normal(0.0, 0.04, size=img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _image_rng(seed: int, split: str, cls: int, k: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLITS[split], cls, k]))


def _scene_rng(seed: int, split: str, k: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLITS[split], k]))


def _centres(radii: np.ndarray, size: int, rng: np.random.Generator, tries: int = 30) -> np.ndarray:
    """Object centres inside the image, far enough apart that objects overlap at most partly (no
    object hides another): the first of ``tries`` draws that keeps every pair's distance at least
    0.75 x the sum of their radii, else the last draw."""
    for _ in range(tries):
        centres = rng.uniform(0.2, 0.8, size=(len(radii), 2)) * size
        gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        needed = 0.75 * (radii[:, None] + radii[None])
        if np.all((gaps >= needed)[~np.eye(len(radii), dtype=bool)]):
            break
    return centres


def render_scene(classes: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` RGB uint8 scene of 2 or 3 objects on a noisy background (as
    :func:`render`'s), and its uint8 mask: 0 background, 1 + the shape index (among the first
    ``classes`` SHAPES) of the object painted last at each pixel. An object's shape is its class;
    its texture, colour, size (radius 0.18-0.3 of the image) and rotation are random, and objects
    of one scene have different shapes while there are enough."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    count = int(rng.integers(2, 4))
    kinds = rng.choice(classes, size=count, replace=count > classes)
    radii = rng.uniform(0.18, 0.3, size=count) * size
    centres = _centres(radii, size, rng)

    bg_value = rng.uniform(0.1, 0.9)
    background = _hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.5), bg_value)
    img = np.empty((size, size, 3))
    img[:] = background
    labels = np.zeros((size, size), dtype=np.uint8)
    for kind, radius, (cx, cy) in zip(kinds, radii, centres):
        mask = _pose(SHAPES[kind], x, y, cx, cy, radius, rng.uniform(0, 2 * np.pi))
        period = int(rng.integers(6, 9))
        ox, oy = rng.integers(0, period, size=2)
        on = _texture(TEXTURES[int(rng.integers(len(TEXTURES)))], x + ox, y + oy, period)
        fg_value = bg_value + (0.45 if bg_value < 0.5 else -0.45) * rng.uniform(0.8, 1.2)
        foreground = _hsv_to_rgb(rng.uniform(), rng.uniform(0.5, 1.0), float(np.clip(fg_value, 0.05, 1.0)))
        img[mask & on] = foreground
        img[mask & ~on] = foreground * 0.45 + background * 0.55  # the texture's "off" cells, as render's
        labels[mask] = kind + 1
    img += rng.normal(0.0, 0.04, size=img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), labels


def generate(out_dir: str | Path, kind: str, classes: int, train_per_class: int,
             val_per_class: int, image_size: int, seed: int, progress: bool = False) -> dict:
    """Write one demo dataset under ``out_dir``; returns a summary (counts and class list). For
    ``kind: segmentation`` the per-class counts are image counts (see the module's docstring)."""
    from kdflow.io import write_text

    out_dir = Path(out_dir)
    if kind == "segmentation":
        return _generate_scenes(out_dir, classes, train_per_class, val_per_class, image_size, seed, progress)
    pairs = class_pairs(kind, classes)
    names = [f"n{1000000 + 1000 * i:08d}" if kind == "pretrain" else f"{s}_{t}"
             for i, (s, t) in enumerate(pairs)]
    counts = {"train": train_per_class, "val": val_per_class}
    jobs = [(split, c, k) for split in counts for c in range(classes) for k in range(counts[split])]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc=f"demo {out_dir.name}", unit="img", mininterval=2)
    for split, c, k in jobs:
        shape, texture = pairs[c]
        pixels = render(shape, texture, image_size, _image_rng(seed, split, c, k))
        if kind == "pretrain":
            stem = f"{names[c]}_{k}.JPEG" if split == "train" else f"ILSVRC2012_val_{c * 100000 + k:08d}.JPEG"
        else:
            stem = f"{k:05d}.jpg"
        path = out_dir / split / names[c] / stem
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=95)
    descriptions = "".join(f"{n} {s} {t}\n" for n, (s, t) in zip(names, pairs))
    write_text(out_dir / ("LOC_synset_mapping.txt" if kind == "pretrain" else "classes.txt"), descriptions)
    return {"kind": kind, "classes": dict(zip(names, [f"{s} {t}" for s, t in pairs])),
            "images": {split: n * classes for split, n in counts.items()}}


def _generate_scenes(out_dir: Path, classes: int, train_images: int, val_images: int, image_size: int,
                     seed: int, progress: bool) -> dict:
    """The segmentation demo in mmseg's layout (img_dir/, ann_dir/, classes.txt)."""
    from kdflow.io import write_text

    if not 2 <= classes <= len(SHAPES):
        raise ValueError(f"a segmentation demo has 2 to {len(SHAPES)} classes (the shape kinds), {classes} asked")
    counts = {"train": train_images, "val": val_images}
    jobs = [(split, k) for split in counts for k in range(counts[split])]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc=f"demo {out_dir.name}", unit="img", mininterval=2)
    for split, k in jobs:
        pixels, labels = render_scene(classes, image_size, _scene_rng(seed, split, k))
        for folder, array in (("img_dir", pixels), ("ann_dir", labels)):
            path = out_dir / folder / split / f"{k:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    names = ["background", *SHAPES[:classes]]
    write_text(out_dir / "classes.txt", "".join(f"{n}\n" for n in names))
    return {"kind": "segmentation",
            "classes": {n: "no object" if i == 0 else f"{n} (any texture)" for i, n in enumerate(names)},
            "images": counts}
