"""What the benchmark scripts share: the machine record, timed windows, synthetic JPEGs, FLOPs.

Speed is reported as the median and spread of several timed windows after a warm-up, and
compared as ratios within one run (these machines are shared and noisy); nothing here asserts
a time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "benchmarks"
sys.path.insert(0, str(REPO / "src"))


def machine(device: str = "cpu") -> dict:
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    return info


def summary(values: list[float]) -> dict:
    """Median and spread (min, max, and the max/min ratio) of per-window rates."""
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3),
            "windows": [round(v, 3) for v in values]}


def measure(step, items, warmup: int, windows: int, window_steps: int, sync=None) -> dict[str, dict]:
    """Rates of ``step``: it takes the next item and returns ``{unit: count}`` (e.g. crops and
    images); returns ``{unit: summary of count per second over the windows}``."""
    for _ in range(warmup):
        step(next(items))
    rates: dict[str, list[float]] = {}
    for _ in range(windows):
        if sync:
            sync()
        start, counts = time.perf_counter(), {}
        for _ in range(window_steps):
            for unit, n in step(next(items)).items():
                counts[unit] = counts.get(unit, 0) + n
        if sync:
            sync()
        seconds = time.perf_counter() - start
        for unit, n in counts.items():
            rates.setdefault(unit, []).append(n / seconds)
    return {unit: summary(values) for unit, values in rates.items()}


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def make_images(root: Path, n: int, size: str, classes: int = 8):
    """Smooth random textures saved as quality-90 JPEGs (so decoding costs what it does on real
    photos), ``classes`` wnid folders, with a manifest; returns the manifest."""
    import numpy as np
    from PIL import Image

    from kdflow.data.imagefolder import split_manifest, write_manifest

    w, h = (int(v) for v in size.split("x"))
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "train" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 12, (h, w, 3))
        Image.fromarray(np.clip(np.asarray(img, dtype=np.int64) + noise, 0, 255).astype(np.uint8)).save(
            folder / f"img{i:05d}.JPEG", quality=90)
    manifest = split_manifest(root, "train")
    write_manifest(root / "train.tsv", manifest, "bench")
    return manifest


def forward_flops(arch: str, size: int, num_classes: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kdflow.models.network import Network

    net = Network(arch, num_classes=num_classes).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def write_report(path: str | Path, report: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {path}", flush=True)
    return path
