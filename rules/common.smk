# Config loading and validation, the experiment matrix, and the input and params functions of all
# rules.
#
# Every rule's `params` is the identity of its job: the slice of the config its result depends
# on, without execution keys (paths, workers, ...; `x-role` in the schema). Changing an execution
# key (a bigger node's `workers`, a dataset moved to node-local storage, another results root)
# therefore re-runs nothing. Jobs read their full slice (execution keys included) from the config
# itself (kdflow.jobs.common.job_config), exactly as the hand-run scripts do.

import functools
import re
from pathlib import Path

import kdflow.config as kcfg
from kdflow import lock as results_lock
from kdflow import paths
from kdflow.data.content import dataset_content
from kdflow.report import outputs as report_outputs
from kdflow.tasks import TASKS

# Schema validation (defaults filled) plus cross-reference checks; errors name the key path.
# Snakemake parsed the config files itself, keeping the last of a duplicated key: refused here.
kcfg.check_config_files(workflow.configfiles)
CFG = kcfg.validate_config(config, source="config")
kcfg.check_placeholders(CFG)
R = CFG["results"]
TRANSFER_JOBS = kcfg.transfer_jobs(CFG)
USED_DATASETS = sorted(
    {j["dataset"] for j in TRANSFER_JOBS} | {s["dataset"] for s in CFG["subsets"].values()}
)
kcfg.check_dataset_roots(CFG, USED_DATASETS)
METHODS = {name: kcfg.method_of(CFG, name) for name in CFG["pretrain"]}
# Runs given pre-training seeds: {name: {seed: run}}; a grid names the group, a job one of its runs.
GROUPS = kcfg.pretrain_groups(CFG)
# Every transfer job (its protocol and the run it fine-tunes), looked up, not rescanned, by the
# transfer rules' functions.
TRANSFER_JOB = {(j["task"], j["dataset"], j["run"], j["seed"]): j for j in TRANSFER_JOBS}


@functools.cache
def identity_of(resolve, *names):
    """``resolve(CFG, *names).identity``, computed once per slice: each resolution strips the whole
    config, and the transfer rules ask for the same run, dataset and protocol once per seed (a
    10,000-job grid would otherwise take minutes to plan)."""
    return resolve(CFG, *names).identity


def transfer_job_of(task, wildcards):
    return TRANSFER_JOB[(task, wildcards.dataset, wildcards.run, int(wildcards.seed))]


def protocol_of(task, wildcards):
    return transfer_job_of(task, wildcards)["protocol"]


def by_attempt(mem_mb):
    """A job's memory, scaled by its attempt: a job the cluster killed for memory (exit 137,
    SLURM's OUT_OF_MEMORY) is resubmitted by the profile's retries asking for 2x, then 3x."""

    def scaled(wildcards, attempt):
        return mem_mb * attempt

    return scaled


def _names(section):
    return "|".join(re.escape(name) for name in sorted(section)) or "^$"


wildcard_constraints:
    demo=_names(CFG["demo"]),
    subset=_names(CFG["subsets"]),
    teacher=_names(CFG["teachers"]),
    run=_names({**CFG["pretrain"], **GROUPS}),
    labels=_names(CFG["soft_labels"]),
    targets=_names(CFG["kdep_targets"]),
    shard=r"\d+",
    dataset=_names(CFG["datasets"]),
    seed=r"\d+",


def final_targets():
    """Every pre-training run that makes a student, every transfer result, the tables and the
    plots. The results are targets in their own right, so a deleted metrics.json is re-made (and
    only it, then the report)."""
    return (
        pretrained_metrics()
        + [transfer_metrics_file(j) for j in TRANSFER_JOBS]
        + table_files()
        + plot_files()
    )


def pretrained_metrics():
    return [
        paths.pretrain_metrics(R, name) for name, decl in METHODS.items() if decl.student != "none"
    ]


def transfer_metrics_file(job):
    return paths.transfer_metrics(R, job["task"], job["dataset"], job["run"], job["seed"])


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
def demo_identity(wildcards):
    return identity_of(kcfg.resolve_demo, wildcards.demo)


def dataset_identity(wildcards):
    """The entry without its root, and the content of its folder (path and size of every file)."""
    return {
        "entry": identity_of(kcfg.resolve_dataset, wildcards.dataset),
        "content": dataset_content(CFG["datasets"][wildcards.dataset]),
    }


def subset_source(wildcards):
    return paths.dataset_manifest(R, CFG["subsets"][wildcards.subset]["dataset"], "train")


def subset_identity(wildcards):
    return identity_of(kcfg.resolve_subset, wildcards.subset)


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


def teacher_identity(wildcards):
    return identity_of(kcfg.resolve_teacher, wildcards.teacher)


def checked_teacher(teacher):
    """Consumers of a teacher (SVD, soft labels) wait for its configured check to pass."""
    return [paths.teacher_check(R, teacher)] if "check" in CFG["teachers"][teacher] else []


def checked_teacher_of(wildcards):
    return checked_teacher(wildcards.teacher)


def teacher_check_inputs(wildcards):
    check = CFG["teachers"][wildcards.teacher]["check"]
    return {
        "teacher": paths.teacher_weights(R, wildcards.teacher),
        "manifest": paths.dataset_manifest(R, check["dataset"], "test"),
    }


def teacher_check_identity(wildcards):
    return identity_of(kcfg.resolve_teacher_check, wildcards.teacher)


def svd_identity(wildcards):
    return identity_of(kcfg.resolve_svd, wildcards.teacher, wildcards.subset)


def svd_student_archs(wildcards):
    """Students of the runs that use this (teacher, subset) SVD: their widths are checked against N
    before any pre-training starts."""
    archs = {
        CFG["students"][run["student"]]["arch"]
        for name, run in CFG["pretrain"].items()
        if "svd" in METHODS[name].artefacts
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
        inputs["checked"] = checked_teacher(teacher)
    return inputs


def soft_label_identity(wildcards):
    return identity_of(kcfg.resolve_soft_labels, wildcards.labels)


def soft_label_shards(wildcards):
    n = CFG["soft_labels"][wildcards.labels]["shards"]
    return [
        paths.soft_labels_shard(R, wildcards.labels, k, suffix)
        for k in range(n)
        for suffix in ("bin", "npz")
    ]


# ---------------------------------------------------------------- KDEP teacher-feature stores
def kdep_target_inputs(wildcards):
    """The subset's manifest, the checked teacher, and (a store of KDEP targets) the SVD file of
    its projection."""
    spec = kcfg.resolve_kdep_targets(CFG, wildcards.targets)
    teacher = spec["teacher"]["name"]
    inputs = {
        "manifest": paths.subset_manifest(R, spec["data"]["name"]),
        "teacher": paths.teacher_weights(R, teacher),
        "checked": checked_teacher(teacher),
    }
    if spec["store"] == "targets":
        subset = spec["projection"]["svd"]["subset"]["name"]
        inputs["svd"] = paths.svd_file(R, teacher, subset)
    return inputs


def kdep_target_identity(wildcards):
    return identity_of(kcfg.resolve_kdep_targets, wildcards.targets)


def kdep_target_shards(wildcards):
    n = CFG["kdep_targets"][wildcards.targets]["shards"]
    return [
        paths.kdep_targets_shard(R, wildcards.targets, k, suffix)
        for k in range(n)
        for suffix in ("bin", "npz")
    ]


# ---------------------------------------------------------------- pre-training
def pretrain_inputs(wildcards):
    """What the run's method declares it reads: data (and the dataset's test split for a student
    with a head), a teacher, artefacts; or the checkpoint of an imported student."""
    run, decl = CFG["pretrain"][wildcards.run], METHODS[wildcards.run]
    if decl.student == "checkpoint":
        path = run["checkpoint"]["path"]
        return {} if kcfg.is_placeholder(path) else {"checkpoint": path}
    inputs = {"manifest": paths.subset_manifest(R, run["data"])}
    if decl.head:
        dataset = CFG["subsets"][run["data"]]["dataset"]
        inputs["val_manifest"] = paths.dataset_manifest(R, dataset, "test")
    if decl.teacher:
        inputs["teacher"] = paths.teacher_weights(R, run["teacher"])
        inputs["checked"] = checked_teacher(run["teacher"])
    inputs.update(kcfg.artefact_paths(CFG, wildcards.run))
    return inputs


def run_identity(wildcards):
    return identity_of(kcfg.resolve_run, wildcards.run)


# ---------------------------------------------------------------- transfer
def transfer_inputs(task):
    """The input function of a task's transfer rule: the dataset's manifests and the pre-trained
    student, converted by the export stage of the task (or of the protocol's engine) where it has
    one (none for scratch runs)."""

    def inputs(wildcards):
        found = prepared(wildcards.dataset)
        job = transfer_job_of(task, wildcards)
        student = job["student_run"]
        if METHODS[student].student != "none":
            export = TASKS[task].export_for(CFG["transfer"]["protocols"][job["protocol"]])
            found["student"] = (
                paths.export_weights(R, student, export)
                if export
                else paths.student_weights(R, student)
            )
        return found

    return inputs


def transfer_identity(task):
    """The params function of a task's transfer rule: the run it fine-tunes, dataset and protocol."""

    def identity(wildcards):
        job = transfer_job_of(task, wildcards)
        protocol = job["protocol"]
        return {
            "run": identity_of(kcfg.resolve_run, job["student_run"]),
            "dataset": identity_of(kcfg.resolve_dataset, wildcards.dataset),
            "protocol": identity_of(kcfg.resolve_protocol, protocol),
        }

    return identity


# ---------------------------------------------------------------- report
REPORT_TASKS = sorted({j["task"] for j in TRANSFER_JOBS})
REPORT_CODE = report_outputs.code_version()
PUBLISHED_FILES = sorted(str(p) for p in report_outputs.PUBLISHED_DIR.glob("*.yaml"))
# made by benchmarks/pretrain_throughput.py, outside the DAG
THROUGHPUT_BENCHMARK = Path(R) / report_outputs.THROUGHPUT_BENCHMARK


def report_inputs(wildcards):
    """Every result of the config's jobs: the report waits for all of them."""
    return pretrained_metrics() + [transfer_metrics_file(j) for j in TRANSFER_JOBS]


def table_files():
    return [
        paths.table(R, name, ext)
        for name in report_outputs.table_names(REPORT_TASKS)
        for ext in ("csv", "md", "tex")
    ]


def plot_files():
    names = report_outputs.plot_names(
        REPORT_TASKS, bool(pretrained_metrics()), THROUGHPUT_BENCHMARK.is_file()
    )
    return [paths.plot(R, name, ext) for name in names for ext in ("png", "pdf")]


def table_caption(path):
    """Captions are paths relative to rules/ (the report rules' folder)."""
    name = Path(path).stem
    return f"report/tables/{'task' if name in TASKS else name}.rst"


def plot_caption(path):
    return f"report/plots/{Path(path).stem}.rst"


def plot_inputs(wildcards):
    inputs = {
        "results": paths.table(R, "all_results", "csv"),
        "runs": paths.table(R, "pretrain_runs", "csv"),
        "jobs": paths.table(R, "jobs", "json"),
    }
    if THROUGHPUT_BENCHMARK.is_file():
        inputs["throughput_benchmark"] = str(THROUGHPUT_BENCHMARK)
    return inputs
