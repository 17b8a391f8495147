"""One process of tests/test_load.py, over a synthetic manifest of N tiny images made on the fly;
each phase prints one JSON line with its peak RSS:

    python tests/load_worker.py manifest --images 100000 --out /tmp/load
    python tests/load_worker.py shard --shard 0 --shards 2 --out /tmp/load    # FKD soft-label generation
    python tests/load_worker.py store --shards 2 --out /tmp/load               # the store's index
    python tests/load_worker.py replay --out /tmp/load                         # one FKD replay pass

The images exist only as manifest lines: ``ManifestDataset.load`` draws image ``i`` from its class
(16x16 pixels, a colour per class), and the teacher is a stand-in (a linear map of the mean colour
to 1000 logits) behind the real teacher interface. Neither costs what PIL and a network would,
and neither holds per-image state: what the peak RSS measures is kdflow's own (manifest, store
index, records, loaders). The 1000-class fp16 labels make the store 4 kB per image, so a store
read whole would show.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

CLASSES = 10
COLOURS = np.random.default_rng(0).integers(0, 255, (CLASSES, 3), dtype=np.uint8)
DATASET = "synthetic"


def synthetic_image(self, i: int):
    from PIL import Image

    pixels = np.broadcast_to(COLOURS[self.manifest.samples[i].index], (16, 16, 3))
    return Image.fromarray(np.ascontiguousarray(pixels))


class StandInTeacher(nn.Module):
    """What the soft-label job uses of a teacher: ``net.num_classes`` and ``(x, output="logits")``."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3, 1000)
        self.net.num_classes = 1000
        torch.nn.init.normal_(self.net.weight, std=3.0)

    def forward(self, x: torch.Tensor, output: str = "logits") -> torch.Tensor:
        return self.net(x.mean((2, 3)))


def dataset(out: Path) -> dict:
    return {"name": DATASET, "root": out, "work_dir": out / "work"}


def job(out: Path, shards: int):
    from kdflow.config import JobConfig

    spec = {"name": "load", "label": {"type": "full", "k": 0}, "shards": shards, "workers": 0, "seed": 0,
            "commit_every": 5000,
            "generate": {"teacher": {"name": "t"}, "num_crops": 2, "teacher_batch": 2, "temperature": 1.0,
                         "crop": {"size": 16, "scale": [0.5, 1.0], "ratio": [0.75, 4 / 3],
                                  "interpolation": "bilinear"}}}
    identity = {k: v for k, v in spec.items() if k not in ("workers", "commit_every")}
    return JobConfig({**spec, "data": {"name": "sub", "dataset": dataset(out)}},
                     identity={**identity, "data": {"name": "sub", "dataset": {"name": DATASET}}})


def write_synthetic_manifest(out: Path, images: int) -> None:
    from kdflow.data.imagefolder import Manifest, Sample, write_manifest

    classes = [f"c{k}" for k in range(CLASSES)]
    samples = [Sample(f"{classes[i % CLASSES]}/{i:06d}.png", classes[i % CLASSES], i % CLASSES, bytes=0)
               for i in range(images)]
    write_manifest(out / "subset.tsv", Manifest(root=out, samples=samples, classes=classes), DATASET)
    (out / "teacher.safetensors").write_bytes(b"the stand-in teacher's file (hashed into the store)")


def generate_shard(out: Path, shard: int, shards: int) -> dict:
    import kdflow.jobs.softlabels as jobs

    jobs.load_teacher = lambda path: StandInTeacher()
    return jobs.soft_label_shard(job(out, shards), out / "subset.tsv", shard, out / "store", out / "state",
                                 teacher_path=out / "teacher.safetensors")


def merge_store(out: Path, shards: int) -> dict:
    from kdflow.jobs.softlabels import soft_label_store

    return soft_label_store(job(out, shards), out / "subset.tsv", out / "store",
                            teacher_path=out / "teacher.safetensors")


def replay_pass(out: Path, workers: int) -> dict:
    """One FKD pass, as training reads it: every image visited, its 2 stored crops cut and their
    labels recovered (no optimizer step: the student's compute is not what is measured)."""
    from kdflow.data.imagefolder import read_manifest
    from kdflow.distill.base import MethodContext
    from kdflow.distill.fkd import FKD

    context = MethodContext(data=read_manifest(out / "subset.tsv", dataset(out)),
                            training={"batch_size": 512, "workers": workers}, device=torch.device("cpu"),
                            options={"crops_per_visit": 2, "single_crop_epochs": 0, "temperature": 1.0, "size": 16,
                                     "interpolation": "bilinear", "mixup": {"enabled": False}},
                            artefacts={"soft_labels": str(out / "store" / "store.json")})
    method = FKD(context)
    method.passes(2)
    crops, mass = 0, 0.0
    for batch in method.loader(0):
        target = method.prepare(batch)["target"]
        crops += len(target)
        mass += float(target.sum())
    return {"crops": crops, "label_mass": round(mass, 1)}


def peak_rss_mb() -> dict:
    """Peak resident memory of this process in MB (file pages it maps count too: a store read
    through a memory map would)."""
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["manifest", "shard", "store", "replay"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int)
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from kdflow.data.imagefolder import ManifestDataset

    ManifestDataset.load = synthetic_image  # the images are made on the fly
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result = {
        "manifest": lambda: write_synthetic_manifest(out, args.images),
        "shard": lambda: generate_shard(out, args.shard, args.shards),
        "store": lambda: merge_store(out, args.shards),
        "replay": lambda: replay_pass(out, args.workers),
    }[args.phase]()
    summary = {k: v for k, v in (result or {}).items() if k in ("count", "bytes", "total_bytes", "crops",
                                                                "label_mass")}
    print(json.dumps({"phase": args.phase, **summary, "seconds": round(time.time() - started, 1),
                      **peak_rss_mb()}), flush=True)


if __name__ == "__main__":
    main()
