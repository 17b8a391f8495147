"""Loading, validating and resolving kdflow experiment configs.

The YAML config is plain data. ``validate_config`` fills the schema's defaults (through
``snakemake.utils.validate``, as the workflow does at load time) and then checks what a JSON
schema cannot: that every name a run refers to is defined. Every error names its key path, e.g.
``config.pretrain.kdep_r18.teacher: 'ms_r5' is not a defined teacher (known: ms_r50, sp_r50)``.

``resolve_*`` functions return the self-contained slice of the config that one job needs; the
slice is what a job records in its provenance and what its config hash is computed from.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from kdflow.io import hash_data

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "config" / "schema" / "config.schema.yaml"

METHODS_NEEDING_TEACHER = {"kdep"}
# Methods whose student has a classification head over the pre-training classes: evaluated on the
# test split of the pre-training dataset (FKD's headline number is the student's ImageNet top-1).
METHODS_WITH_HEAD = {"supervised", "fkd"}

# KDEP's classification transfer protocol (methods.md 1.8): full fine-tuning, SGD 0.9, wd 5e-4,
# lr 0.001, 150 epochs with x0.1 every 50, batch 64, RandomResizedCrop(224) + flip, test
# Resize(256) + CenterCrop(224), test top-1 every 5 epochs. KDEP feeds DTD, Caltech-256 and CUB
# unnormalised images; ``kdep_unnormalised`` reproduces that quirk. A config may use these by name
# without defining them; an entry of the same name in the config replaces the built-in one.
BUILTIN_CLS_PROTOCOLS = {
    "kdep": {
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
    },
}
BUILTIN_CLS_PROTOCOLS["kdep_unnormalised"] = {**BUILTIN_CLS_PROTOCOLS["kdep"], "normalize": "none"}
BUILTIN_CLS_PROTOCOLS["kdep_cifar100"] = {
    **BUILTIN_CLS_PROTOCOLS["kdep"],
    "normalize": {"mean": [0.5071, 0.4867, 0.4408], "std": [0.2675, 0.2565, 0.2761]},
}

PLACEHOLDER = "<FILL"
METHODS_WITHOUT_TRAINING = {"scratch", "imported"}


class ConfigError(ValueError):
    """A config that does not describe a valid experiment; the message names every key at fault."""


def load_config(path: str | Path) -> dict:
    """Read a YAML config and validate it (defaults filled in)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh) or {}
    return validate_config(cfg, source=str(path))


def validate_config(cfg: dict, source: str = "config") -> dict:
    """Validate ``cfg`` against the schema and cross-references; returns it with defaults filled."""
    import jsonschema
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    cfg = copy.deepcopy(cfg)
    transfer = cfg.get("transfer")
    if isinstance(transfer, dict) and isinstance(transfer.get("protocols", {}), dict):
        transfer["protocols"] = {**copy.deepcopy(BUILTIN_CLS_PROTOCOLS), **transfer.get("protocols", {})}
    try:
        validate(cfg, str(SCHEMA_PATH), set_default=True)
    except (jsonschema.ValidationError, WorkflowError):
        raise ConfigError(_schema_error_report(cfg, source)) from None
    # The default filler may place one default object in several entries; break that aliasing.
    cfg = json.loads(json.dumps(cfg))
    problems = reference_errors(cfg)
    if problems:
        raise ConfigError(f"{source}: invalid references:\n  " + "\n  ".join(problems))
    return cfg


def _schema_error_report(cfg: dict, source: str) -> str:
    import jsonschema

    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(copy.deepcopy(cfg)), key=lambda e: list(e.absolute_path))
    lines = [f"{_key_path(e.absolute_path)}: {_describe(e)}" for e in errors]
    return f"{source} does not match {SCHEMA_PATH.name}:\n  " + "\n  ".join(lines or ["invalid"])


def _key_path(parts) -> str:
    return ".".join(["config", *[str(p) for p in parts]])


def _describe(error) -> str:
    if error.validator == "additionalProperties":
        return f"unknown key ({error.message})"
    if error.validator == "oneOf":
        options = [sorted(s.get("required", [])) for s in error.validator_value]
        keys = " | ".join("/".join(o) for o in options)
        return f"needs exactly one of: {keys}"
    return error.message


def _check_ref(problems: list, where: str, value: Any, section: str, cfg: dict, kind: str) -> None:
    known = cfg.get(section) or {}
    if value not in known:
        listing = ", ".join(sorted(known)) or "none defined"
        problems.append(f"{where}: {value!r} is not a defined {kind} (known: {listing})")


def reference_errors(cfg: dict) -> list[str]:
    """Every dangling or inconsistent name reference in a schema-valid config."""
    problems: list[str] = []
    for name, ds in cfg["datasets"].items():
        if "demo" in ds:
            _check_ref(problems, f"config.datasets.{name}.demo", ds["demo"], "demo", cfg, "demo dataset")
    for name, sub in cfg["subsets"].items():
        _check_ref(problems, f"config.subsets.{name}.dataset", sub["dataset"], "datasets", cfg, "dataset")
    for name, teacher in cfg["teachers"].items():
        if "check" in teacher:
            where = f"config.teachers.{name}.check.dataset"
            _check_ref(problems, where, teacher["check"]["dataset"], "datasets", cfg, "dataset")
        if "train" in teacher:
            where = f"config.teachers.{name}.train.data"
            _check_ref(problems, where, teacher["train"]["data"], "subsets", cfg, "subset")
    for name, labels in cfg["soft_labels"].items():
        where = f"config.soft_labels.{name}"
        _check_ref(problems, f"{where}.data", labels["data"], "subsets", cfg, "subset")
        if "generate" in labels:
            _check_ref(problems, f"{where}.generate.teacher", labels["generate"]["teacher"], "teachers", cfg,
                       "teacher")
    for name, run in cfg["pretrain"].items():
        where = f"config.pretrain.{name}"
        if run["method"] == "fkd":
            problems += _fkd_errors(cfg, where, run)
        _check_ref(problems, f"{where}.student", run["student"], "students", cfg, "student")
        method = run["method"]
        if method in METHODS_NEEDING_TEACHER:
            if "teacher" not in run:
                problems.append(f"{where}.teacher: method {method!r} needs a teacher")
            else:
                _check_ref(problems, f"{where}.teacher", run["teacher"], "teachers", cfg, "teacher")
            svd_subset = run.get("kdep", {}).get("svd_subset")
            if svd_subset is not None:
                _check_ref(problems, f"{where}.kdep.svd_subset", svd_subset, "subsets", cfg, "subset")
        elif "teacher" in run:
            problems.append(f"{where}.teacher: method {method!r} does not use a teacher")
        if (method == "imported") != ("checkpoint" in run):
            problems.append(f"{where}.checkpoint: needed by method 'imported' and only by it")
        if method not in METHODS_WITHOUT_TRAINING:
            if "data" not in run:
                problems.append(f"{where}.data: method {method!r} needs a subset to train on")
            else:
                _check_ref(problems, f"{where}.data", run["data"], "subsets", cfg, "subset")
    transfer = cfg["transfer"]
    seen: dict[tuple, str] = {}
    for gname, grid in transfer["grids"].items():
        where = f"config.transfer.grids.{gname}"
        _check_ref(problems, f"{where}.protocol", grid["protocol"], "protocols", transfer, "protocol")
        for i, ds in enumerate(grid["datasets"]):
            _check_ref(problems, f"{where}.datasets[{i}]", ds, "datasets", cfg, "dataset")
        for i, run in enumerate(grid["runs"]):
            _check_ref(problems, f"{where}.runs[{i}]", run, "pretrain", cfg, "pretrain run")
        for ds in grid["datasets"]:
            for run in grid["runs"]:
                for seed in grid["seeds"]:
                    key = (grid["task"], ds, run, seed)
                    if key in seen and transfer["grids"][seen[key]]["protocol"] != grid["protocol"]:
                        problems.append(
                            f"{where}: {ds}/{run}/seed{seed} is also in grid {seen[key]!r} "
                            "with a different protocol; one result path cannot hold both"
                        )
                    seen.setdefault(key, gname)
    return problems


def _fkd_errors(cfg: dict, where: str, run: dict) -> list[str]:
    problems: list[str] = []
    name = run["fkd"].get("soft_labels")
    if name is None:
        return [f"{where}.fkd.soft_labels: method 'fkd' needs a soft_labels entry to replay"]
    _check_ref(problems, f"{where}.fkd.soft_labels", name, "soft_labels", cfg, "soft-label set")
    labels = cfg["soft_labels"].get(name)
    if labels is not None and "data" in run and labels["data"] != run["data"]:
        problems.append(f"{where}.data: {run['data']!r} differs from {labels['data']!r}, the subset the soft "
                        f"labels {name!r} were made for")
    return problems


# --------------------------------------------------------------------------- resolved slices


def resolve_dataset(cfg: dict, name: str) -> dict:
    """Dataset entry with an absolute-or-relative ``root`` filled in for demo datasets."""
    ds = copy.deepcopy(cfg["datasets"][name])
    if "demo" in ds:
        ds["root"] = str(Path(cfg["results"]) / "data" / "demo" / ds["demo"])
    return {"name": name, **ds}


def resolve_subset(cfg: dict, name: str) -> dict:
    sub = copy.deepcopy(cfg["subsets"][name])
    return {"name": name, **sub, "dataset": resolve_dataset(cfg, sub["dataset"])}


def resolve_teacher(cfg: dict, name: str) -> dict:
    teacher = copy.deepcopy(cfg["teachers"][name])
    if "train" in teacher:
        teacher["train"]["data"] = resolve_subset(cfg, teacher["train"]["data"])
    return {"name": name, **teacher}


def resolve_student(cfg: dict, name: str) -> dict:
    return {"name": name, **copy.deepcopy(cfg["students"][name])}


def resolve_soft_labels(cfg: dict, name: str) -> dict:
    labels = copy.deepcopy(cfg["soft_labels"][name])
    labels["data"] = resolve_subset(cfg, labels["data"])
    if "generate" in labels:
        labels["generate"]["teacher"] = resolve_teacher(cfg, labels["generate"]["teacher"])
    return {"name": name, **labels}


def svd_subset_of(cfg: dict, run_name: str) -> str:
    run = cfg["pretrain"][run_name]
    return run.get("kdep", {}).get("svd_subset") or run["data"]


def resolve_run(cfg: dict, name: str) -> dict:
    """Everything that determines a pre-training run's result, and nothing else."""
    run = copy.deepcopy(cfg["pretrain"][name])
    method = run["method"]
    out = {"name": name, "method": method, "student": resolve_student(cfg, run["student"])}
    if method == "imported":
        out["checkpoint"] = run["checkpoint"]
    if method in METHODS_WITHOUT_TRAINING:
        return out
    out["data"] = resolve_subset(cfg, run["data"])
    out["training"] = run["training"]
    if method in METHODS_NEEDING_TEACHER:
        out["teacher"] = resolve_teacher(cfg, run["teacher"])
    if method == "kdep":
        out["kdep"] = {**run["kdep"], "svd_subset": svd_subset_of(cfg, name)}
        out["svd"] = cfg["svd"]
    if method == "fkd":
        out["fkd"] = run["fkd"]
        out["soft_labels"] = resolve_soft_labels(cfg, run["fkd"]["soft_labels"])
    return out


def run_config_hash(cfg: dict, name: str) -> str:
    return hash_data(resolve_run(cfg, name))


def resolve_protocol(cfg: dict, name: str) -> dict:
    return {"name": name, **copy.deepcopy(cfg["transfer"]["protocols"][name])}


def transfer_jobs(cfg: dict) -> list[dict]:
    """One entry per (task, dataset, run, seed) of every transfer grid, in a stable order."""
    jobs: dict[tuple, dict] = {}
    for grid in cfg["transfer"]["grids"].values():
        for ds in grid["datasets"]:
            for run in grid["runs"]:
                for seed in grid["seeds"]:
                    key = (grid["task"], ds, run, seed)
                    jobs.setdefault(key, {"task": grid["task"], "dataset": ds, "run": run,
                                          "seed": seed, "protocol": grid["protocol"]})
    return [jobs[k] for k in sorted(jobs, key=lambda k: (k[0], k[1], k[2], k[3]))]


def protocol_for(cfg: dict, task: str, dataset: str, run: str, seed: int) -> str:
    for job in transfer_jobs(cfg):
        if (job["task"], job["dataset"], job["run"], job["seed"]) == (task, dataset, run, int(seed)):
            return job["protocol"]
    raise ConfigError(f"no transfer grid contains {task}/{dataset}/{run}/seed{seed}")


def placeholders(node: Any, where: str = "config") -> list[str]:
    """Key paths of every value still reading ``<FILL ...>`` (paths a user must fill in)."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in placeholders(v, f"{where}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in placeholders(v, f"{where}[{i}]")]
    if isinstance(node, str) and node.startswith(PLACEHOLDER):
        return [f"{where}: {node}"]
    return []


def check_placeholders(cfg: dict) -> list[str]:
    """Fail listing every unfilled path, unless ``allow_placeholders`` (dry runs) is set."""
    found = placeholders(cfg)
    if found and not cfg["allow_placeholders"]:
        raise ConfigError(
            "unfilled paths (replace each <FILL ...>, or add --config allow_placeholders=True for a dry run):\n  "
            + "\n  ".join(found))
    return found


def is_placeholder(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PLACEHOLDER)


def check_dataset_roots(cfg: dict, names) -> None:
    """Fail before any job starts if a user dataset folder (or one of its splits), or the folder of
    imported FKD soft labels, is missing."""
    problems = []
    for name in names:
        ds = cfg["datasets"][name]
        if "root" not in ds or is_placeholder(ds["root"]):
            continue
        root = Path(ds["root"])
        if not root.is_dir():
            problems.append(f"config.datasets.{name}.root: folder {root} does not exist")
            continue
        for key in ("train_split", "val_split") if ds["format"] == "imagefolder" else ():
            if not (root / ds[key]).is_dir():
                problems.append(f"config.datasets.{name}.{key}: folder {root / ds[key]} does not exist")
    for name, labels in cfg["soft_labels"].items():
        root = labels.get("import", {}).get("root")
        if root is None or is_placeholder(root):
            continue
        if not (Path(root) / "train").is_dir():
            problems.append(f"config.soft_labels.{name}.import.root: {root} has no train/ folder "
                            "(FKD's layout: <root>/train/<wnid>/<image stem>.tar)")
    if problems:
        raise ConfigError("missing dataset folders:\n  " + "\n  ".join(problems))
