"""Classification transfer: fine-tune a pre-trained student with a new head on a downstream
dataset, evaluating top-1 on its test split.

Protocol (KDEP's is the paper default): full fine-tuning with SGD and a step schedule; the test
split is evaluated every ``eval_every`` epochs and at the end. The summary reports both the best
evaluation (KDEP reports this: its "val" loader is the test split) and the final one, so a table
can state which it shows. The job around it (provenance, metrics.json, state) is
kdflow.jobs.transfer.
"""

from __future__ import annotations

from pathlib import Path

from kdflow.data.imagefolder import Manifest
from kdflow.models.checkpoints import CheckpointError, load_strict, read_weights
from kdflow.models.network import InputSpec, Network, classifier_prefix
from kdflow.train import distributed
from kdflow.train.evaluate import top1
from kdflow.train.run import train

NO_NORMALISATION = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def protocol_input_spec(protocol: dict, student_input: dict) -> InputSpec:
    normalize = protocol["normalize"]
    if normalize == "student":
        return InputSpec.from_config(student_input)
    stats = NO_NORMALISATION if normalize == "none" else normalize  # "none": KDEP's DTD/Caltech/CUB
    return InputSpec.from_config({**stats, "channel_order": student_input["channel_order"]})


def read_student(run: dict, student_path: str | Path | None):
    """(weights or None, the student's input spec, its run config hash): a ``scratch`` run has no
    file and starts from a random init."""
    if student_path is None:
        return None, InputSpec.from_config(run["student"].get("input")).as_dict(), None
    weights = read_weights(student_path)
    meta = weights.metadata
    if meta.get("arch") != run["student"]["arch"]:
        raise CheckpointError(f"{student_path}: holds arch {meta.get('arch')!r}, run {run['name']!r} "
                              f"declares student arch {run['student']['arch']!r}")
    return weights, meta["input"], meta.get("config_hash")


def build_classifier(run: dict, weights, student_input: dict, protocol: dict, num_classes: int,
                     source: str | None):
    """The student with a new ``num_classes`` head; every backbone weight is loaded strictly."""
    net = Network(run["student"]["arch"], num_classes=num_classes,
                  input_spec=protocol_input_spec(protocol, student_input))
    report = None
    if weights is not None:
        head = classifier_prefix(net.net)
        report = load_strict(net.net, weights.state_dict, source=source, allow_missing=[f"{head}.*"])
    return net, report


def finetune(net: Network, train_set: Manifest, test_set: Manifest, training: dict, *, seed: int,
             run_dir, state_dir, config_hash: str, dist: distributed.DistInfo, desc: str) -> dict:
    """Fine-tune with the supervised loss; the test split's top-1 at the protocol's evaluations."""

    def evaluate(model):
        return {"test_top1": round(top1(model, test_set, training["eval"], dist.device,
                                        workers=training["workers"]), 4)}

    return train("supervised", net, train_set, training, seed=seed, run_dir=run_dir, state_dir=state_dir,
                 config_hash=config_hash, dist=dist, evaluate=evaluate, desc=desc)


def summarise(rows: list[dict]) -> list[dict]:
    """``top1`` at the best and at the final evaluation."""
    evaluated = [row for row in rows if "test_top1" in row]
    if not evaluated:
        raise RuntimeError("fine-tuning ended without an evaluation of the test split")
    best = max(evaluated, key=lambda r: r["test_top1"])
    return [
        {"metric": "top1", "value": best["test_top1"], "checkpoint": "best", "epoch": best["epoch"]},
        {"metric": "top1", "value": evaluated[-1]["test_top1"], "checkpoint": "final",
         "epoch": evaluated[-1]["epoch"]},
    ]
