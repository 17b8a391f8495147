"""Classification transfer: fine-tune a pre-trained student with a new head on a downstream
ImageFolder, evaluating top-1 on the test split.

Protocol (KDEP's is the paper default): full fine-tuning with SGD and a step schedule; the test
split is evaluated every ``eval_every`` epochs and at the end. ``metrics.json`` reports both the
best evaluation (KDEP reports this: its "val" loader is the test split) and the final one, so a
table can state which it shows.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from kdflow.data.imagefolder import DatasetError, read_manifest
from kdflow.io import hash_data, write_json
from kdflow.jobs.common import metrics_record
from kdflow.models.checkpoints import CheckpointError, load_strict, read_weights
from kdflow.models.network import InputSpec, Network, classifier_prefix
from kdflow.provenance import Provenance
from kdflow.train import distributed
from kdflow.train.evaluate import top1
from kdflow.train.run import train
from kdflow.train.trainer import discard_state

NO_NORMALISATION = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def _input_spec(protocol: dict, student_input: dict) -> InputSpec:
    normalize = protocol["normalize"]
    if normalize == "student":
        return InputSpec.from_config(student_input)
    stats = NO_NORMALISATION if normalize == "none" else normalize  # "none": KDEP's DTD/Caltech/CUB
    return InputSpec.from_config({**stats, "channel_order": student_input["channel_order"]})


def finetune(run: dict, dataset: dict, protocol: dict, seed: int, out_dir: str | Path, state_dir: str | Path,
             manifests: dict[str, str | Path], student_path: str | Path | None = None) -> dict:
    """``run``/``dataset``/``protocol`` are resolved config entries; ``manifests`` the dataset's
    prepared ``train``/``test`` manifests; ``student_path`` is None for the ``scratch`` baseline
    (random init from ``seed``)."""
    out_dir = Path(out_dir)
    training = copy.deepcopy(protocol["training"])
    training["seed"] = seed
    train_set, test_set = read_manifest(manifests["train"]), read_manifest(manifests["test"])
    if train_set.classes != test_set.classes:
        raise DatasetError(f"{manifests['train']} and {manifests['test']} have different classes")
    student_input = InputSpec.from_config(run["student"].get("input")).as_dict()
    run_hash = hash_data(run)
    weights = None
    if student_path is not None:
        weights = read_weights(student_path)
        meta = weights.metadata
        if meta.get("arch") != run["student"]["arch"]:
            raise CheckpointError(f"{student_path}: holds arch {meta.get('arch')!r}, run {run['name']!r} "
                                  f"declares student arch {run['student']['arch']!r}")
        student_input = meta["input"]
        run_hash = meta.get("config_hash", run_hash)
    config = {"run": run["name"], "run_config_hash": run_hash, "dataset": dataset, "protocol": protocol,
              "seed": seed}
    prov = Provenance("transfer_cls", name=f"{dataset['name']}/{run['name']}/seed{seed}", config=config,
                      seeds={"transfer": seed}, threads=torch.get_num_threads())
    prov.add_inputs([p for p in (manifests["train"], manifests["test"], student_path) if p])
    dist = distributed.setup()
    torch.manual_seed(seed)
    net = Network(run["student"]["arch"], num_classes=train_set.num_classes,
                  input_spec=_input_spec(protocol, student_input))
    load_report = None
    if weights is not None:
        head = classifier_prefix(net.net)
        load_report = load_strict(net.net, weights.state_dict, source=str(student_path),
                                  allow_missing=[f"{head}.*"])

    def evaluate(model):
        return {"test_top1": round(top1(model, test_set, training["eval"], dist.device,
                                        workers=training["workers"]), 4)}

    result = train("supervised", net, train_set, training, seed=seed, run_dir=out_dir, state_dir=state_dir,
                   config_hash=hash_data(config), dist=dist, evaluate=evaluate,
                   desc=f"transfer {dataset['name']}/{run['name']}/seed{seed}")
    evaluated = [row for row in result["rows"] if "test_top1" in row]
    best = max(evaluated, key=lambda r: r["test_top1"])
    metrics = [
        {"metric": "top1", "value": best["test_top1"], "checkpoint": "best", "epoch": best["epoch"]},
        {"metric": "top1", "value": evaluated[-1]["test_top1"], "checkpoint": "final",
         "epoch": evaluated[-1]["epoch"]},
    ]
    record = metrics_record("classification", dataset["name"], run["name"], seed, metrics,
                            protocol=protocol["name"], protocol_hash=hash_data(protocol),
                            run_config_hash=run_hash)
    if dist.rank == 0:
        write_json(out_dir / "metrics.json", record)
        prov.write(out_dir / "provenance.json",
                   extra={"load": load_report, "epochs": result["epochs"], "interruptions": result["interruptions"]})
        discard_state(state_dir)
    distributed.teardown()
    return record
