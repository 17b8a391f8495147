"""Config validation: defaults filled, and every error names the key path at fault."""

from __future__ import annotations

import copy
import subprocess

import pytest
import yaml

from conftest import REPO, tool
from kdflow.config import ConfigError, check_dataset_roots, load_config, resolve_run, transfer_jobs, validate_config


@pytest.fixture
def demo(repo):
    with open(repo / "config" / "config.yaml") as fh:
        return yaml.safe_load(fh)


def test_demo_config_is_valid_and_defaults_are_filled(demo):
    cfg = validate_config(copy.deepcopy(demo))
    run = cfg["pretrain"]["kdep_r18_r18_in48.seed0"]  # pre-trained once per seed (its `seeds`)
    assert run["kdep"] == {"tau": 0.1, "power": 3, "loss_weight": 20.0}  # tau and power from defaults
    assert cfg["students"]["r18"]["input"]["channel_order"] == "RGB"
    assert cfg["report"]["checkpoint"] == "final"
    jobs = transfer_jobs(cfg)
    assert sum(job["task"] == "classification" for job in jobs) == 27  # 9 runs x 3 seeds
    assert sum(job["task"] == "segmentation" for job in jobs) == 15  # 5 runs x 3 seeds
    resolved = resolve_run(cfg, "kdep_r18_r18_in48.seed0")
    assert resolved["teacher"]["name"] == "demo_r18" and resolved["svd"]["subset"]["name"] == "demo_in_48"


def test_unknown_reference_names_key_path(demo):
    demo["pretrain"]["kdep_r18_r18_in48"]["teacher"] = "demo_r62"
    with pytest.raises(ConfigError) as err:
        validate_config(demo)
    assert ("config.pretrain.kdep_r18_r18_in48.teacher: 'demo_r62' is not a defined teacher "
            "(known: demo_r18, demo_r18_untrained)") in str(err.value)


def test_wrong_type_names_key_path(demo):
    demo["transfer"]["protocols"]["demo_ft"]["training"]["epochs"] = "fifteen"
    with pytest.raises(ConfigError) as err:
        validate_config(demo)
    assert "config.transfer.protocols.demo_ft.training.epochs: 'fifteen' is not of type 'integer'" in str(err.value)


def test_misspelt_key_names_key_path(demo):
    demo["pretrain"]["supervised_in48"]["trainng"] = {}
    with pytest.raises(ConfigError) as err:
        validate_config(demo)
    assert "config.pretrain.supervised_in48: unknown key" in str(err.value)
    assert "'trainng' was unexpected" in str(err.value)


def test_teacher_needs_exactly_one_source(demo):
    demo["teachers"]["demo_r18_untrained"]["pretrained"] = True
    with pytest.raises(ConfigError, match=r"config.teachers.demo_r18_untrained: needs exactly one of"):
        validate_config(demo)


def test_missing_dataset_folder_is_reported_before_jobs(demo, tmp_path):
    demo["datasets"]["imagenet"] = {"root": str(tmp_path / "imagenet")}
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    cfg = validate_config(demo)
    with pytest.raises(ConfigError) as err:
        check_dataset_roots(cfg, ["imagenet", "demo_in"])
    assert f"config.datasets.imagenet.val_split: folder {tmp_path / 'imagenet' / 'val'} does not exist" in str(err.value)


def test_load_config_reports_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def _properties_without_role(node, schema, where, seen):
    """Key paths of every schema property (own, $ref'd, branches, method blocks) lacking x-role."""
    from kdflow.config import ROLE, ROLES, _resolve_ref, object_properties

    node = _resolve_ref(node, schema)
    missing = []
    for key, sub in object_properties(node, schema).items():
        path = f"{where}.{key}"
        if sub.get(ROLE) not in ROLES:
            missing.append(path)
        ref = sub.get("$ref")
        if ref in seen:
            continue
        missing += _properties_without_role(sub, schema, path, seen | ({ref} if ref else set()))
    for key in ("additionalProperties", "items"):
        if isinstance(node.get(key), dict):
            missing += _properties_without_role(node[key], schema, f"{where}.*", seen)
    return missing


def test_every_config_key_is_identity_or_execution(repo):
    from kdflow.config import effective_schema

    schema = effective_schema([str(repo / "tests" / "methods" / "logit_probe.py")])
    assert _properties_without_role(schema, schema, "config", frozenset()) == []


def _schema_keys(node, schema, where, pick, seen=frozenset()):
    """``(key path, property with $ref resolved)`` of every property ``pick`` selects, through
    $refs (each followed once per path) and named entries (``<name>``)."""
    from kdflow.config import _resolve_ref, object_properties

    node = _resolve_ref(node, schema)
    found = []
    for key, sub in object_properties(node, schema).items():
        prop = {**_resolve_ref(sub, schema), **sub}
        if pick(prop):
            found.append((f"{where}.{key}".lstrip("."), prop))
        ref = sub.get("$ref")
        if ref not in seen:
            found += _schema_keys(sub, schema, f"{where}.{key}", pick, seen | ({ref} if ref else set()))
    if isinstance(node.get("additionalProperties"), dict):
        found += _schema_keys(node["additionalProperties"], schema, f"{where}.<name>", pick, seen)
    return found


def _execution_keys(schema):
    from kdflow.config import ROLE

    return [key for key, _ in _schema_keys(schema, schema, "", lambda prop: prop.get(ROLE) == "execution")]


def test_the_readme_lists_every_execution_key(repo):
    from kdflow.config import effective_schema

    schema = effective_schema()
    readme = (repo / "README.md").read_text()
    section = readme.split("### Which keys re-run what")[1].split("\n### ")[0]
    for key in sorted(set(_execution_keys(schema))):
        parts = key.split(".")
        tails = {".".join(parts[i:]) for i in range(len(parts))}  # e.g. `import.root` or `workers`
        assert any(f"`{tail}`" in section for tail in tails), f"README does not list execution key {key}"


def test_keys_added_at_their_old_behaviour_do_not_change_existing_identities(demo):
    """Options added to the trainer (AdamW, clipping, norm/bias decay groups, a cosine floor) are
    left out of a job's identity at their defaults, so a kdflow upgrade re-runs no finished job;
    set to anything else they are identity keys like the rest."""
    from kdflow.config import NEUTRAL_DEFAULT, ROLE, effective_schema, resolve_run

    schema = effective_schema()
    neutral = _schema_keys(schema, schema, "config", lambda prop: prop.get(NEUTRAL_DEFAULT))
    assert any(k.endswith("optim.clip_grad_norm") for k, _ in neutral), neutral
    for key, prop in neutral:
        assert "default" in prop and prop.get(ROLE) == "identity", key
    cfg = validate_config(copy.deepcopy(demo))
    run = resolve_run(cfg, "kdep_r18_r18_in48.seed0")
    optim, schedule = run["training"]["optim"], run["training"]["schedule"]
    assert optim["clip_grad_norm"] is None and optim["decay_norm_and_bias"] is True  # filled for the trainer ...
    assert not {"clip_grad_norm", "decay_norm_and_bias", "betas", "eps"} & set(run.identity["training"]["optim"])
    assert "min_lr" not in run.identity["training"]["schedule"] and schedule["min_lr"] == 0  # ... not hashed
    for key, value in (("clip_grad_norm", 1.0), ("decay_norm_and_bias", False)):
        changed = copy.deepcopy(demo)
        changed["pretrain"]["kdep_r18_r18_in48"]["training"]["optim"][key] = value
        other = resolve_run(validate_config(changed), "kdep_r18_r18_in48.seed0")
        assert other.identity["training"]["optim"][key] == value and other.hash != run.hash


def test_identity_slices_leave_out_execution_keys(demo, tmp_path):
    from kdflow.config import resolve_run

    cfg = validate_config(copy.deepcopy(demo))
    moved = copy.deepcopy(demo)
    moved["results"] = str(tmp_path / "elsewhere")
    moved["pretrain"]["kdep_r18_r18_in48"]["training"]["workers"] = 8
    moved["svd"]["workers"] = 4
    a, b = resolve_run(cfg, "kdep_r18_r18_in48.seed0"), resolve_run(validate_config(moved), "kdep_r18_r18_in48.seed0")
    assert a.hash == b.hash and a.identity == b.identity
    assert b["training"]["workers"] == 8 and b.execution["training"] == {"workers": 8}
    assert "workers" not in a.identity["training"] and "root" not in a.identity["data"]["dataset"]
    changed = copy.deepcopy(demo)
    changed["pretrain"]["kdep_r18_r18_in48"]["training"]["optim"]["lr"] = 0.07
    assert resolve_run(validate_config(changed), "kdep_r18_r18_in48.seed0").hash != a.hash


def test_a_key_given_twice_in_a_config_file_is_refused_naming_both_lines(tmp_path):
    """YAML loaders keep the last of two equal keys silently; kdflow's config loading (and the
    Snakefile, for the files Snakemake parsed itself) refuses the file, starting no job."""
    text = (REPO / "tests" / "data" / "tiny_config.yaml").read_text()
    text = text.replace("  sup: {method: supervised", "  sup: {method: scratch, student: tres}\n  sup: {method: supervised")
    path = tmp_path / "dup.yaml"
    path.write_text(text.replace("results: results", f"results: {tmp_path / 'results'}"))
    line = next(i for i, row in enumerate(text.splitlines(), start=1) if row.startswith("  sup: {method: supervised"))
    with pytest.raises(ConfigError, match=rf"dup.yaml: line {line}: key 'sup' is given twice in one mapping "
                                          rf"\(first on line {line - 1}\)"):
        load_config(path)
    out = subprocess.run([tool("snakemake"), "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO),
                          "--configfile", str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and f"line {line}: key 'sup' is given twice" in out.stdout + out.stderr
    assert not (tmp_path / "results").exists()


def _two_grids_one_job(cfg):
    cfg["transfer"]["protocols"]["quick2"] = copy.deepcopy(cfg["transfer"]["protocols"]["quick"])
    cfg["transfer"]["protocols"]["quick2"]["training"]["epochs"] = 3
    cfg["transfer"]["grids"]["tiny2"] = {**cfg["transfer"]["grids"]["tiny"], "protocol": "quick2"}


@pytest.mark.parametrize("mutate, named", [
    (lambda c: c["pretrain"]["sup"]["training"].update(epochs=-1),
     "config.pretrain.sup.training.epochs: -1 is less than the minimum of 1"),
    (lambda c: c["transfer"]["grids"]["tiny"].update(seeds=[]), "config.transfer.grids.tiny.seeds: [] should be non-empty"),
    (lambda c: c["pretrain"]["sup"].update(student="nope"), "config.pretrain.sup.student: 'nope' is not a defined student"),
    (lambda c: c["transfer"]["grids"]["tiny"].update(datasets=["nope"]),
     "config.transfer.grids.tiny.datasets[0]: 'nope' is not a defined dataset"),
    (lambda c: c["transfer"]["grids"]["tiny"].update(protocol="nope"),
     "config.transfer.grids.tiny.protocol: 'nope' is not a defined protocol"),
    (_two_grids_one_job, "config.transfer.grids.tiny2: tdown/fkd/seed1 is also in grid 'tiny' with a different protocol"),
    (lambda c: c["students"].update(tres={"arch": "resnet50"}),  # 2048 dimensions; the teacher has 256
     "config.pretrain.kdep.student: 'tres' (resnet50) has 2048 feature dimensions, more than the 256 of teacher "
     "'tiny_teacher' (test_efficientnet), whose SVD basis spans at most 256"),
])
def test_config_faults_fail_at_load_naming_the_key(mutate, named):
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny_config.yaml").read_text())
    cfg = copy.deepcopy(cfg)
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert named in str(err.value)


def test_the_feature_width_table_is_timms():
    """Config validation reads widths from a table (no torch import per snakemake call): each entry
    is what timm builds."""
    from kdflow.models.network import num_features_of
    from kdflow.models.widths import KNOWN_WIDTHS, feature_width

    assert {arch: num_features_of(arch) for arch in KNOWN_WIDTHS} == KNOWN_WIDTHS
    assert feature_width("tf_efficientnet_l2.ns_jft_in1k_475") == 5504 and feature_width("resnet26") == 2048
