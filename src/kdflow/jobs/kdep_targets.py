"""The generation jobs of teacher-free KDEP: shards of a teacher-feature store, then its index.

``kdep_target_shard`` runs the frozen teacher once over ``num_crops`` crops of every image of a
contiguous range of the subset (boxes from a per-image seed; each image decoded once) and stores
per crop its pooled feature, or the KDEP target made from it (SVD projection onto the student's
width, then power temperature scaling), in float16. N shard jobs give exactly the bytes one job
would; an interrupted job resumes from its last commit and ends byte-identical.
``kdep_target_store`` merges the shards' index parts and writes ``store.json``: what the store
was made from (its config slice, the teacher's and SVD file's sha256), bytes per crop, and the
generation cost with its break-even epoch count.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from kdflow.data.imagefolder import read_manifest
from kdflow.distill.kdep import SVDAlignment, power_temperature_scaling
from kdflow.distill.softlabels import (
    FeatureCodec,
    ShardWriter,
    SoftLabelError,
    assemble_store,
    image_seed,
    images_digest,
    shard_file,
    shard_range,
)
from kdflow.distill.svd import load_svd
from kdflow.io import hash_data, sha256_file
from kdflow.jobs.softlabels import teacher_outputs, write_records
from kdflow.models.network import Network
from kdflow.models.teacher import load_teacher
from kdflow.provenance import Provenance


def kdep_target_job_paths(cfg: dict, name: str) -> dict:
    """What a KDEP-target job reads and writes, from a validated config (the hand-run scripts)."""
    from kdflow import paths
    from kdflow.config import resolve_kdep_targets

    results = cfg["results"]
    spec = resolve_kdep_targets(cfg, name)
    svd = None
    if spec["store"] == "targets":
        svd = paths.svd_file(results, spec["teacher"]["name"], spec["projection"]["svd"]["subset"]["name"])
    return {"spec": spec, "manifest": paths.subset_manifest(results, spec["data"]["name"]),
            "teacher": paths.teacher_weights(results, spec["teacher"]["name"]), "svd": svd,
            "out_dir": paths.kdep_targets_dir(results, name), "state": paths.state_dir(results, "kdep_targets", name)}


class TargetProjection:
    """Teacher features -> what the store keeps: the features themselves, or KDEP's targets."""

    def __init__(self, spec: dict, svd_path: str | Path | None, teacher_width: int):
        self.align = None
        self.width = teacher_width
        if spec["store"] == "targets":
            projection = spec["projection"]
            if svd_path is None:
                raise SoftLabelError(f"KDEP target store {spec['name']!r} needs the SVD file of its projection")
            width = Network(projection["student"]["arch"], num_classes=0).num_features
            mean, basis = load_svd(svd_path).projection(width)
            self.align, self.width = SVDAlignment(mean, basis), width
            self.tau, self.power = projection["tau"], projection["power"]

    @property
    def codec(self) -> FeatureCodec:
        return FeatureCodec("kdep_targets" if self.align is not None else "teacher_features", self.width)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        if self.align is None:
            return features
        return power_temperature_scaling(self.align(features), self.tau, self.power)


def feature_records(spec: dict, manifest, teacher, projection: TargetProjection, device, start: int, stop: int,
                    timing: dict):
    """Yield ``(records, width, height)`` per image from ``start``; ``timing["teacher"]`` adds up
    the seconds spent in the teacher (for the break-even count)."""
    outputs = teacher_outputs(spec, spec["seed"], spec["workers"], manifest, _Timed(teacher, timing), "features",
                              device, start, stop)
    for features, width, height in outputs:
        yield projection.codec.encode(projection(features)), width, height


class _Timed:
    """The teacher, with the wall time of its forward passes summed (synchronised on CUDA)."""

    def __init__(self, teacher, timing: dict):
        self.teacher, self.timing = teacher, timing
        timing.setdefault("teacher", 0.0)

    def __call__(self, x, output):
        started = time.perf_counter()
        out = self.teacher(x, output=output)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        self.timing["teacher"] += time.perf_counter() - started
        return out


def kdep_target_shard(spec: dict, manifest_path: str | Path, shard: int, out_folder: str | Path,
                      state_dir: str | Path, teacher_path: str | Path, svd_path: str | Path | None = None) -> dict:
    """Write ``shard-<shard>.{bin,npz}`` of the store ``spec`` (a resolved ``kdep_targets`` entry)."""
    started = time.time()
    manifest = read_manifest(manifest_path, spec["data"]["dataset"])
    if not len(manifest):
        raise SoftLabelError(f"{manifest_path} lists no images")
    teacher = load_teacher(teacher_path).eval()
    projection = TargetProjection(spec, svd_path, teacher.num_features)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    first, stop = shard_range(len(manifest), spec["shards"], shard)
    # what the records depend on: the identity (not workers or commit_every, which a resumed job may change)
    spec_hash = hash_data({"spec": spec.identity, "teacher": sha256_file(teacher_path),
                           "svd": sha256_file(svd_path) if svd_path else None,
                           "images": images_digest(s.path for s in manifest.samples)})
    writer = ShardWriter(state_dir, shard, first, stop, projection.codec, spec["num_crops"], spec_hash)
    timing: dict = {}
    try:
        records = feature_records(spec, manifest, teacher.to(device), projection, device, writer.next_image, stop,
                                  timing)
        write_records(writer, records, spec["commit_every"], f"KDEP targets {spec['name']} shard {shard}")
        seeds = np.array([image_seed(spec["seed"], i) for i in range(first, stop)], dtype=np.uint64)
        info = writer.finish(shard_file(out_folder, shard, "bin"), shard_file(out_folder, shard, "npz"), seeds,
                             extra={"crops_per_image": spec["num_crops"], "codec": projection.codec.as_dict(),
                                    "seconds": round(time.time() - started, 3),
                                    "teacher_seconds": round(timing.get("teacher", 0.0), 3)})
    finally:
        writer.close()
    print(f"[KDEP targets {spec['name']} shard {shard}] {info}", flush=True)
    return info


def break_even_epochs(generation_seconds: float, teacher_seconds: float, num_crops: int) -> float | None:
    """Epochs of online KDEP whose teacher forward passes cost as much as generating the store.

    Generation runs the teacher on ``num_crops`` crops per image, online KDEP on one per image
    per epoch: one epoch's teacher time is ``teacher_seconds / num_crops``. A replay run longer
    than this many epochs has saved more teacher time than the store cost (decoding included).
    """
    per_epoch = teacher_seconds / num_crops
    return round(generation_seconds / per_epoch, 2) if per_epoch > 0 else None


def kdep_target_store(spec: dict, manifest_path: str | Path, out_folder: str | Path, teacher_path: str | Path,
                      svd_path: str | Path | None = None) -> dict:
    """Merge the shards' index parts; ``store.json`` says what the store was made from."""
    manifest = read_manifest(manifest_path, spec["data"]["dataset"])
    out_folder = Path(out_folder)
    infos = []
    for k in range(spec["shards"]):
        with np.load(shard_file(out_folder, k, "npz")) as npz:
            infos.append(json.loads(str(npz["info"])))
    codecs = {json.dumps(i["codec"], sort_keys=True) for i in infos}
    if len(codecs) != 1:
        raise SoftLabelError(f"the shards of {out_folder} disagree on their codec: {sorted(codecs)}")
    seconds = sum(i["seconds"] for i in infos)
    teacher_seconds = sum(i["teacher_seconds"] for i in infos)
    crop = spec["crop"]
    meta = {
        "name": spec["name"],
        "codec": infos[0]["codec"],
        "crops_per_image": spec["num_crops"],
        "seed": spec["seed"],
        "images": {"count": len(manifest), "sha256": images_digest(s.path for s in manifest.samples),
                   "manifest": str(manifest_path)},
        "sampling": {k: crop[k] for k in ("size", "scale", "ratio", "interpolation")},
        "photometric": spec["augment"],
        "teacher": {"name": spec["teacher"]["name"], "sha256": sha256_file(teacher_path)},
        "identity": spec.identity,
        # the job seconds of the shards' last runs (a resumed shard counts only what it computed)
        "generation": {"seconds": round(seconds, 2), "teacher_seconds": round(teacher_seconds, 2),
                       "break_even_epochs": break_even_epochs(seconds, teacher_seconds, spec["num_crops"])},
    }
    if spec["store"] == "targets":
        projection = spec["projection"]
        meta["projection"] = {"svd": str(svd_path), "svd_sha256": sha256_file(svd_path),
                              "width": infos[0]["codec"]["width"], "tau": projection["tau"],
                              "power": projection["power"], "student": projection["student"]["arch"]}
    store = assemble_store(out_folder, spec["shards"], meta)
    prov = Provenance("kdep_targets", name=spec["name"], config=spec, seeds={"crops": spec["seed"]})
    prov.add_inputs([p for p in (manifest_path, teacher_path, svd_path) if p])
    summary = {k: store[k] for k in ("bytes_per_crop", "total_bytes", "crops_per_image", "generation")}
    prov.write(out_folder / "provenance.json", extra=summary)
    return summary
