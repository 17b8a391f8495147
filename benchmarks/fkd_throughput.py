"""FKD replay vs online distillation vs plain supervised training: training throughput, one run.

All three modes share the machine, the student, the input size, the batch of crops per optimizer
step, the DataLoader (workers, pinning) and the crop code (``kdflow.data.multicrop``):

  (a) supervised   decode an image, cut one fresh RandomResizedCrop, cross-entropy on its label
  (b) online_kd    as (a), plus a forward pass of the teacher on every batch; soft cross-entropy
  (c) fkd_replay   kdflow's FKD method: decode an image once, cut 4 of its stored crops, recover
                   the stored teacher distributions on the device; soft cross-entropy

For each mode: a few warm-up steps, then the median of several timed windows. Reported: crops/s
(training samples per second), images/s (decoded images per second), and the ratios (c)/(a) and
(c)/(b) of crops/s, written to ``results/benchmarks/fkd_throughput.json``. The images are synthetic
JPEGs of ImageNet-like size, so decoding costs what it does on real data.

    python benchmarks/fkd_throughput.py                     # CPU defaults (2 cores: about 5 minutes)
    python benchmarks/fkd_throughput.py --device cuda --input-size 224 --batch 256 --workers 8
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--student", default="resnet18")
    p.add_argument("--teacher", default="resnet101", help="timm name; randomly initialised (speed only)")
    p.add_argument("--images", type=int, default=64, help="synthetic training images")
    p.add_argument("--image-size", default="500x375", help="WxH of the synthetic JPEGs")
    p.add_argument("--input-size", type=int, default=112, help="student and teacher input size")
    p.add_argument("--batch", type=int, default=32, help="crops per optimizer step (all modes)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--crops-per-visit", type=int, default=4)
    p.add_argument("--stored-crops", type=int, default=8, help="crops per image in the soft-label store")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per mode")
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--window-steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "fkd_throughput.json"))
    return p.parse_args()


# --------------------------------------------------------------------------- data


def make_images(root: Path, n: int, size: str):
    """Smooth random textures saved as quality-90 JPEGs, 8 classes."""
    from PIL import Image

    from kdflow.data.imagefolder import split_manifest, write_manifest

    w, h = (int(v) for v in size.split("x"))
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / "train" / f"n{i % 8:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 12, (h, w, 3))
        Image.fromarray(np.clip(np.asarray(img, dtype=np.int64) + noise, 0, 255).astype(np.uint8)).save(
            folder / f"img{i:05d}.JPEG", quality=90)
    manifest = split_manifest(root, "train")
    write_manifest(root / "train.tsv", manifest, "bench")
    return manifest


class FreshCrops:
    """(a) and (b): one new RandomResizedCrop per image visit, cut with the same code as replay."""

    def __init__(self, images, size: int, pass_index: int):
        self.images, self.size, self.pass_index = images, size, pass_index

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from kdflow.data.multicrop import cut_crops, sample_crops

        image = self.images.load(i)
        seed = int(np.random.SeedSequence([self.pass_index, i]).generate_state(1, np.uint64)[0])
        plan = sample_crops(seed, image.width, image.height, 1)
        return cut_crops(image, plan, self.size, "bilinear")[0], self.images.manifest.samples[i].index


def endless(make_loader):
    p = 0
    while True:
        yield from make_loader(p)
        p += 1


# --------------------------------------------------------------------------- modes


def flops(arch: str, size: int, num_classes: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from kdflow.models.network import Network

    net = Network(arch, num_classes=num_classes).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def timed(step, batches, args, device) -> dict:
    """Median crops/s and images/s over ``windows`` windows of ``window_steps`` steps."""
    for _ in range(args.warmup):
        step(next(batches))
    crops_s, images_s = [], []
    for _ in range(args.windows):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, crops, images = time.perf_counter(), 0, 0
        for _ in range(args.window_steps):
            c, i = step(next(batches))
            crops, images = crops + c, images + i
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        crops_s.append(crops / seconds)
        images_s.append(images / seconds)
    return {"crops_per_s": round(statistics.median(crops_s), 2), "images_per_s": round(statistics.median(images_s), 2),
            "windows_crops_per_s": [round(v, 2) for v in crops_s]}


def main():
    args = parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from kdflow.data.imagefolder import ManifestDataset
    from kdflow.data.multicrop import to_unit_float
    from kdflow.distill.base import MethodContext
    from kdflow.distill.fkd import FKD, soft_cross_entropy
    from kdflow.jobs.softlabels import soft_label_shard, soft_label_store
    from kdflow.config import JobConfig
    from kdflow.models.network import Network
    from kdflow.models.teacher import load_teacher, save_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.batch % args.crops_per_visit:
        raise SystemExit(f"--batch {args.batch} must be divisible by --crops-per-visit {args.crops_per_visit}")
    with tempfile.TemporaryDirectory(prefix="kdflow-fkd-bench-") as tmp:
        tmp = Path(tmp)
        manifest = make_images(tmp / "data", args.images, args.image_size)
        classes = 1000  # an ImageNet-sized head: the soft labels and the heads are full-size
        torch.manual_seed(0)
        save_teacher(tmp / "teacher.safetensors", Network(args.teacher, num_classes=classes), "bench", "random_init")
        spec = {"name": "bench", "label": {"type": "marginal_smoothing", "k": 5}, "shards": 1,
                "workers": args.workers, "seed": 0, "commit_every": 1000,
                "data": {"name": "bench", "dataset": {"name": "bench", "root": str(tmp / "data"),
                                                      "work_dir": str(tmp / "data")}},
                "generate": {"teacher": {"name": "bench"}, "num_crops": args.stored_crops,
                             "teacher_batch": args.stored_crops, "temperature": 1.0,
                             "crop": {"size": args.input_size, "scale": [0.08, 0.936], "ratio": [0.75, 4 / 3],
                                      "interpolation": "bicubic"}}}
        spec = JobConfig(spec, identity=spec)  # made here, not from a config: all of it is identity
        store_dir = tmp / "softlabels"
        print("generating soft labels ...", flush=True)
        soft_label_shard(spec, tmp / "data" / "train.tsv", 0, store_dir, tmp / "state",
                         teacher_path=tmp / "teacher.safetensors")
        store = soft_label_store(spec, tmp / "data" / "train.tsv", store_dir, teacher_path=tmp / "teacher.safetensors")
        teacher = load_teacher(tmp / "teacher.safetensors", device)

        def new_student():
            torch.manual_seed(0)
            net = Network(args.student, num_classes=classes).to(device).train()
            return net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        images = ManifestDataset(manifest)
        pin = device.type == "cuda"

        def fresh_loader(p):
            return torch.utils.data.DataLoader(FreshCrops(images, args.input_size, p), batch_size=args.batch,
                                               shuffle=True, drop_last=True, num_workers=args.workers,
                                               pin_memory=pin, persistent_workers=False)

        def train_step(net, opt, loss):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        results = {}
        net, opt = new_student()

        def supervised(batch):
            x = to_unit_float(batch[0].to(device, non_blocking=True))
            train_step(net, opt, F.cross_entropy(net(x), batch[1].to(device)))
            return len(x), len(x)

        print("timing (a) supervised ...", flush=True)
        results["supervised"] = timed(supervised, endless(fresh_loader), args, device)

        net, opt = new_student()

        def online_kd(batch):
            x = to_unit_float(batch[0].to(device, non_blocking=True))
            with torch.no_grad():
                target = torch.softmax(teacher(x).float(), dim=1)
            train_step(net, opt, soft_cross_entropy(net(x), target))
            return len(x), len(x)

        print("timing (b) online_kd ...", flush=True)
        results["online_kd"] = timed(online_kd, endless(fresh_loader), args, device)

        net, opt = new_student()
        training = {"batch_size": args.batch, "workers": args.workers}
        ctx = MethodContext(data=manifest, training=training, device=device, seed=0,
                            options={"crops_per_visit": args.crops_per_visit, "single_crop_epochs": 0,
                                     "temperature": 1.0, "size": args.input_size, "interpolation": "bilinear",
                                     "mixup": {"enabled": False}},
                            artefacts={"soft_labels": store_dir})
        fkd = FKD(ctx)
        passes = fkd.passes(10_000 * args.crops_per_visit)

        def fkd_step(batch):
            batch = fkd.prepare(batch)
            loss, _ = fkd.loss(net, batch)
            train_step(net, opt, loss)
            return len(batch["image"]), len(batch["image"]) // passes[0]

        print("timing (c) fkd_replay ...", flush=True)
        results["fkd_replay"] = timed(fkd_step, endless(fkd.loader), args, device)

        student_flops = flops(args.student, args.input_size, classes)
        teacher_flops = flops(args.teacher, args.input_size, classes)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "settings": {k: getattr(args, k) for k in ("student", "teacher", "images", "image_size", "input_size", "batch",
                                                   "workers", "crops_per_visit", "stored_crops", "warmup", "windows",
                                                   "window_steps")},
        "forward_gflops": {"student": round(student_flops / 1e9, 3), "teacher": round(teacher_flops / 1e9, 3),
                           "teacher_over_student": round(teacher_flops / student_flops, 2)},
        "soft_labels": store,
        "modes": results,
        "ratios": {
            "fkd_over_supervised": round(results["fkd_replay"]["crops_per_s"] / results["supervised"]["crops_per_s"], 3),
            "fkd_over_online_kd": round(results["fkd_replay"]["crops_per_s"] / results["online_kd"]["crops_per_s"], 3),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"modes": results, "ratios": report["ratios"], "forward_gflops": report["forward_gflops"]},
                     indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
