"""The pretrain job: one run of any method -> an exported student (safetensors with metadata).

What the job loads follows the run's method declaration (kdflow.distill.registry): a teacher when
the method reads one, its artefacts, a head sized by the method once the teacher is loaded, and an
evaluation of that head on the pre-training dataset's test split.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdflow.data.imagefolder import read_manifest
from kdflow.distill.base import get_method
from kdflow.io import write_json
from kdflow.jobs.common import metrics_record
from kdflow.models.checkpoints import save_weights
from kdflow.models.network import InputSpec, Network
from kdflow.models.teacher import load_teacher
from kdflow.provenance import Provenance
from kdflow.train import distributed
from kdflow.train.run import train
from kdflow.train.trainer import discard_state


def student_metadata(net: Network, run: dict, config_hash: str, epochs: int) -> dict:
    return {
        "kind": "student",
        "run": run["name"],
        "method": run["method"],
        "arch": net.arch,
        "naming": "timm",
        "num_features": net.num_features,
        "input": net.input_spec.as_dict(),
        "channel_order": net.input_spec.channel_order,
        "config_hash": config_hash,
        "epochs": epochs,
        "teacher": run.get("teacher", {}).get("name"),
    }


def import_student(run, out_dir: str | Path) -> dict:
    """A run whose method imports its student (KDEP's released ResNet-18 in robustness format, a
    timm/torchvision file): loaded strictly and exported like a trained one."""
    from kdflow.models.teacher import from_checkpoint

    out_dir = Path(out_dir)
    prov = Provenance("pretrain", name=run["name"], config=run)
    prov.add_inputs([run["checkpoint"]["path"]])
    student_cfg = {"name": run["name"], "arch": run["student"]["arch"], "input": run["student"].get("input"),
                   "checkpoint": run["checkpoint"]}
    net, extra = from_checkpoint(student_cfg)
    save_weights(out_dir / "student.safetensors", net.backbone_state_dict(),
                 student_metadata(net, run, run.hash, epochs=0))
    write_json(out_dir / "metrics.json", metrics_record("pretrain", None, run["name"], None, [],
                                                        config_hash=run.hash))
    prov.write(out_dir / "provenance.json", extra=extra)
    return extra


def _head_evaluation(student: Network, data, val_manifest_path, dataset: dict, training: dict, dist,
                     head_names: list[str] | None = None):
    """Top-1 of the student's own head on the pre-training dataset's test split. A head over other
    classes than the data's (``head_names``: FKD's 1000-class labels on a 100-class subset) is
    read through the data's classes, mapped onto the head's by name: the prediction is the best
    of the data's classes."""
    from kdflow.train.evaluate import val_top1

    val = read_manifest(val_manifest_path, dataset)
    if val.classes != data.classes:
        raise ValueError(f"{val_manifest_path}: its classes are not those of the run's training data")
    if head_names is None:
        if student.net.num_classes != val.num_classes:
            raise ValueError(f"the student's head has {student.net.num_classes} classes, the data {val.num_classes}, "
                             "and the method does not name the head's classes to map the data's onto")
        return val_top1(val, training, dist.device)
    if len(head_names) != student.net.num_classes:
        raise ValueError(f"{len(head_names)} head class names for a head of {student.net.num_classes} classes")
    place = {name: k for k, name in enumerate(head_names)}
    missing = [name for name in val.classes if name not in place]
    if missing:
        raise ValueError(f"{len(missing)} of the data's {val.num_classes} classes are not among the head's "
                         f"{len(head_names)} label classes (first: {', '.join(missing[:5])}); the dataset's class "
                         "names must be the labels' (e.g. ImageNet wnids for FKD's released labels)")
    return val_top1(val, training, dist.device, class_map=[place[name] for name in val.classes])


def pretrain(run, manifest_path: str | Path, out_dir: str | Path, state_dir: str | Path,
             teacher_path: str | Path | None = None, artefacts: dict[str, str | Path] | None = None,
             val_manifest_path: str | Path | None = None) -> dict:
    """``run`` is a resolved pre-training run (kdflow.config.resolve_run); ``artefacts`` the paths
    its method declares (``svd``: the SVD file; ``soft_labels``, ``kdep_targets``: the store's
    ``store.json``). A student with a head is evaluated on ``val_manifest_path``."""
    out_dir = Path(out_dir)
    training = run["training"]
    artefacts = dict(artefacts or {})
    prov = Provenance("pretrain", name=run["name"], config=run, seeds={"training": training["seed"]},
                      threads=torch.get_num_threads())
    prov.add_inputs([p for p in (manifest_path, teacher_path, val_manifest_path) if p])
    prov.add_inputs(artefacts.values())
    dist = distributed.setup()
    dataset = run["data"]["dataset"]
    data = read_manifest(manifest_path, dataset)
    method = get_method(run["method"], run.get("method_module"))
    teacher = None
    if teacher_path and method.declaration.get("loads_teacher", True):
        teacher = load_teacher(teacher_path)
    elif teacher_path:  # the teacher's outputs come from an artefact made with this file
        artefacts["teacher_file"] = str(teacher_path)
    # what each artefact was resolved to in this run's identity, for methods that check a store
    identity = getattr(run, "identity", run)
    artefacts["specs"] = {a: identity[a] for a in method.declaration.get("artefacts", ()) if a in identity}
    torch.manual_seed(training["seed"])
    options = run.get(run["method"], {})
    classes = method.head_classes(data, artefacts, teacher, options)
    if classes and not method.declaration.get("head"):
        raise ValueError(f"method {run['method']!r} sized a head of {classes} classes but its DECLARATION "
                         "has no 'head: True' (the workflow would not give it the test split to evaluate on)")
    student = Network(run["student"]["arch"], num_classes=classes,
                      input_spec=InputSpec.from_config(run["student"].get("input")))
    artefacts["student_width"] = student.num_features
    # a method declared with a head may leave it out (VkD without its logit terms): then nothing to evaluate
    head_names = method.head_class_names(data, artefacts, teacher, options) if classes else None
    evaluate = (_head_evaluation(student, data, val_manifest_path, dataset, training, dist, head_names)
                if val_manifest_path and classes else None)
    result = train(run["method"], student, data, training, seed=training["seed"], run_dir=out_dir,
                   state_dir=state_dir, config_hash=run.hash, dist=dist, teacher=teacher,
                   options=options, artefacts=artefacts, evaluate=evaluate,
                   desc=f"pretrain {run['name']}")
    if dist.rank == 0:
        student = student.cpu()
        save_weights(out_dir / "student.safetensors", student.backbone_state_dict(),
                     student_metadata(student, run, run.hash, result["epochs"]))
        last = result["rows"][-1]
        metrics = [{"metric": "train_loss", "value": last["loss"], "checkpoint": "final"}]
        if "val_top1" in last:
            metrics.append({"metric": "val_top1", "value": last["val_top1"], "checkpoint": "final"})
        write_json(out_dir / "metrics.json", metrics_record("pretrain", run["data"]["name"], run["name"],
                                                            training["seed"], metrics, config_hash=run.hash))
        prov.write(out_dir / "provenance.json", extra={"epochs": result["epochs"], "passes": result["passes"],
                                                      "interruptions": result["interruptions"]})
        discard_state(state_dir)
    distributed.teardown()
    return result
