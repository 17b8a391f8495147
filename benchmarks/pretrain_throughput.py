"""Pre-training throughput of every path, side by side in one run, and against the compute ceiling.

All modes share the machine, the student, the input size, the crops per optimizer step, the
DataLoader settings and kdflow's crop code (``kdflow.data.multicrop``):

  ceiling       the student's forward + backward + SGD step on one batch already in memory: what
                the hardware allows, with no input pipeline and no teacher
  supervised    decode an image, cut one fresh RandomResizedCrop, cross-entropy on its label
  online_kd     as supervised, plus the teacher's logits on every batch (Hinton KD, soft CE)
  online_kdep   kdflow's KDEP method: the teacher's features on every batch, SVD + PTS, MSE
  kdep_replay   kdflow's kdep_replay method: stored crops of a KDEP-target store, no teacher
  fkd_replay    kdflow's FKD method: stored crops of a soft-label store, no teacher

Each: warm-up steps, then the median and spread of timed windows, in crops/s (training samples)
and images/s (decoded images); each also as a ratio to the ceiling, and the replay paths as ratios
to their online counterparts. The stores are generated first by the real jobs, and their cost is
reported too. Written to ``results/benchmarks/pretrain_throughput.json`` (the report plots it).

    python benchmarks/pretrain_throughput.py                    # CPU defaults (2 cores: about 5 minutes)
    python benchmarks/pretrain_throughput.py --device cuda --input-size 224 --batch 256 --workers 8 --images 512
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np

from common import RESULTS, forward_flops, machine, make_images, measure, ratio, write_report

CLASSES = 1000  # ImageNet-sized heads and soft labels


def parse_args(argv=None):
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--student", default="resnet18")
    p.add_argument("--teacher", default="resnet101", help="timm name, randomly initialised (speed only)")
    p.add_argument("--images", type=int, default=64, help="synthetic training images")
    p.add_argument("--image-size", default="500x375", help="WxH of the synthetic JPEGs")
    p.add_argument("--input-size", type=int, default=112, help="student and teacher input size")
    p.add_argument("--batch", type=int, default=32, help="crops per optimizer step (all modes)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--crops-per-visit", type=int, default=4, help="replayed crops per decoded image")
    p.add_argument("--stored-crops", type=int, default=8, help="crops per image in the stores")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--window-steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--modes", default="ceiling,supervised,online_kd,online_kdep,kdep_replay,fkd_replay")
    p.add_argument("--out", default=str(RESULTS / "pretrain_throughput.json"))
    return p.parse_args(argv)


class FreshCrops:
    """The online modes' input: one new RandomResizedCrop per image visit (uint8, as replay's)."""

    def __init__(self, images, size: int, pass_index: int):
        self.images, self.size, self.pass_index = images, size, pass_index

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from kdflow.data.multicrop import cut_crops, sample_crops

        image = self.images.load(i)
        seed = int(np.random.SeedSequence([self.pass_index, i]).generate_state(1, np.uint64)[0])
        return cut_crops(image, sample_crops(seed, image.width, image.height, 1), self.size, "bilinear")[0], \
            self.images.manifest.samples[i].index


def endless(make_loader):
    for p in itertools.count():
        yield from make_loader(p)


def stores(args, tmp: Path, manifest_path: Path, teacher_path: Path, svd_path: Path, device) -> dict:
    """A soft-label store and a KDEP-target store of the synthetic images, by the real jobs."""
    from kdflow.config import JobConfig
    from kdflow.jobs.kdep_targets import kdep_target_shard, kdep_target_store
    from kdflow.jobs.softlabels import soft_label_shard, soft_label_store

    data = {"name": "bench", "dataset": {"name": "bench", "root": str(tmp / "data"), "work_dir": str(tmp / "data")}}
    crop = {"size": args.input_size, "scale": [0.08, 1.0], "ratio": [0.75, 4 / 3], "interpolation": "bilinear"}
    common = {"data": data, "shards": 1, "workers": args.workers, "seed": 0, "commit_every": 10_000}
    labels = {"name": "labels", **common, "label": {"type": "marginal_smoothing", "k": 5},
              "generate": {"teacher": {"name": "bench"}, "num_crops": args.stored_crops,
                           "teacher_batch": args.stored_crops, "temperature": 1.0, "crop": crop}}
    targets = {"name": "targets", **common, "teacher": {"name": "bench"}, "store": "targets",
               "num_crops": args.stored_crops, "teacher_batch": args.stored_crops, "crop": crop,
               "augment": {"color_jitter": 0.1, "lighting": 0.05},
               "projection": {"student": {"arch": args.student}, "tau": 0.1, "power": 3}}
    out = {}
    for name, spec, shard, assemble in (
            ("soft_labels", labels, soft_label_shard, soft_label_store),
            ("kdep_targets", targets, kdep_target_shard, kdep_target_store)):
        spec = JobConfig(spec, identity=spec)  # made here, not from a config: all of it is identity
        folder = tmp / name
        print(f"generating {name} ...", flush=True)
        started = time.perf_counter()
        if name == "soft_labels":
            shard(spec, manifest_path, 0, folder, tmp / f"state-{name}", teacher_path=teacher_path)
            summary = assemble(spec, manifest_path, folder, teacher_path=teacher_path)
        else:
            shard(spec, manifest_path, 0, folder, tmp / f"state-{name}", teacher_path, svd_path)
            summary = assemble(spec, manifest_path, folder, teacher_path, svd_path)
        seconds = time.perf_counter() - started
        out[name] = {"folder": folder, "summary": {**summary, "images_per_s": round(args.images / seconds, 2)}}
    return out


def random_svd(path: Path, teacher, width: int, device):
    """An SVD file of the (random) teacher's features on ``width`` + 64 small random inputs: for
    speed only, but of full rank for the student's ``width``."""
    import torch

    from kdflow.distill.svd import ScatterAccumulator, decompose, save_svd

    acc = ScatterAccumulator(teacher.num_features)
    with torch.no_grad():
        for _ in range((width + 64) // 64 + 1):
            acc.update(teacher(torch.rand(64, 3, 32, 32, device=device), output="features").float().cpu())
    return save_svd(path, decompose(acc))


def main(argv=None):
    import torch
    from torch.nn import functional as F

    from kdflow.data.imagefolder import ManifestDataset
    from kdflow.data.multicrop import to_unit_float
    from kdflow.distill.base import MethodContext
    from kdflow.distill.fkd import FKD, soft_cross_entropy
    from kdflow.distill.kdep import KDEP
    from kdflow.distill.kdep_replay import KDEPReplay
    from kdflow.models.network import Network
    from kdflow.models.teacher import load_teacher, save_teacher

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    modes = args.modes.split(",")
    if args.batch % args.crops_per_visit:
        raise SystemExit(f"--batch {args.batch} must be divisible by --crops-per-visit {args.crops_per_visit}")
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="kdflow-throughput-") as tmp:
        tmp = Path(tmp)
        manifest = make_images(tmp / "data", args.images, args.image_size)
        torch.manual_seed(0)
        save_teacher(tmp / "teacher.safetensors", Network(args.teacher, num_classes=CLASSES), "bench", "random_init")
        teacher = load_teacher(tmp / "teacher.safetensors", device).eval()
        svd_path = random_svd(tmp / "svd.safetensors", teacher, Network(args.student, num_classes=0).num_features,
                              device)
        made = stores(args, tmp, tmp / "data" / "train.tsv", tmp / "teacher.safetensors", svd_path, device)
        images = ManifestDataset(manifest)
        training = {"batch_size": args.batch, "workers": args.workers}
        pin = device.type == "cuda"

        def fresh_loader(p):
            return torch.utils.data.DataLoader(FreshCrops(images, args.input_size, p), batch_size=args.batch,
                                               shuffle=True, drop_last=True, num_workers=args.workers,
                                               pin_memory=pin)

        def student():
            torch.manual_seed(0)
            net = Network(args.student, num_classes=CLASSES).to(device).train()
            return net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def stepper(loss_of):
            net, opt = student()

            def step(batch):
                loss, counts = loss_of(net, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return counts

            return step

        def on_device(batch):
            return to_unit_float(batch[0].to(device, non_blocking=True)), batch[1].to(device, non_blocking=True)

        def context(options, artefacts, with_teacher=False):
            return MethodContext(data=manifest, training=training, device=device, seed=0, options=options,
                                 artefacts={"student_width": Network(args.student, num_classes=0).num_features,
                                            **artefacts},
                                 teacher=teacher if with_teacher else None)

        replay_options = {"crops_per_visit": args.crops_per_visit, "single_crop_epochs": 0, "size": args.input_size,
                          "interpolation": "bilinear"}

        def ceiling():
            x = torch.rand(args.batch, 3, args.input_size, args.input_size, device=device)
            y = torch.randint(CLASSES, (args.batch,), device=device)
            return stepper(lambda net, _: (F.cross_entropy(net(x), y), {"crops": len(x), "images": len(x)})), \
                itertools.repeat(None)

        def supervised():
            def loss(net, batch):
                x, y = on_device(batch)
                return F.cross_entropy(net(x), y), {"crops": len(x), "images": len(x)}
            return stepper(loss), endless(fresh_loader)

        def online_kd():
            def loss(net, batch):
                x, _ = on_device(batch)
                with torch.no_grad():
                    target = torch.softmax(teacher(x).float(), dim=1)
                return soft_cross_entropy(net(x), target), {"crops": len(x), "images": len(x)}
            return stepper(loss), endless(fresh_loader)

        def online_kdep():
            kdep = KDEP(context({"tau": 0.1, "power": 3, "loss_weight": 3.0}, {"svd": svd_path}, with_teacher=True))

            def loss(net, batch):
                x, y = on_device(batch)
                return kdep.loss(net, {"image": x, "label": y})[0], {"crops": len(x), "images": len(x)}
            return stepper(loss), endless(fresh_loader)

        def replayed(method):
            method.passes(10_000 * args.crops_per_visit)

            def loss(net, batch):
                prepared = method.prepare(batch)
                n = len(prepared["image"])
                return method.loss(net, prepared)[0], {"crops": n, "images": n // args.crops_per_visit}
            return stepper(loss), endless(method.loader)

        def kdep_replay():
            return replayed(KDEPReplay(context({**replay_options, "tau": 0.1, "power": 3, "loss_weight": 3.0},
                                               {"kdep_targets": made["kdep_targets"]["folder"], "svd": svd_path})))

        def fkd_replay():
            return replayed(FKD(context({**replay_options, "temperature": 1.0, "mixup": {"enabled": False}},
                                        {"soft_labels": made["soft_labels"]["folder"]})))

        makers = {"ceiling": ceiling, "supervised": supervised, "online_kd": online_kd, "online_kdep": online_kdep,
                  "kdep_replay": kdep_replay, "fkd_replay": fkd_replay}
        for mode in modes:
            print(f"timing {mode} ...", flush=True)
            step, items = makers[mode]()
            results[mode] = measure(step, items, args.warmup, args.windows, args.window_steps, sync)
        student_flops = forward_flops(args.student, args.input_size, CLASSES)
        teacher_flops = forward_flops(args.teacher, args.input_size, CLASSES)
    crops = {m: r["crops"]["median"] for m, r in results.items()}
    ratios = {f"{m}_over_ceiling": ratio(crops[m], crops["ceiling"]) for m in crops if m != "ceiling" and "ceiling" in crops}
    for replay, online in (("kdep_replay", "online_kdep"), ("fkd_replay", "online_kd"), ("fkd_replay", "supervised"),
                           ("kdep_replay", "supervised")):
        if replay in crops and online in crops:
            ratios[f"{replay}_over_{online}"] = ratio(crops[replay], crops[online])
    report = {
        "benchmark": "pretrain_throughput",
        "machine": machine(args.device),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "forward_gflops": {"student": round(student_flops / 1e9, 3), "teacher": round(teacher_flops / 1e9, 3),
                           "teacher_over_student": round(teacher_flops / student_flops, 2)},
        "stores": {name: entry["summary"] for name, entry in made.items()},
        # the report's throughput plot reads crops_per_s per mode
        "modes": {m: {"crops_per_s": r["crops"]["median"], "images_per_s": r["images"]["median"],
                      "crops_per_s_spread": r["crops"]} for m, r in results.items()},
        "ratios": ratios,
    }
    write_report(args.out, report)
    print({"crops_per_s": crops, "ratios": ratios, "forward_gflops": report["forward_gflops"]}, flush=True)
    return report


if __name__ == "__main__":
    main()
