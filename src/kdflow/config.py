"""Loading, validating and resolving kdflow experiment configs.

The YAML config is plain data. ``validate_config`` checks it against the schema
(``config/schema/config.schema.yaml``, completed at load time with the declared methods' option
blocks and the registered tasks' protocol branches), fills the defaults, and then checks what a
JSON schema cannot: that every name a run refers to is defined. Every error names its key path,
e.g. ``config.pretrain.kdep_r18.teacher: 'ms_r5' is not a defined teacher (known: ms_r50, sp_r50)``.

Every key of the schema has a role (``x-role``):

- **identity**: the key changes a result. It is part of the job's config hash, a Snakemake
  ``params`` re-run trigger, and a resumable state made under another value is refused.
- **execution**: the key changes only how or where a job runs (paths, loader workers, batch sizes
  of frozen-network passes, ...). It is recorded in ``provenance.json`` and never triggers a re-run.

An identity key added after results existed carries ``x-neutral-default: true`` when its default
is the behaviour from before it existed (e.g. ``optim.clip_grad_norm: null``): at its default it
is left out of the identity, so upgrading kdflow re-runs nothing; any other value is identity as
usual. Such a default must never change (that would change results without a re-run).

``resolve_*`` return a ``JobConfig``: the slice of the config one job runs with (execution keys
included) whose ``identity`` is the same slice without execution keys (what the job's result
depends on; hashed by ``hash``).
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from kdflow import paths
from kdflow.distill.registry import Declaration, declarations
from kdflow.io import hash_data
from kdflow.tasks import HEADS_NEEDING_COMPILED_OPS, TASKS, builtin_protocols, dataset_kind, merge, protocol_for_arch

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "config" / "schema" / "config.schema.yaml"
ROLE = "x-role"
ROLES = ("identity", "execution")
NEUTRAL_DEFAULT = "x-neutral-default"
PLACEHOLDER = "<FILL"
_MODULES_KEY = "_method_modules"


class ConfigError(ValueError):
    """A config that does not describe a valid experiment; the message names every key at fault."""


# --------------------------------------------------------------------------- schema


@functools.lru_cache(maxsize=None)
def _base_schema() -> str:
    return SCHEMA_PATH.read_text(encoding="utf-8")


def effective_schema(method_modules=()) -> dict:
    """The schema file completed with what the registries declare: the method enum and each
    method's option block (``pretrain.<run>.<method>``), the task enums and one protocol branch
    per task. A copy: the caller may change it."""
    return copy.deepcopy(_schema(tuple(method_modules)))


@functools.lru_cache(maxsize=None)
def _schema(method_modules: tuple) -> dict:
    """``effective_schema``, built once per process (parsing it took 0.25 s, and the Snakefile's
    params functions strip one config slice against it per job); never to be changed in place."""
    schema = yaml.safe_load(_base_schema())
    defs = schema["$defs"]
    methods = declarations(method_modules)
    run = defs["pretrain_run"]["properties"]
    run["method"]["enum"] = sorted(methods)
    for decl in methods.values():
        if decl.options is not None:
            if decl.name in run:
                raise ConfigError(f"{decl.module}: method {decl.name!r} clashes with the run key {decl.name!r}")
            block = {k: v for k, v in copy.deepcopy(decl.options).items() if k != "default"}
            run[decl.name] = {**block, ROLE: "identity"}  # only a run of that method has it (_own_option_blocks)
    defs["protocol"]["properties"]["task"]["enum"] = sorted(TASKS)
    defs["transfer_grid"]["properties"]["task"]["enum"] = sorted(TASKS)
    defs["protocol"]["allOf"] = [
        {"if": {"properties": {"task": {"const": task.name}}}, "then": {"$ref": f"#/$defs/{task.protocol_schema}"}}
        for task in TASKS.values()
    ]
    return schema


def _validator(schema: dict):
    """A Draft 2020-12 validator that fills defaults as it validates (as snakemake.utils.validate)."""
    from jsonschema import Draft202012Validator, validators

    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": properties_with_defaults})(schema)


def _method_modules(cfg: dict) -> tuple:
    """The config's extra method modules (an identity config keeps them under a private key: a
    file's location is an execution setting, but its declarations are needed to resolve runs)."""
    modules = cfg.get("method_modules", cfg.get(_MODULES_KEY)) or ()
    return tuple(modules) if isinstance(modules, list) and all(isinstance(m, str) for m in modules) else ()


# --------------------------------------------------------------------------- validation


def load_config(path: str | Path) -> dict:
    """Read a YAML config and validate it (defaults filled in)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return validate_config(read_yaml(path), source=str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (the plain
    loader keeps the last one silently: a run's second `training:` block would replace the first)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # keys merged from an anchor may be overridden
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"{loader.name}: line {key_node.start_mark.line + 1}: key {key!r} is given twice in "
                              f"one mapping (first on line {seen[key] + 1}); YAML would keep only the last")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: str | Path) -> dict:
    """A YAML config file as plain data; a duplicated key fails naming the file and both lines."""
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        try:
            return yaml.load(fh, Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def check_config_files(paths_) -> None:
    """The files Snakemake read its config from (it parses them itself): no duplicated keys."""
    for path in paths_:
        read_yaml(path)


def validate_config(cfg: dict, source: str = "config") -> dict:
    """Validate ``cfg`` against the schema and cross-references; returns it with defaults filled."""
    cfg = copy.deepcopy(cfg)
    transfer = cfg.get("transfer")
    if isinstance(transfer, dict) and isinstance(transfer.get("protocols", {}), dict):
        transfer["protocols"] = _extended({**builtin_protocols(), **transfer.get("protocols", {})}, source)
    try:
        schema = effective_schema(_method_modules(cfg))
    except ValueError as exc:  # a method module that cannot be read
        raise ConfigError(f"{source}: config.method_modules: {exc}") from None
    _own_option_blocks(cfg)
    errors = sorted(_validator(schema).iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = [f"{_key_path(e.absolute_path)}: {_describe(e)}" for e in errors]
        raise ConfigError(f"{source} does not match {SCHEMA_PATH.name}:\n  " + "\n  ".join(lines))
    # The default filler may place one default object in several entries; break that aliasing.
    cfg = json.loads(json.dumps(cfg))
    _expand_pretrain_seeds(cfg, source)
    _check_arch_overrides(cfg, schema, source)
    problems = reference_errors(cfg)
    if problems:
        raise ConfigError(f"{source}: invalid references:\n  " + "\n  ".join(problems))
    return cfg


def replica_name(run: str, seed: int) -> str:
    """The pre-training run of seed ``seed`` of a run with ``seeds``."""
    return f"{run}.seed{seed}"


def _expand_pretrain_seeds(cfg: dict, source: str) -> None:
    """Each run with ``seeds: [k, ...]`` becomes one run per seed, ``<name>.seed<k>``, with its
    training.seed set to k and ``replica_of: <name>``; the name itself then stands for the group
    (transfer grids refer to it, kdflow.config.pretrain_groups). In place, and a no-op on a config
    already expanded."""
    def set_by_hand(name):
        return ConfigError(f"{source}: config.pretrain.{name}.replica_of: set by kdflow for the runs it makes "
                           "from seeds; remove it")

    runs: dict = {}  # in the config's order, each run's seeds at its place
    for name, run in cfg["pretrain"].items():
        if "seeds" not in run:
            runs[name] = run
            continue
        if "replica_of" in run:
            raise set_by_hand(name)
        for seed in run["seeds"]:
            replica = replica_name(name, seed)
            if replica in cfg["pretrain"]:
                raise ConfigError(f"{source}: config.pretrain.{name}.seeds: pre-training seed {seed} is run "
                                  f"{replica!r}, which the config already defines; rename one")
            entry = copy.deepcopy({k: v for k, v in run.items() if k != "seeds"})
            entry["training"]["seed"] = seed
            entry["replica_of"] = name
            runs[replica] = entry
    cfg["pretrain"] = runs
    for name, run in runs.items():
        group = run.get("replica_of")
        if group is not None and (group in runs or name != replica_name(group, run["training"]["seed"])):
            raise set_by_hand(name)


def pretrain_groups(cfg: dict) -> dict[str, dict[int, str]]:
    """``{name: {pre-training seed: run}}`` of every run given ``seeds`` (in seed order)."""
    groups: dict[str, dict[int, str]] = {}
    for name, run in cfg["pretrain"].items():
        if "replica_of" in run:
            groups.setdefault(run["replica_of"], {})[run["training"]["seed"]] = name
    return {group: dict(sorted(seeds.items())) for group, seeds in groups.items()}


def student_run(cfg: dict, run: str, seed: int, groups: dict | None = None) -> str:
    """The pre-training run whose student fine-tuning seed ``seed`` of grid run ``run`` starts from:
    ``run`` itself, or for a run with pre-training seeds, its run of pre-training seed ``seed``."""
    groups = pretrain_groups(cfg) if groups is None else groups
    if run not in groups:
        return run
    if seed not in groups[run]:
        raise ConfigError(f"fine-tuning seed {seed} of {run!r} has no pre-training seed {seed} "
                          f"(config.pretrain.{run}.seeds: {sorted(groups[run])})")
    return groups[run][seed]


def _extended(protocols: dict, source: str) -> dict:
    """Protocols with ``extends: <protocol>`` become that protocol (itself resolved first) with
    their own keys deep-merged over it, e.g. KDEP's PSPNet protocol at the demo's image size."""
    resolved: dict = {}

    def resolve(name: str, chain: tuple) -> dict:
        if name in resolved:
            return resolved[name]
        entry = protocols[name]
        if not isinstance(entry, dict) or "extends" not in entry:
            resolved[name] = entry
            return entry
        base = entry["extends"]
        where = f"config.transfer.protocols.{name}.extends"
        if base not in protocols:
            raise ConfigError(f"{source}: {where}: unknown protocol {base!r} (known: {', '.join(sorted(protocols))})")
        if base in chain:
            raise ConfigError(f"{source}: {where}: protocols extend each other in a cycle: "
                              + " -> ".join([*chain, name, base]))
        own = {k: v for k, v in entry.items() if k != "extends"}
        resolved[name] = merge(resolve(base, (*chain, name)), own)
        return resolved[name]

    return {name: resolve(name, ()) for name in protocols}


def _check_arch_overrides(cfg: dict, schema: dict, source: str) -> None:
    """A protocol's ``arch_overrides`` must leave it valid for each architecture named."""
    validator = _validator(schema).evolve(schema={**schema["$defs"]["protocol"], "$defs": schema["$defs"]})
    problems = []
    for name, protocol in cfg.get("transfer", {}).get("protocols", {}).items():
        for arch in protocol.get("arch_overrides", {}):
            merged = protocol_for_arch(protocol, arch)
            for error in validator.iter_errors(merged):
                where = _key_path(["transfer", "protocols", name, "arch_overrides", arch, *error.absolute_path])
                problems.append(f"{where}: {_describe(error)}")
    if problems:
        raise ConfigError(f"{source} does not match {SCHEMA_PATH.name}:\n  " + "\n  ".join(problems))


def _own_option_blocks(cfg: dict) -> None:
    """Every run gets its own method's option block (filled with defaults when validated)."""
    methods = declarations(_method_modules(cfg))
    for run in (cfg.get("pretrain") or {}).values():
        decl = methods.get(run.get("method")) if isinstance(run, dict) else None
        if decl is not None and decl.options is not None:
            run.setdefault(decl.name, {})


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


def method_of(cfg: dict, run_name: str) -> Declaration:
    """The declaration of a run's method."""
    return declarations(_method_modules(cfg))[cfg["pretrain"][run_name]["method"]]


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
    for name, targets in cfg["kdep_targets"].items():
        where = f"config.kdep_targets.{name}"
        _check_ref(problems, f"{where}.data", targets["data"], "subsets", cfg, "subset")
        _check_ref(problems, f"{where}.teacher", targets["teacher"], "teachers", cfg, "teacher")
        problems += _target_store_errors(cfg, name)
    for name in cfg["pretrain"]:
        problems += _run_errors(cfg, name)
    problems += _transfer_errors(cfg)
    problems += _demo_format_errors(cfg)
    problems += _sbd_root_errors(cfg)
    return list(dict.fromkeys(problems))  # the runs of one entry's seeds report its problems once


def _run_errors(cfg: dict, name: str) -> list[str]:
    """A run against its method's declaration: teacher, data, checkpoint and artefacts."""
    problems: list[str] = []
    run, decl = cfg["pretrain"][name], method_of(cfg, name)
    # a run made from seeds is named by the entry the user wrote (its problems are each seed's)
    where, method = f"config.pretrain.{run.get('replica_of', name)}", decl.name
    _check_ref(problems, f"{where}.student", run["student"], "students", cfg, "student")
    if "replica_of" in run and not decl.trains:
        problems.append(f"{where}.seeds: method {method!r} does not pre-train, so it has no pre-training seeds "
                        "(the transfer grid's seeds already seed its fine-tuning)")
    if decl.teacher:
        if "teacher" not in run:
            problems.append(f"{where}.teacher: method {method!r} needs a teacher (it reads its {decl.teacher})")
        else:
            _check_ref(problems, f"{where}.teacher", run["teacher"], "teachers", cfg, "teacher")
    elif "teacher" in run:
        problems.append(f"{where}.teacher: method {method!r} does not use a teacher")
    for other in set(run) & set(declarations(_method_modules(cfg))) - {method}:
        problems.append(f"{where}.{other}: the option block of method {other!r}, but the run's method is {method!r}")
    if (decl.student == "checkpoint") != ("checkpoint" in run):
        problems.append(f"{where}.checkpoint: a checkpoint is needed by, and only by, a method that imports its "
                        f"student (method {method!r} {'does' if decl.student == 'checkpoint' else 'does not'})")
    if decl.trains:
        if "data" not in run:
            problems.append(f"{where}.data: method {method!r} needs a subset to train on")
        else:
            _check_ref(problems, f"{where}.data", run["data"], "subsets", cfg, "subset")
    for artefact in decl.artefacts:
        problems += ARTEFACTS[artefact].check(cfg, where, run, run.get(method, {}), method)
    return problems


def _svd_errors(cfg, where, run, options, method) -> list[str]:
    problems: list[str] = []
    if options.get("svd_subset") is not None:
        _check_ref(problems, f"{where}.{method}.svd_subset", options["svd_subset"], "subsets", cfg, "subset")
    problems += _svd_width_errors(cfg, where, run)
    return problems


def _svd_width_errors(cfg, where, run) -> list[str]:
    """The SVD basis of a teacher of width D spans D directions: a student wider than that has
    no KDEP target for its extra dimensions (found here, not days later in the SVD job)."""
    from kdflow.models.widths import feature_width

    student = cfg.get("students", {}).get(run.get("student"))
    teacher = cfg.get("teachers", {}).get(run.get("teacher"))
    if not student or not teacher:
        return []  # an undefined reference, reported by _check_ref
    try:
        s_width, t_width = feature_width(student["arch"]), feature_width(teacher["arch"])
    except Exception:  # not a timm name: the job names it when it builds the network
        return []
    if s_width <= t_width:
        return []
    return [f"{where}.student: {run['student']!r} ({student['arch']}) has {s_width} feature dimensions, more "
            f"than the {t_width} of teacher {run['teacher']!r} ({teacher['arch']}), whose SVD basis "
            f"spans at most {t_width}: choose a narrower student or a wider teacher"]


def _soft_label_errors(cfg, where, run, options, method) -> list[str]:
    problems: list[str] = []
    name = options.get("soft_labels")
    if name is None:
        return [f"{where}.{method}.soft_labels: method {method!r} needs a soft_labels entry to replay"]
    _check_ref(problems, f"{where}.{method}.soft_labels", name, "soft_labels", cfg, "soft-label set")
    labels = cfg["soft_labels"].get(name)
    if labels is not None and "data" in run and labels["data"] != run["data"]:
        problems.append(f"{where}.data: {run['data']!r} differs from {labels['data']!r}, the subset the soft "
                        f"labels {name!r} were made for")
    return problems


def _kdep_target_errors(cfg, where, run, options, method) -> list[str]:
    """A run replaying a teacher-feature store: same data and teacher as the store."""
    problems: list[str] = []
    name = options.get("targets")
    if name is None:
        return [f"{where}.{method}.targets: method {method!r} needs a kdep_targets entry to replay"]
    _check_ref(problems, f"{where}.{method}.targets", name, "kdep_targets", cfg, "KDEP target store")
    store = cfg["kdep_targets"].get(name)
    if store is None:
        return problems
    for key in ("data", "teacher"):
        if key in run and run[key] != store[key]:
            problems.append(f"{where}.{key}: {run[key]!r} differs from {store[key]!r}, the {key} of the KDEP "
                            f"target store {name!r}")
    return problems


def kdep_target_users(cfg: dict, name: str) -> list[str]:
    """The pre-training runs that replay the store ``name``."""
    return [run for run, entry in cfg["pretrain"].items()
            if "kdep_targets" in method_of(cfg, run).artefacts
            and entry.get(entry["method"], {}).get("targets") == name]


def _projection_of(cfg: dict, run_name: str) -> dict:
    """What a run's KDEP targets depend on besides the teacher's features: student, SVD, PTS."""
    run = cfg["pretrain"][run_name]
    options = run[run["method"]]
    return {"student": _student(cfg, run["student"]),
            "svd": _svd(cfg, run["teacher"], svd_subset_of(cfg, run_name)),
            "tau": options["tau"], "power": options["power"]}


def _target_store_errors(cfg: dict, name: str) -> list[str]:
    """A store of KDEP targets is made for one projection: its runs must agree on it."""
    where = f"config.kdep_targets.{name}"
    users = kdep_target_users(cfg, name)
    if not users:
        return [f"{where}: no pre-training run replays it (set kdep_replay.targets: {name} in one, or remove it)"]
    if cfg["kdep_targets"][name]["store"] != "targets":
        return []
    try:
        first = _projection_of(cfg, users[0])
        others = [u for u in users[1:] if _projection_of(cfg, u) != first]
    except KeyError:  # a dangling reference, reported where it is
        return []
    if others:
        return [f"{where}.store: 'targets' holds one projection (student, SVD, tau, power), but runs "
                f"{users[0]!r} and {others[0]!r} differ in it; use store: features to serve both"]
    return []


def _compiled_ops_errors(name: str, protocol: dict | None) -> list[str]:
    """A protocol whose head needs mmcv's compiled ops, on an install without them (mmcv-lite)."""
    head = (protocol or {}).get("model", {}).get("decode_head")
    if head not in HEADS_NEEDING_COMPILED_OPS:
        return []
    from kdflow.openmmlab.compat import BUILD_HINT, compiled_ops_available

    if compiled_ops_available():
        return []
    return [f"config.transfer.protocols.{name}.model.decode_head: {head!r} needs mmcv's compiled ops, which "
            f"this install lacks (mmcv-lite); {BUILD_HINT}"]


def _det_engine_errors(name: str, protocol: dict | None, cfg: dict, runs: list[str]) -> list[str]:
    """Detection protocol keys that only the detectron2 engine reads, and heads a student lacks."""
    if not protocol or protocol.get("task") != "detection":
        return []
    where = f"config.transfer.protocols.{name}"
    problems = []
    if protocol["engine"] != "detectron2":
        if "solver" in protocol:
            problems.append(f"{where}.solver: only engine detectron2 reads a solver block (engine "
                            f"{protocol['engine']!r} trains for training.epochs)")
        if protocol["model"]["head"] != "fpn":
            problems.append(f"{where}.model.head: {protocol['model']['head']!r} is detectron2's; engine "
                            f"{protocol['engine']!r} builds the FPN head only")
    elif protocol["model"]["head"] == "c4":
        from kdflow.export.mmseg import RESNET_DEPTHS

        for run in runs:
            student = cfg["pretrain"].get(run, {}).get("student")
            arch = cfg["students"].get(student, {}).get("arch") if isinstance(student, str) else None
            if arch and arch not in RESNET_DEPTHS:
                problems.append(f"{where}.model.head: c4 is detectron2's ResNet C4 head; run {run!r} has student "
                                f"arch {arch!r} (use head: fpn)")
    if protocol["engine"] == "detectron2" and protocol["training"]["optim"]["name"] != "sgd":
        problems.append(f"{where}.training.optim.name: engine detectron2 trains with SGD, not "
                        f"{protocol['training']['optim']['name']!r}")
    return problems


def _demo_format_errors(cfg: dict) -> list[str]:
    """A demo segmentation set is read in mmseg's layout, a detection set in COCO's; the other demo
    kinds as ImageFolders."""
    problems = []
    for name, ds in cfg["datasets"].items():
        demo = cfg["demo"].get(ds.get("demo"))
        if demo is None:
            continue
        wanted = {"segmentation": "mmseg", "detection": "coco"}.get(demo["kind"], "imagefolder")
        if ds["format"] != wanted:
            problems.append(f"config.datasets.{name}.format: demo {ds['demo']!r} is a {demo['kind']} set, "
                            f"read with format {wanted!r}, not {ds['format']!r}")
    return problems


def _sbd_root_errors(cfg: dict) -> list[str]:
    """SBD's folder completes VOC 2012 into trainaug: a voc_aug dataset needs it, no other reads it."""
    problems = []
    for name, ds in cfg["datasets"].items():
        where = f"config.datasets.{name}.sbd_root"
        if "sbd_root" in ds and ds["format"] != "voc_aug":
            problems.append(f"{where}: only a voc_aug dataset reads SBD's folder (this one's format is {ds['format']!r})")
        elif ds["format"] == "voc_aug" and "root" in ds and "sbd_root" not in ds:
            problems.append(f"{where}: format voc_aug needs SBD's benchmark_RELEASE/dataset folder (its masks make "
                            "VOC 2012's train split into trainaug)")
    return problems


def _transfer_errors(cfg: dict) -> list[str]:
    problems: list[str] = []
    transfer = cfg["transfer"]
    seen: dict[tuple, str] = {}
    groups = pretrain_groups(cfg)
    for gname, grid in transfer["grids"].items():
        where = f"config.transfer.grids.{gname}"
        _check_ref(problems, f"{where}.protocol", grid["protocol"], "protocols", transfer, "protocol")
        protocol = transfer["protocols"].get(grid["protocol"])
        if protocol is not None and grid.get("task", protocol["task"]) != protocol["task"]:
            problems.append(f"{where}.task: {grid['task']!r}, but protocol {grid['protocol']!r} is a "
                            f"{protocol['task']!r} protocol")
        for i, ds in enumerate(grid["datasets"]):
            _check_ref(problems, f"{where}.datasets[{i}]", ds, "datasets", cfg, "dataset")
        for i, run in enumerate(grid["runs"]):
            if run in groups:
                unknown = [s for s in grid["seeds"] if s not in groups[run]]
                if unknown:
                    problems.append(f"{where}.seeds: {unknown} are not pre-training seeds of {run!r} (its seeds: "
                                    f"{sorted(groups[run])}); fine-tuning seed s starts from pre-training seed s")
            else:
                _check_ref(problems, f"{where}.runs[{i}]", run, "pretrain", {"pretrain": {**cfg["pretrain"], **groups}},
                           "pretrain run")
        task = protocol["task"] if protocol is not None else None
        problems += _compiled_ops_errors(grid["protocol"], protocol)
        students = [next(iter(groups[run].values())) if run in groups else run for run in grid["runs"]]
        problems += _det_engine_errors(grid["protocol"], protocol, cfg, students)
        for i, ds in enumerate(grid["datasets"]):
            entry = cfg["datasets"].get(ds)
            if task in TASKS and entry is not None and dataset_kind(entry) != TASKS[task].dataset_kind:
                problems.append(f"{where}.datasets[{i}]: {ds!r} is a {dataset_kind(entry)} dataset; a {task} "
                                f"grid needs {TASKS[task].dataset_kind} datasets")
        for ds in grid["datasets"]:
            for run in grid["runs"]:
                for seed in grid["seeds"]:
                    key = (task, ds, run, seed)
                    if key in seen and transfer["grids"][seen[key]]["protocol"] != grid["protocol"]:
                        problems.append(
                            f"{where}: {ds}/{run}/seed{seed} is also in grid {seen[key]!r} "
                            "with a different protocol; one result path cannot hold both"
                        )
                    seen.setdefault(key, gname)
    return problems


# --------------------------------------------------------------------------- roles


def _resolve_ref(node: dict, schema: dict) -> dict:
    """A schema node with its ``$ref`` (local ``#/$defs/...``) merged in; local keys win."""
    while "$ref" in node:
        target = schema
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def object_properties(node: dict, schema: dict) -> dict[str, dict]:
    """Properties an object node may have: its own and those of its oneOf/anyOf/allOf/then branches."""
    node = _resolve_ref(node, schema)
    props = dict(node.get("properties", {}))
    for key in ("oneOf", "anyOf", "allOf"):
        for branch in node.get(key, []):
            props.update(object_properties(branch, schema))
    if "then" in node:
        props.update(object_properties(node["then"], schema))
    return props


def _strip(value: Any, node: dict, schema: dict, drop: Callable[[dict, Any], bool]) -> Any:
    """``value`` without the keys whose schema property (``$ref`` resolved) and value ``drop`` picks."""
    node = _resolve_ref(node, schema)
    if isinstance(value, dict):
        props = object_properties(node, schema)
        extra = node.get("additionalProperties")
        out = {}
        for key, item in value.items():
            if key in props:
                if not drop({**_resolve_ref(props[key], schema), **props[key]}, item):
                    out[key] = _strip(item, props[key], schema, drop)
            elif isinstance(extra, dict):  # a named entry (a dataset, a run, ...)
                out[key] = _strip(item, extra, schema, drop)
            elif not key.startswith("_"):  # "_" keys are YAML anchors, ignored
                out[key] = item
        return out
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_strip(item, node["items"], schema, drop) for item in value]
    return value


def _at_neutral_default(prop: dict, value: Any) -> bool:
    return bool(prop.get(NEUTRAL_DEFAULT)) and "default" in prop and value == prop["default"]


def _not_identity(prop: dict, value: Any) -> bool:
    return prop.get(ROLE) == "execution" or _at_neutral_default(prop, value)


def identity_config(cfg: dict) -> dict:
    """``cfg`` without its execution keys (paths, workers, ...) and its neutral defaults: what
    results depend on."""
    schema = _schema(_method_modules(cfg))
    return {**_strip(cfg, schema, schema, _not_identity), _MODULES_KEY: list(_method_modules(cfg))}


def _without_neutral_defaults(cfg: dict) -> dict:
    schema = _schema(_method_modules(cfg))
    return _strip(cfg, schema, schema, _at_neutral_default)


class JobConfig(dict):
    """The config slice one job runs with; ``identity`` is the same slice without execution keys
    and neutral defaults, ``hash`` its sha256 (the job's config hash) and ``execution`` its
    execution keys."""

    def __init__(self, full: dict, identity: dict, execution: dict | None = None):
        super().__init__(full)
        self.identity = identity
        self.execution = _difference(full, identity) if execution is None else execution

    @property
    def hash(self) -> str:
        return hash_data(self.identity)

    def __reduce__(self):  # pickles (to DDP ranks) with its identity
        return (JobConfig, (dict(self), self.identity, self.execution))


def _difference(full: Any, identity: Any) -> Any:
    """The parts of ``full`` that ``identity`` does not have (nested dicts)."""
    if not isinstance(full, dict) or not isinstance(identity, dict):
        return None
    out = {}
    for key, value in full.items():
        if key not in identity:
            out[key] = value
        else:
            inner = _difference(value, identity[key])
            if inner:
                out[key] = inner
    return out


def _job_config(resolver, cfg: dict, *names) -> JobConfig:
    identity = resolver(identity_config(cfg), *names)
    execution = _difference(resolver(_without_neutral_defaults(cfg), *names), identity)
    return JobConfig(resolver(cfg, *names), identity, execution)


# --------------------------------------------------------------------------- resolved slices
# Private resolvers build plain dicts from a full or an identity config; a slice resolved from an
# identity config carries no paths (``results`` and roots are execution keys).


def _dataset(cfg: dict, name: str) -> dict:
    ds = copy.deepcopy(cfg["datasets"][name])
    if "results" in cfg:  # where the files are read at job time: never part of the identity
        ds["work_dir"] = paths.dataset_work_dir(cfg["results"], name)
        if "demo" in ds:
            ds["root"] = paths.demo_dataset(cfg["results"], ds["demo"])
    return {"name": name, **ds}


def _subset(cfg: dict, name: str) -> dict:
    sub = copy.deepcopy(cfg["subsets"][name])
    return {"name": name, **sub, "dataset": _dataset(cfg, sub["dataset"])}


def _teacher(cfg: dict, name: str) -> dict:
    teacher = copy.deepcopy(cfg["teachers"][name])
    if "train" in teacher:
        teacher["train"]["data"] = _subset(cfg, teacher["train"]["data"])
    teacher.pop("check", None)  # the check gates consumers; it does not change the teacher's weights
    return {"name": name, **teacher}


def _teacher_check(cfg: dict, name: str) -> dict:
    check = copy.deepcopy(cfg["teachers"][name]["check"])
    return {"teacher": name, **check, "dataset": _dataset(cfg, check["dataset"])}


def _student(cfg: dict, name: str) -> dict:
    return {"name": name, **copy.deepcopy(cfg["students"][name])}


def _soft_labels(cfg: dict, name: str) -> dict:
    labels = copy.deepcopy(cfg["soft_labels"][name])
    labels["data"] = _subset(cfg, labels["data"])
    if "generate" in labels:
        labels["generate"]["teacher"] = _teacher(cfg, labels["generate"]["teacher"])
    return {"name": name, **labels}


def _kdep_targets(cfg: dict, name: str) -> dict:
    """A teacher-feature store; a targets store also by the projection of the runs using it."""
    store = copy.deepcopy(cfg["kdep_targets"][name])
    store["data"] = _subset(cfg, store["data"])
    store["teacher"] = _teacher(cfg, store["teacher"])
    if store["store"] == "targets":
        store["projection"] = _projection_of(cfg, kdep_target_users(cfg, name)[0])
    return {"name": name, **store}


def _target_store_of(cfg: dict, run_name: str) -> str:
    run = cfg["pretrain"][run_name]
    return run[run["method"]]["targets"]


def _svd(cfg: dict, teacher: str, subset: str) -> dict:
    return {**copy.deepcopy(cfg["svd"]), "teacher": _teacher(cfg, teacher), "subset": _subset(cfg, subset)}


def svd_subset_of(cfg: dict, run_name: str) -> str:
    """The subset of a run's SVD artefact: its method's ``svd_subset`` option, else its data."""
    run = cfg["pretrain"][run_name]
    return run.get(run["method"], {}).get("svd_subset") or run["data"]


def _soft_label_set(cfg: dict, run_name: str) -> str:
    run = cfg["pretrain"][run_name]
    return run[run["method"]]["soft_labels"]


@dataclass(frozen=True)
class Artefact:
    """A teacher-derived input a method may declare (kdflow.distill.registry), made by other rules:
    how a run's use of it is checked, what it adds to the run's slice, and the file its job reads."""

    check: Callable[..., list[str]]  # (cfg, where, run, the run's options, method) -> problems
    resolve: Callable[[dict, str], dict]  # (cfg, run name) -> entries of the run's slice
    path: Callable[[dict, str], str]  # (cfg, run name) -> the file Snakemake waits for


ARTEFACTS = {
    "svd": Artefact(
        _svd_errors,
        lambda cfg, name: {"svd": _svd(cfg, cfg["pretrain"][name]["teacher"], svd_subset_of(cfg, name))},
        lambda cfg, name: paths.svd_file(cfg["results"], cfg["pretrain"][name]["teacher"], svd_subset_of(cfg, name))),
    "soft_labels": Artefact(
        _soft_label_errors,
        lambda cfg, name: {"soft_labels": _soft_labels(cfg, _soft_label_set(cfg, name))},
        lambda cfg, name: paths.soft_labels_store(cfg["results"], _soft_label_set(cfg, name))),
    "kdep_targets": Artefact(
        _kdep_target_errors,
        lambda cfg, name: {"kdep_targets": _kdep_targets(cfg, _target_store_of(cfg, name))},
        lambda cfg, name: paths.kdep_targets_store(cfg["results"], _target_store_of(cfg, name))),
}


def artefact_paths(cfg: dict, run_name: str) -> dict[str, str]:
    """``{artefact: path}`` of a run: what its job reads besides data and teacher."""
    return {a: ARTEFACTS[a].path(cfg, run_name) for a in method_of(cfg, run_name).artefacts}


def _run(cfg: dict, name: str) -> dict:
    """Everything that determines a pre-training run's result, from its method's declaration."""
    run = copy.deepcopy(cfg["pretrain"][name])
    decl = method_of(cfg, name)
    out = {"name": name, "method": decl.name, "student": _student(cfg, run["student"])}
    if not decl.builtin and "results" in cfg:
        out["method_module"] = decl.module  # where a job imports the method from (execution)
    if decl.student == "checkpoint":
        out["checkpoint"] = run["checkpoint"]
    if not decl.trains:
        return out
    out["data"] = _subset(cfg, run["data"])
    out["training"] = run["training"]
    if decl.teacher:
        out["teacher"] = _teacher(cfg, run["teacher"])
    if decl.options is not None:
        out[decl.name] = run[decl.name]
    for artefact in decl.artefacts:
        out.update(ARTEFACTS[artefact].resolve(cfg, name))
    return out


def _protocol(cfg: dict, name: str) -> dict:
    return {"name": name, **copy.deepcopy(cfg["transfer"]["protocols"][name])}


def _demo(cfg: dict, name: str) -> dict:
    return {"name": name, **copy.deepcopy(cfg["demo"][name])}


# The public resolvers: ``resolve_x(cfg, *names)`` -> JobConfig (full slice, identity, hash).
resolve_dataset = functools.partial(_job_config, _dataset)
resolve_subset = functools.partial(_job_config, _subset)
resolve_teacher = functools.partial(_job_config, _teacher)
resolve_teacher_check = functools.partial(_job_config, _teacher_check)
resolve_soft_labels = functools.partial(_job_config, _soft_labels)
resolve_kdep_targets = functools.partial(_job_config, _kdep_targets)
resolve_svd = functools.partial(_job_config, _svd)  # (cfg, teacher, subset)
resolve_protocol = functools.partial(_job_config, _protocol)
resolve_demo = functools.partial(_job_config, _demo)


def resolve_run(cfg: dict, name: str) -> JobConfig:
    if name not in cfg["pretrain"]:
        groups = pretrain_groups(cfg)
        if name in groups:
            raise ConfigError(f"pre-training run {name!r} has pre-training seeds: it is pre-trained as "
                              f"{', '.join(groups[name].values())}; name one of them")
        raise ConfigError(f"{name!r} is not a pre-training run of the config (known: {', '.join(sorted(cfg['pretrain']))})")
    return _job_config(_run, cfg, name)


def run_config_hash(cfg: dict, name: str) -> str:
    return resolve_run(cfg, name).hash


def transfer_jobs(cfg: dict) -> list[dict]:
    """One entry per (task, dataset, run, seed) of every transfer grid, in a stable order;
    ``student_run``: the pre-training run it fine-tunes (kdflow.config.student_run)."""
    jobs: dict[tuple, dict] = {}
    protocols = cfg["transfer"]["protocols"]
    groups = pretrain_groups(cfg)
    for grid in cfg["transfer"]["grids"].values():
        task = protocols[grid["protocol"]]["task"]
        for ds in grid["datasets"]:
            for run in grid["runs"]:
                for seed in grid["seeds"]:
                    jobs.setdefault((task, ds, run, seed), {"task": task, "dataset": ds, "run": run, "seed": seed,
                                                            "protocol": grid["protocol"],
                                                            "student_run": student_run(cfg, run, seed, groups)})
    return [jobs[k] for k in sorted(jobs)]


def transfer_job(cfg: dict, task: str, dataset: str, run: str, seed: int) -> dict:
    """The transfer_jobs entry of one job (its protocol and the run it fine-tunes)."""
    for job in transfer_jobs(cfg):
        if (job["task"], job["dataset"], job["run"], job["seed"]) == (task, dataset, run, int(seed)):
            return job
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
    """Fail before any job starts if a user dataset folder (or one of its splits, or a folder or
    index file a segmentation format needs), or the folder of imported FKD soft labels, is missing."""
    from kdflow.data.detection import DETECTION_FORMATS, det_layout_problems
    from kdflow.data.segmentation import SEGMENTATION_FORMATS, seg_layout_problems

    problems = []
    for name in names:
        ds = cfg["datasets"][name]
        if "root" not in ds or is_placeholder(ds["root"]):
            continue
        root = Path(ds["root"])
        if not root.is_dir():
            problems.append(f"config.datasets.{name}.root: folder {root} does not exist")
            continue
        if ds["format"] in SEGMENTATION_FORMATS:
            problems += seg_layout_problems(ds, name, unfilled=is_placeholder)
        if ds["format"] in DETECTION_FORMATS:
            problems += det_layout_problems(ds, name)
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
