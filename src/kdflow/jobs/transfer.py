"""Transfer jobs: one (task, dataset, pre-training run, seed) -> transfer/<task>/<dataset>/<run>/seed<k>/.

The job's work — provenance, ``metrics.json`` in the one shape every task shares, the resumable
state's clean-up — is here; how a task fine-tunes and evaluates is its kdflow.transfer module.
"""

from __future__ import annotations

import argparse
import copy
import shutil
from pathlib import Path

import torch

from kdflow.data.imagefolder import DatasetError, read_manifest
from kdflow.io import hash_data, write_json
from kdflow.jobs.common import metrics_record
from kdflow.provenance import Provenance
from kdflow.train import distributed
from kdflow.train.trainer import discard_state
from kdflow.transfer import classification, segmentation


def job_args(cfg: dict, task: str, dataset: str, run: str, seed: int) -> argparse.Namespace:
    """A transfer job's arguments from the validated config (under Snakemake and by hand alike)."""
    from kdflow import paths
    from kdflow.config import method_of, resolve_dataset, resolve_protocol, resolve_run, transfer_job
    from kdflow.tasks import TASKS

    results = cfg["results"]
    job = transfer_job(cfg, task, dataset, run, seed)
    protocol_name, pretrained = job["protocol"], job["student_run"]  # a run of pre-training seed `seed`
    export = TASKS[task].export_for(cfg["transfer"]["protocols"][protocol_name])
    student = None
    if method_of(cfg, pretrained).student != "none":
        student = (paths.export_weights(results, pretrained, export) if export
                   else paths.student_weights(results, pretrained))
    return argparse.Namespace(
        run=resolve_run(cfg, pretrained), dataset=resolve_dataset(cfg, dataset),
        protocol=resolve_protocol(cfg, protocol_name), seed=seed,
        out_dir=paths.transfer_dir(results, task, dataset, run, seed),
        state=paths.state_dir(results, "transfer", task, dataset, run, f"seed{seed}"), student=student,
        manifests={split: paths.dataset_manifest(results, dataset, split) for split in ("train", "test")})


def cli_args(task: str, doc: str) -> argparse.Namespace:
    """A transfer job's arguments from the command line (``--config --dataset --run-id --seed``)."""
    from kdflow.config import load_config
    from kdflow.jobs.common import add_gpus_option

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--run-id", dest="run", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None)
    add_gpus_option(parser)
    args = parser.parse_args()
    return argparse.Namespace(**vars(job_args(load_config(args.config), task, args.dataset, args.run, args.seed)),
                              threads=args.threads, gpus=args.gpus)


def _job_provenance(stage: str, run, dataset, protocol, seed: int, run_hash: str, manifests: dict,
                    weights_path) -> tuple[dict, Provenance]:
    """A transfer job's identity (what its metrics depend on) and its provenance record."""
    config = {"run": run.identity["name"], "run_config_hash": run_hash, "dataset": dataset.identity,
              "protocol": protocol.identity, "seed": seed}
    prov = Provenance(stage, name=f"{dataset['name']}/{run['name']}/seed{seed}", config=config,
                      seeds={"transfer": seed}, threads=torch.get_num_threads())
    prov.record["execution"] = {"dataset": dataset.execution, "protocol": protocol.execution}
    prov.add_inputs([p for p in (manifests["train"], manifests["test"], weights_path) if p])
    return config, prov


def transfer_classification(run, dataset, protocol, seed: int, out_dir: str | Path, state_dir: str | Path,
                            manifests: dict[str, str | Path], student_path: str | Path | None = None) -> dict:
    """``run``/``dataset``/``protocol`` are resolved config slices (kdflow.config.JobConfig);
    ``manifests`` the dataset's prepared ``train``/``test`` manifests; ``student_path`` is None for
    a run without pre-training (random init from ``seed``)."""
    out_dir = Path(out_dir)
    training = copy.deepcopy(protocol["training"])
    training["seed"] = seed
    train_set, test_set = (read_manifest(manifests[split], dataset) for split in ("train", "test"))
    if train_set.classes != test_set.classes:
        raise DatasetError(f"{manifests['train']} and {manifests['test']} have different classes")
    weights, student_input, student_hash = classification.read_student(run, student_path)
    run_hash = student_hash or run.hash
    config, prov = _job_provenance("transfer_cls", run, dataset, protocol, seed, run_hash, manifests, student_path)
    dist = distributed.setup()
    torch.manual_seed(seed)
    net, load_report = classification.build_classifier(run, weights, student_input, protocol,
                                                        train_set.num_classes, str(student_path))
    result = classification.finetune(net, train_set, test_set, training, seed=seed, run_dir=out_dir,
                                     state_dir=state_dir, config_hash=hash_data(config), dist=dist,
                                     desc=f"transfer {dataset['name']}/{run['name']}/seed{seed}")
    record = metrics_record("classification", dataset["name"], run["name"], seed,
                            classification.summarise(result["rows"]), protocol=protocol["name"],
                            protocol_hash=protocol.hash, run_config_hash=run_hash)
    if dist.rank == 0:
        write_json(out_dir / "metrics.json", record)
        prov.write(out_dir / "provenance.json",
                   extra={"load": load_report, "epochs": result["epochs"], "interruptions": result["interruptions"]})
        discard_state(state_dir)
    distributed.teardown()
    return record


def transfer_segmentation(run, dataset, protocol, seed: int, out_dir: str | Path, state_dir: str | Path,
                          manifests: dict[str, str | Path], export_path: str | Path | None = None) -> dict:
    """Fine-tune ``run``'s backbone (exported for mmseg: ``export_path``; None for a run without
    pre-training) on a segmentation dataset with mmsegmentation. Arguments as
    :func:`transfer_classification`; ``state_dir`` holds mmengine's resumable checkpoints."""
    from kdflow.data.segmentation import read_seg_manifest

    out_dir, state_dir = Path(out_dir), Path(state_dir)
    train_set = read_seg_manifest(manifests["train"], dataset)
    arch = run["student"]["arch"]
    input_spec, run_hash = _exported_student(run, export_path)
    _, prov = _job_provenance("transfer_seg", run, dataset, protocol, seed, run_hash, manifests, export_path)
    dist = distributed.setup()
    load_report = state_dir / "backbone_load.json"
    mmseg_config = segmentation.build_config(
        protocol=dict(protocol), arch=arch, input_spec=input_spec, num_classes=train_set.num_classes,
        manifests={k: str(v) for k, v in manifests.items()}, dataset=dict(dataset), seed=seed, work_dir=state_dir,
        backbone_weights=str(export_path) if export_path else None,
        load_report=str(load_report) if export_path else None, log_csv=str(out_dir / "log.csv"),
        world_size=dist.world_size, cuda=dist.device.type == "cuda")
    result = segmentation.finetune(mmseg_config, out_dir)
    record = metrics_record("segmentation", dataset["name"], run["name"], seed,
                            segmentation.summarise(result["evaluations"]), protocol=protocol["name"],
                            protocol_hash=protocol.hash, run_config_hash=run_hash)
    if dist.rank == 0:
        segmentation.keep_engine_log(result["log_dir"], out_dir)
        load = _read_load_report(load_report) if export_path else None
        write_json(out_dir / "metrics.json", record)
        prov.write(out_dir / "provenance.json", extra={"load": load, "iterations": result["iterations"],
                                                       "model": result["model"], "mmseg_config": "config.py"})
        shutil.rmtree(state_dir, ignore_errors=True)  # mmengine's checkpoints: their purpose is served
    distributed.teardown()
    return record


def _exported_student(run, export_path) -> tuple[dict, str]:
    """(the student's input spec, the run hash its results are filed under) for a job that reads
    the student's export (``export_path``; None for a run without pre-training)."""
    from kdflow.io import read_json

    if export_path is None:
        return classification.read_student(run, None)[1], run.hash
    export = read_json(Path(export_path).with_name("report.json"))
    arch = run["student"]["arch"]
    if export["arch"] != arch:
        raise ValueError(f"{export_path}: exported from arch {export['arch']!r}, run {run['name']!r} "
                         f"declares student arch {arch!r}")
    return export["input"], export.get("student_config_hash") or run.hash


def _read_load_report(path: Path) -> dict:
    """The strict backbone load's report (written by the initializer when training started)."""
    from kdflow.io import read_json

    if not path.is_file():
        raise RuntimeError(f"{path}: the backbone load left no report; was the exported backbone loaded?")
    return read_json(path)


def transfer_detection(run, dataset, protocol, seed: int, out_dir: str | Path, state_dir: str | Path,
                       manifests: dict[str, str | Path], student_path: str | Path | None = None) -> dict:
    """Fine-tune a Faster R-CNN over ``run``'s student on a detection dataset with the protocol's
    engine. Arguments as :func:`transfer_classification`; ``student_path`` is the student file
    (engine torchvision) or its detectron2 export (engine detectron2), None for scratch."""
    from kdflow.data.detection import read_det_manifest

    engine = protocol["engine"]
    if engine == "detectron2":  # before any work: without detectron2 the job fails at once, saying how to build it
        from kdflow.transfer.detection.detectron2_engine import require_detectron2

        require_detectron2()
    out_dir = Path(out_dir)
    train_set, test_set = (read_det_manifest(manifests[split], dataset) for split in ("train", "test"))
    if train_set.classes != test_set.classes:
        raise DatasetError(f"{manifests['train']} and {manifests['test']} have different classes")
    voc07 = protocol["eval"]["voc07"] and dataset["format"] == "voc"
    desc = f"transfer {dataset['name']}/{run['name']}/seed{seed}"
    arch = run["student"]["arch"]
    if engine == "detectron2":
        input_spec, run_hash = _exported_student(run, student_path)
    else:
        weights, input_spec, student_hash = classification.read_student(run, student_path)
        run_hash = student_hash or run.hash
    config, prov = _job_provenance("transfer_det", run, dataset, protocol, seed, run_hash, manifests, student_path)
    dist = distributed.setup()
    torch.manual_seed(seed)
    if engine == "detectron2":
        result = _detectron2_job(arch, input_spec, student_path, train_set, test_set, protocol, seed, out_dir,
                                 state_dir, dist, voc07)
    else:
        result = _torchvision_job(arch, input_spec, weights, student_path, train_set, test_set, protocol, seed,
                                  out_dir, state_dir, hash_data(config), dist, voc07, desc)
    from kdflow.transfer.detection.evaluation import summarise

    record = metrics_record("detection", dataset["name"], run["name"], seed, summarise(result.pop("evaluations")),
                            protocol=protocol["name"], protocol_hash=protocol.hash, run_config_hash=run_hash,
                            engine=engine)
    if dist.rank == 0:
        write_json(out_dir / "metrics.json", record)
        prov.write(out_dir / "provenance.json", extra={"engine": engine, **result})
        if engine == "detectron2":
            shutil.rmtree(state_dir, ignore_errors=True)  # detectron2's checkpoints: their purpose is served
        else:
            discard_state(state_dir)
    distributed.teardown()
    return record


def _torchvision_job(arch, input_spec, weights, student_path, train_set, test_set, protocol, seed, out_dir,
                     state_dir, config_hash, dist, voc07, desc) -> dict:
    """The torchvision engine's fine-tuning; the provenance entries and the evaluations."""
    from kdflow.transfer.detection import torchvision_engine as engine

    detector = engine.build_detector(arch, input_spec, train_set.num_classes, protocol["model"])
    load = None if weights is None else engine.load_student(detector, arch, weights.state_dict, str(student_path))
    result = engine.finetune(detector, train_set, test_set, dict(protocol), seed=seed, run_dir=out_dir,
                             state_dir=state_dir, config_hash=config_hash, dist=dist, voc07=voc07, desc=desc)
    if dist.rank == 0:
        engine.save_detector(out_dir / "model.safetensors", detector,
                             {"arch": arch, "engine": "torchvision", "naming": "torchvision_fasterrcnn",
                              "classes": train_set.classes, "input": input_spec})
    return {"evaluations": result["rows"], "load": load, "epochs": result["epochs"],
            "interruptions": result["interruptions"], "model": "model.safetensors"}


def _detectron2_job(arch, input_spec, export_path, train_set, test_set, protocol, seed, out_dir, state_dir, dist,
                    voc07) -> dict:
    """The detectron2 engine's fine-tuning; the provenance entries and the evaluations."""
    from kdflow.export.detectron2 import detectron2_config
    from kdflow.transfer.detection import detectron2_engine as engine

    if export_path is None:  # scratch: the values a student of this arch and input spec would dictate
        weights_config = detectron2_config(arch, input_spec)
    else:
        weights_config = engine.read_export_config(Path(export_path).with_name("config.yaml"))
    result = engine.finetune(arch=arch, weights_config=weights_config, export_path=export_path, train_set=train_set,
                             test_set=test_set, protocol=dict(protocol), seed=seed, out_dir=out_dir,
                             state_dir=state_dir, dist=dist, voc07=voc07)
    return {"evaluations": result["evaluations"], "load": result["load"], "iterations": result["iterations"],
            "solver": result["solver"], "model": Path(result["model"]).name, "detectron2_config": result["config"]}
