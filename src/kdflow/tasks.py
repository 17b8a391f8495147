"""Downstream tasks: what each transfer task brings to the pipeline, in one registry.

A task is a choice of a transfer grid (``task:``) and of a protocol (``task:``, the protocol's
schema branch). Its entry names the Snakemake rule that makes one result
(``transfer/<task>/<dataset>/<run>/seed<k>/metrics.json``), the ``$defs`` entry of its protocol
schema, the metric its table shows, and the protocols usable by name without defining them.
Adding a task = an entry here, a ``$defs`` protocol schema, a rule in ``rules/transfer.smk``, a
``kdflow.jobs`` function and its ``kdflow.transfer`` module; final targets, tables, config
validation and the hand-run scripts follow the registry.

Torch-free: the Snakefile imports it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Task:
    name: str
    rule: str  # the rule (and workflow script) that makes one transfer result
    protocol_schema: str  # $defs entry of the protocol's schema branch
    metric: str  # the main metric, shown by the task's table
    builtin_protocols: dict = field(default_factory=dict)


# KDEP's classification transfer protocol (methods.md 1.8): full fine-tuning, SGD 0.9, wd 5e-4,
# lr 0.001, 150 epochs with x0.1 every 50, batch 64, RandomResizedCrop(224) + flip, test
# Resize(256) + CenterCrop(224), test top-1 every 5 epochs. KDEP feeds DTD, Caltech-256 and CUB
# unnormalised images; ``kdep_unnormalised`` reproduces that quirk. An entry of the same name in a
# config replaces the built-in one.
_KDEP_CLS = {
    "task": "classification",
    "training": {
        "epochs": 150,
        "batch_size": 64,
        "optim": {"lr": 0.001, "momentum": 0.9, "weight_decay": 0.0005},
        "schedule": {"name": "step", "step_epochs": 50, "gamma": 0.1},
        "augment": {"size": 224, "scale": [0.08, 1.0], "color_jitter": 0.0, "lighting": 0.0},
        "eval": {"resize": 256, "crop": 224},
        "eval_every": 5,
    },
    "normalize": "student",
}
BUILTIN_CLS_PROTOCOLS = {
    "kdep": _KDEP_CLS,
    "kdep_unnormalised": {**_KDEP_CLS, "normalize": "none"},
    "kdep_cifar100": {**_KDEP_CLS,
                      "normalize": {"mean": [0.5071, 0.4867, 0.4408], "std": [0.2675, 0.2565, 0.2761]}},
}

TASKS: dict[str, Task] = {
    "classification": Task("classification", rule="transfer_cls", protocol_schema="cls_protocol", metric="top1",
                           builtin_protocols=BUILTIN_CLS_PROTOCOLS),
}


def builtin_protocols() -> dict:
    """Every task's built-in protocols, by name (names are unique across tasks)."""
    merged: dict = {}
    for task in TASKS.values():
        clash = set(merged) & set(task.builtin_protocols)
        if clash:
            raise ValueError(f"built-in protocol names used by two tasks: {sorted(clash)}")
        merged.update(copy.deepcopy(task.builtin_protocols))
    return merged
