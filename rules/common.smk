# Config loading and validation, the experiment matrix, and the input functions of all rules.

import kdflow.config as kcfg
from kdflow import paths

# Schema validation (snakemake.utils.validate, defaults filled) plus cross-reference checks;
# errors name the key path at fault.
CFG = kcfg.validate_config(config, source="config")
kcfg.check_placeholders(CFG)
R = CFG["results"]
TRANSFER_JOBS = kcfg.transfer_jobs(CFG)
USED_DATASETS = sorted(
    {j["dataset"] for j in TRANSFER_JOBS} | {s["dataset"] for s in CFG["subsets"].values()}
)
kcfg.check_dataset_roots(CFG, USED_DATASETS)


def _names(section):
    return "|".join(sorted(section)) or "^$"


wildcard_constraints:
    demo=_names(CFG["demo"]),
    subset=_names(CFG["subsets"]),
    teacher=_names(CFG["teachers"]),
    run=_names(CFG["pretrain"]),
    labels=_names(CFG["soft_labels"]),
    shard=r"\d+",
    dataset=_names(CFG["datasets"]),
    seed=r"\d+",


def final_targets():
    """Every pre-training run, every transfer result, and the tables built from them. The results
    are targets in their own right, so a deleted metrics.json is re-made (and only it, then the
    tables)."""
    pretrained = [
        paths.pretrain_metrics(R, name)
        for name, run in CFG["pretrain"].items()
        if run["method"] != "scratch"
    ]
    if not TRANSFER_JOBS:
        return pretrained
    tables = [paths.table(R, "classification", ext) for ext in ("md", "csv")]
    return pretrained + classification_metrics(None) + tables


def dataset_folder(name):
    """A demo dataset is an output of demo_data; a user dataset is checked, not produced."""
    ds = CFG["datasets"][name]
    return [paths.demo_dataset(R, ds["demo"])] if "demo" in ds else []


def dataset_folder_of(wildcards):
    return dataset_folder(wildcards.dataset)


def prepared(dataset):
    """The train/test manifests every consumer of a dataset reads."""
    return {split: paths.dataset_manifest(R, dataset, split) for split in ("train", "test")}


# ---------------------------------------------------------------- data
def demo_spec(wildcards):
    return CFG["demo"][wildcards.demo]


def subset_source(wildcards):
    return paths.dataset_manifest(R, CFG["subsets"][wildcards.subset]["dataset"], "train")


def subset_params(wildcards):
    return kcfg.resolve_subset(CFG, wildcards.subset)


# ---------------------------------------------------------------- teachers and SVD
def teacher_inputs(wildcards):
    teacher = CFG["teachers"][wildcards.teacher]
    if "train" in teacher:
        subset = teacher["train"]["data"]
        dataset = CFG["subsets"][subset]["dataset"]
        return {
            "manifest": paths.subset_manifest(R, subset),
            "val_manifest": paths.dataset_manifest(R, dataset, "test"),
        }
    if "checkpoint" in teacher and not kcfg.is_placeholder(teacher["checkpoint"]["path"]):
        return {"checkpoint": teacher["checkpoint"]["path"]}
    return {}


def teacher_params(wildcards):
    return kcfg.resolve_teacher(CFG, wildcards.teacher)


def checked_teacher(wildcards):
    """SVD weights are made only from a teacher that passed its configured check."""
    teacher = CFG["teachers"][wildcards.teacher]
    return [paths.teacher_check(R, wildcards.teacher)] if "check" in teacher else []


def teacher_check_inputs(wildcards):
    check = CFG["teachers"][wildcards.teacher]["check"]
    return {
        "teacher": paths.teacher_weights(R, wildcards.teacher),
        "manifest": paths.dataset_manifest(R, check["dataset"], "test"),
    }


def teacher_check_params(wildcards):
    return CFG["teachers"][wildcards.teacher]["check"]


def svd_student_archs(wildcards):
    """Students of the KDEP runs that use this (teacher, subset) SVD: their widths are checked
    against N before any pre-training starts."""
    archs = {
        CFG["students"][run["student"]]["arch"]
        for name, run in CFG["pretrain"].items()
        if run["method"] == "kdep"
        and run["teacher"] == wildcards.teacher
        and kcfg.svd_subset_of(CFG, name) == wildcards.subset
    }
    return sorted(archs)


# ---------------------------------------------------------------- FKD soft labels
def soft_label_inputs(wildcards):
    """The subset's manifest, and the checked teacher (or nothing more for an imported set:
    FKD's files are read by path, thousands of them)."""
    labels = CFG["soft_labels"][wildcards.labels]
    inputs = {"manifest": paths.subset_manifest(R, labels["data"])}
    if "generate" in labels:
        teacher = labels["generate"]["teacher"]
        inputs["teacher"] = paths.teacher_weights(R, teacher)
        if "check" in CFG["teachers"][teacher]:
            inputs["checked"] = paths.teacher_check(R, teacher)
    return inputs


def soft_label_params(wildcards):
    return kcfg.resolve_soft_labels(CFG, wildcards.labels)


def soft_label_shards(wildcards):
    n = CFG["soft_labels"][wildcards.labels]["shards"]
    return [
        paths.soft_labels_shard(R, wildcards.labels, k, suffix)
        for k in range(n)
        for suffix in ("bin", "npz")
    ]


def soft_labels_out_dir(wildcards):
    return paths.soft_labels_dir(R, wildcards.labels)


def soft_labels_state(wildcards):
    return paths.state_dir(R, "softlabels", wildcards.labels)


# ---------------------------------------------------------------- pre-training
def pretrain_inputs(wildcards):
    run = CFG["pretrain"][wildcards.run]
    if run["method"] == "imported":
        path = run["checkpoint"]["path"]
        return {} if kcfg.is_placeholder(path) else {"checkpoint": path}
    inputs = {"manifest": paths.subset_manifest(R, run["data"])}
    if run["method"] in kcfg.METHODS_WITH_HEAD:
        dataset = CFG["subsets"][run["data"]]["dataset"]
        inputs["val_manifest"] = paths.dataset_manifest(R, dataset, "test")
    if run["method"] == "kdep":
        inputs["teacher"] = paths.teacher_weights(R, run["teacher"])
        inputs["svd"] = paths.svd_file(R, run["teacher"], kcfg.svd_subset_of(CFG, wildcards.run))
    if run["method"] == "fkd":
        inputs["soft_labels"] = paths.soft_labels_store(R, run["fkd"]["soft_labels"])
    return inputs


def run_params(wildcards):
    return kcfg.resolve_run(CFG, wildcards.run)


def pretrain_out_dir(wildcards):
    return paths.pretrain_dir(R, wildcards.run)


def pretrain_state(wildcards):
    return paths.state_dir(R, "pretrain", wildcards.run)


# ---------------------------------------------------------------- transfer
def transfer_inputs(wildcards):
    inputs = prepared(wildcards.dataset)
    if CFG["pretrain"][wildcards.run]["method"] != "scratch":
        inputs["student"] = paths.student_weights(R, wildcards.run)
    return inputs


def dataset_params(wildcards):
    return kcfg.resolve_dataset(CFG, wildcards.dataset)


def protocol_params(wildcards):
    name = kcfg.protocol_for(
        CFG, "classification", wildcards.dataset, wildcards.run, wildcards.seed
    )
    return kcfg.resolve_protocol(CFG, name)


def transfer_state(wildcards):
    return paths.state_dir(
        R, "transfer", "classification", wildcards.dataset, wildcards.run, f"seed{wildcards.seed}"
    )


def classification_metrics(wildcards):
    return [
        paths.transfer_metrics(R, j["task"], j["dataset"], j["run"], j["seed"])
        for j in TRANSFER_JOBS
        if j["task"] == "classification"
    ]
