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
- ``kind: segmentation``: scenes of ``objects`` (fewest, most) textured shapes, later ones
  painted over earlier ones, in mmseg's layout (the ``mmseg`` format of kdflow.data.segmentation):
  ``img_dir/{train,val}/<k>.png`` (lossless), ``ann_dir/{train,val}/<k>.png`` (index masks: 0
  background, 1..C the object's class) and ``classes.txt``. ``labels: shape``: an object's class is
  its shape (at most 8), its texture random; ``labels: pair``: its (shape, texture) pair from the
  downstream set's vocabulary, classes that pre-training never saw but whose primitives it learnt
  (the demo's segmentation set: one object per scene, 8 pairs). ``train_per_class`` and
  ``val_per_class`` count images in all, not per class.
- ``kind: detection``: scenes of ``objects`` textured shapes labelled by their downstream
  (shape, texture) pair, at the pre-training scale when ``image_size`` is twice the pre-training
  size, in COCO's layout (the ``coco`` format of kdflow.data.detection): ``{train,val}/<k>.png``
  and ``annotations/instances_{train,val}.json`` (each object's tight box). Image counts in all,
  as for segmentation.

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


def render_scene(classes: int, size: int, rng: np.random.Generator, labels: str = "shape",
                 objects: tuple[int, int] = (2, 3)) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` RGB uint8 scene of ``objects`` (fewest, most) objects on a noisy
    background (as :func:`render`'s), and its uint8 mask: 0 background, 1 + the class of the object
    painted last at each pixel. ``labels="shape"``: the class is the shape's index among the first
    ``classes`` SHAPES, the texture random; ``labels="pair"``: the index of its (shape, texture)
    among the downstream set's first ``classes`` pairs. Colour and rotation are random; a lone
    object is posed as :func:`render` poses one (radius 0.3-0.42 of the image, near the centre),
    several are smaller (radius 0.18-0.3) and of different classes while there are enough."""
    pixels, painted = _paint_scene(classes, size, rng, labels, objects, radius_range=(0.18, 0.3))
    mask = np.zeros((size, size), dtype=np.uint8)
    for kind, shape_mask in painted:
        mask[shape_mask] = kind + 1
    return pixels, mask


def render_detection_scene(classes: int, size: int, rng: np.random.Generator,
                           objects: tuple[int, int] = (2, 3)) -> tuple[np.ndarray, list[tuple]]:
    """A scene of ``objects`` (fewest, most) textured shapes labelled by their (shape, texture)
    pair among the downstream set's first ``classes`` pairs, and its boxes ``(x, y, w, h, class)``:
    each object's tight pixel box (COCO's convention). Objects have radius 0.15-0.21 of the image,
    so at twice the pre-training image size they appear at the pre-training scale (a one-object
    image's radius 0.3-0.42); they overlap at most partly (no object hides another)."""
    pixels, painted = _paint_scene(classes, size, rng, "pair", objects, radius_range=(0.15, 0.21), alone=False)
    boxes = []
    for kind, shape_mask in painted:
        rows, cols = np.nonzero(shape_mask)
        if rows.size:
            x0, y0 = int(cols.min()), int(rows.min())
            boxes.append((x0, y0, int(cols.max()) - x0 + 1, int(rows.max()) - y0 + 1, int(kind)))
    return pixels, boxes


def _paint_scene(classes: int, size: int, rng: np.random.Generator, labels: str, objects: tuple[int, int],
                 radius_range: tuple[float, float], alone: bool = True) -> tuple[np.ndarray, list]:
    """The pixels of a scene and its objects' ``(class, full shape mask)`` in painting order (see
    :func:`render_scene`; ``alone``: a lone object is posed as :func:`render` poses one)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    count = int(rng.integers(objects[0], objects[1] + 1))
    kinds = rng.choice(classes, size=count, replace=count > classes)
    if count == 1 and alone:
        radii = rng.uniform(0.3, 0.42, size=1) * size
        centres = rng.uniform(0.35, 0.65, size=(1, 2)) * size
    else:
        radii = rng.uniform(*radius_range, size=count) * size
        centres = _centres(radii, size, rng)
    pairs = class_pairs("downstream", classes) if labels == "pair" else None

    bg_value = rng.uniform(0.1, 0.9)
    background = _hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.5), bg_value)
    img = np.empty((size, size, 3))
    img[:] = background
    painted = []
    for kind, radius, (cx, cy) in zip(kinds, radii, centres):
        shape = SHAPES[kind] if pairs is None else pairs[kind][0]
        mask = _pose(shape, x, y, cx, cy, radius, rng.uniform(0, 2 * np.pi))
        period = int(rng.integers(6, 9))
        ox, oy = rng.integers(0, period, size=2)
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))] if pairs is None else pairs[kind][1]
        on = _texture(texture, x + ox, y + oy, period)
        fg_value = bg_value + (0.45 if bg_value < 0.5 else -0.45) * rng.uniform(0.8, 1.2)
        foreground = _hsv_to_rgb(rng.uniform(), rng.uniform(0.5, 1.0), float(np.clip(fg_value, 0.05, 1.0)))
        img[mask & on] = foreground
        img[mask & ~on] = foreground * 0.45 + background * 0.55  # the texture's "off" cells, as render's
        painted.append((int(kind), mask))
    img += rng.normal(0.0, 0.04, size=img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), painted


def generate(out_dir: str | Path, kind: str, classes: int, train_per_class: int,
             val_per_class: int, image_size: int, seed: int, progress: bool = False,
             labels: str = "shape", objects: tuple[int, int] = (2, 3)) -> dict:
    """Write one demo dataset under ``out_dir``; returns a summary (counts and class list). For
    ``kind: segmentation`` the per-class counts are image counts (see the module's docstring)."""
    from kdflow.io import write_text

    out_dir = Path(out_dir)
    if kind == "detection":
        return _generate_detection(out_dir, classes, train_per_class, val_per_class, image_size, seed, progress,
                                   tuple(objects))
    if kind == "segmentation":
        return _generate_scenes(out_dir, classes, train_per_class, val_per_class, image_size, seed, progress,
                                labels, tuple(objects))
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
                     seed: int, progress: bool, labels: str, objects: tuple[int, int]) -> dict:
    """The segmentation demo in mmseg's layout (img_dir/, ann_dir/, classes.txt)."""
    from kdflow.io import write_text

    if labels not in ("shape", "pair"):
        raise ValueError(f"labels {labels!r}: a segmentation demo's objects are labelled by shape or pair")
    most = len(SHAPES) if labels == "shape" else MAX_CLASSES
    if not 2 <= classes <= most:
        raise ValueError(f"a segmentation demo labelled by {labels} has 2 to {most} classes, {classes} asked")
    if not 1 <= objects[0] <= objects[1]:
        raise ValueError(f"objects {list(objects)}: give the fewest and the most objects per scene, "
                         "1 <= fewest <= most")
    counts = {"train": train_images, "val": val_images}
    jobs = [(split, k) for split in counts for k in range(counts[split])]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc=f"demo {out_dir.name}", unit="img", mininterval=2)
    for split, k in jobs:
        pixels, mask = render_scene(classes, image_size, _scene_rng(seed, split, k), labels, objects)
        for folder, array in (("img_dir", pixels), ("ann_dir", mask)):
            path = out_dir / folder / split / f"{k:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    if labels == "shape":
        objects_named = {shape: f"{shape} (any texture)" for shape in SHAPES[:classes]}
    else:
        objects_named = {f"{shape}_{texture}": f"{shape} {texture}"
                         for shape, texture in class_pairs("downstream", classes)}
    names = ["background", *objects_named]
    write_text(out_dir / "classes.txt", "".join(f"{n}\n" for n in names))
    return {"kind": "segmentation", "classes": {"background": "no object", **objects_named}, "images": counts}


def _generate_detection(out_dir: Path, classes: int, train_images: int, val_images: int, image_size: int,
                        seed: int, progress: bool, objects: tuple[int, int]) -> dict:
    """The detection demo in COCO's layout: ``{train,val}/<k>.png`` and
    ``annotations/instances_{train,val}.json`` (categories 1..C, the downstream pairs)."""
    from kdflow.io import write_json

    if not 2 <= classes <= MAX_CLASSES:
        raise ValueError(f"a detection demo has 2 to {MAX_CLASSES} classes, {classes} asked")
    if not 1 <= objects[0] <= objects[1]:
        raise ValueError(f"objects {list(objects)}: give the fewest and the most objects per scene, "
                         "1 <= fewest <= most")
    pairs = class_pairs("downstream", classes)
    categories = [{"id": k + 1, "name": f"{s}_{t}", "supercategory": s} for k, (s, t) in enumerate(pairs)]
    counts = {"train": train_images, "val": val_images}
    for split, n in counts.items():
        jobs = range(n)
        if progress:
            from tqdm import tqdm

            jobs = tqdm(jobs, desc=f"demo {out_dir.name} {split}", unit="img", mininterval=2)
        images, annotations = [], []
        for k in jobs:
            pixels, boxes = render_detection_scene(classes, image_size, _scene_rng(seed, split, k), objects)
            path = out_dir / split / f"{k:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            images.append({"id": k + 1, "file_name": path.name, "width": image_size, "height": image_size})
            for x, y, w, h, kind in boxes:
                annotations.append({"id": len(annotations) + 1, "image_id": k + 1, "category_id": kind + 1,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        write_json(out_dir / "annotations" / f"instances_{split}.json",
                   {"images": images, "annotations": annotations, "categories": categories})
    return {"kind": "detection", "classes": {c["name"]: c["name"].replace("_", " ") for c in categories},
            "images": counts}
