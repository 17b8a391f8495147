"""Transfer jobs: one (task, dataset, pre-training run, seed) -> transfer/<task>/<dataset>/<run>/seed<k>/.

The job's work — provenance, ``metrics.json`` in the one shape every task shares, the resumable
state's clean-up — is here; how a task fine-tunes and evaluates is its kdflow.transfer module.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from kdflow.data.imagefolder import DatasetError, read_manifest
from kdflow.io import hash_data, write_json
from kdflow.jobs.common import metrics_record
from kdflow.provenance import Provenance
from kdflow.train import distributed
from kdflow.train.trainer import discard_state
from kdflow.transfer import classification


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
    config = {"run": run.identity["name"], "run_config_hash": run_hash, "dataset": dataset.identity,
              "protocol": protocol.identity, "seed": seed}
    prov = Provenance("transfer_cls", name=f"{dataset['name']}/{run['name']}/seed{seed}", config=config,
                      seeds={"transfer": seed}, threads=torch.get_num_threads())
    prov.record["execution"] = {"dataset": dataset.execution, "protocol": protocol.execution}
    prov.add_inputs([p for p in (manifests["train"], manifests["test"], student_path) if p])
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
