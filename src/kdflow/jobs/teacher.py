"""The teacher job: any teacher source -> ``teachers/<name>/model.safetensors``."""

from __future__ import annotations

from pathlib import Path

import torch

from kdflow.data.imagefolder import read_manifest
from kdflow.io import write_json
from kdflow.jobs.common import metrics_record
from kdflow.models import teacher as sources
from kdflow.models.network import InputSpec, Network
from kdflow.provenance import Provenance
from kdflow.train import distributed
from kdflow.train.evaluate import top1, val_top1
from kdflow.train.run import train
from kdflow.train.trainer import discard_state


def build_teacher(cfg, out_dir: str | Path, state_dir: str | Path, manifest_path: str | Path | None = None,
                  val_manifest_path: str | Path | None = None) -> dict:
    """``cfg`` is a resolved teacher (kdflow.config.resolve_teacher). A teacher trained by
    the pipeline learns on ``manifest_path`` and is evaluated on ``val_manifest_path``."""
    out_dir = Path(out_dir)
    name = cfg["name"]
    prov = Provenance("teacher", name=name, config=cfg, seeds=_seeds(cfg), threads=torch.get_num_threads())
    extra: dict = {}
    metrics: list[dict] = []
    dist = distributed.setup()
    if "pretrained" in cfg:
        net, source = sources.from_pretrained(cfg), "timm_pretrained"
    elif "checkpoint" in cfg:
        (net, extra), source = sources.from_checkpoint(cfg), "checkpoint"
        prov.add_inputs([cfg["checkpoint"]["path"]])
    elif "random_init" in cfg:
        net, source = sources.from_random_init(cfg), "random_init"
    else:
        net, metrics = _train_teacher(cfg, out_dir, state_dir, manifest_path, val_manifest_path, dist, prov)
        source = "trained"
    if dist.rank == 0:
        sources.save_teacher(out_dir / "model.safetensors", net.cpu(), name, source, extra)
        write_json(out_dir / "metrics.json", metrics_record("teacher", None, name, _seeds(cfg).get("training"), metrics))
        prov.write(out_dir / "provenance.json", extra={"source": source, **extra})
        discard_state(state_dir)
    distributed.teardown()
    return {"source": source, "metrics": metrics}


class TeacherCheckFailed(RuntimeError):
    pass


def check_teacher(check, teacher_path: str | Path, manifest_path: str | Path, out_path: str | Path) -> dict:
    """Top-1 of a teacher on a test manifest; fails loudly below ``check['min_top1']``. ``check`` is
    resolved (kdflow.config.resolve_teacher_check): the teacher's name, its dataset resolved."""
    name = check["teacher"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher = sources.load_teacher(teacher_path, device)
    manifest = read_manifest(manifest_path, check["dataset"])
    if teacher.net.num_classes != manifest.num_classes:
        raise TeacherCheckFailed(
            f"teacher {name!r} has {teacher.net.num_classes} outputs, {manifest_path} has "
            f"{manifest.num_classes} classes; check.dataset must use the teacher's classes")
    acc = top1(teacher, manifest, check["eval"], device, batch_size=check["batch_size"])
    record = {"teacher": name, "dataset": check["dataset"]["name"], "top1": round(acc, 4), "min_top1": check["min_top1"],
              "input": teacher.input_spec.as_dict(), "images": len(manifest)}
    print(record)
    if acc < check["min_top1"]:
        raise TeacherCheckFailed(
            f"teacher {name!r} reaches top-1 {acc:.2f}% on {check['dataset']['name']!r} ({len(manifest)} images), below "
            f"check.min_top1 = {check['min_top1']}%. A teacher far below its published accuracy usually means a "
            f"wrong input spec: channel_order {teacher.input_spec.channel_order} (the Microsoft ResNet-50 expects "
            f"BGR), mean {list(teacher.input_spec.mean)}, std {list(teacher.input_spec.std)}, or a wrong file.")
    write_json(out_path, record)
    return record


def _seeds(cfg: dict) -> dict:
    if "random_init" in cfg:
        return {"init": cfg["random_init"]["seed"]}
    if "train" in cfg:
        return {"training": cfg["train"]["training"]["seed"]}
    return {}


def _train_teacher(cfg, out_dir, state_dir, manifest_path, val_manifest_path, dist, prov):
    training = cfg["train"]["training"]
    dataset = cfg["train"]["data"]["dataset"]
    data = read_manifest(manifest_path, dataset)
    val = read_manifest(val_manifest_path, dataset)
    prov.add_inputs([manifest_path, val_manifest_path])
    if val.classes != data.classes:
        raise ValueError(f"teacher {cfg['name']!r}: {val_manifest_path} and {manifest_path} have different classes")
    torch.manual_seed(training["seed"])
    net = Network(cfg["arch"], num_classes=data.num_classes, input_spec=InputSpec.from_config(cfg.get("input")))

    result = train("supervised", net, data, training, seed=training["seed"], run_dir=out_dir,
                   state_dir=state_dir, config_hash=cfg.hash, dist=dist,
                   evaluate=val_top1(val, training, dist.device),
                   desc=f"teacher {cfg['name']}")
    last = result["rows"][-1]
    return net, [{"metric": "val_top1", "value": last["val_top1"], "checkpoint": "final"}]
