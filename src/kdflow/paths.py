"""Where every artefact lives under the results root: the one layout the Snakefile and the
hand-run scripts share. Pass wildcard strings (``"{run}"``) to get Snakemake patterns."""

from __future__ import annotations

from pathlib import Path


def _p(*parts) -> str:
    return str(Path(*map(str, parts)))


def demo_dataset(results, name) -> str:
    return _p(results, "data", "demo", name)


def dataset_manifest(results, dataset, split) -> str:
    """``split``: ``train`` or ``test`` (written by prepare_dataset)."""
    return _p(results, "datasets", dataset, f"{split}.tsv")


def dataset_work_dir(results, dataset) -> str:
    return _p(results, "datasets", dataset)


def subset_manifest(results, subset) -> str:
    return _p(results, "subsets", f"{subset}.tsv")


def subset_symlinks(results, subset) -> str:
    return _p(results, "subsets", subset)


def teacher_dir(results, teacher) -> str:
    return _p(results, "teachers", teacher)


def teacher_weights(results, teacher) -> str:
    return _p(teacher_dir(results, teacher), "model.safetensors")


def teacher_metrics(results, teacher) -> str:
    return _p(teacher_dir(results, teacher), "metrics.json")


def teacher_check(results, teacher) -> str:
    return _p(teacher_dir(results, teacher), "check.json")


def svd_file(results, teacher, subset) -> str:
    return _p(results, "svd", teacher, f"{subset}.safetensors")


def soft_labels_dir(results, labels) -> str:
    return _p(results, "softlabels", labels)


def soft_labels_store(results, labels) -> str:
    """The file a finished store is known by (its index and shards lie beside it)."""
    return _p(soft_labels_dir(results, labels), "store.json")


def shard_name(shard, suffix) -> str:
    """``suffix``: ``bin`` (the records) or ``npz`` (that shard's part of the index)."""
    return f"shard-{shard}.{suffix}"


def soft_labels_shard(results, labels, shard, suffix) -> str:
    return _p(soft_labels_dir(results, labels), shard_name(shard, suffix))


def kdep_targets_dir(results, targets) -> str:
    return _p(results, "kdep_targets", targets)


def kdep_targets_store(results, targets) -> str:
    """The file a finished teacher-feature store is known by (index and shards beside it)."""
    return _p(kdep_targets_dir(results, targets), "store.json")


def kdep_targets_shard(results, targets, shard, suffix) -> str:
    return _p(kdep_targets_dir(results, targets), shard_name(shard, suffix))


def pretrain_dir(results, run) -> str:
    return _p(results, "pretrain", run)


def student_weights(results, run) -> str:
    return _p(pretrain_dir(results, run), "student.safetensors")


def pretrain_metrics(results, run) -> str:
    return _p(pretrain_dir(results, run), "metrics.json")


def export_dir(results, run, engine) -> str:
    """A student converted for a downstream engine (``mmseg``, ``detectron2``) and its report."""
    return _p(pretrain_dir(results, run), "export", engine)


def export_weights(results, run, engine) -> str:
    names = {"mmseg": "backbone.pth", "detectron2": "model.pkl"}
    return _p(export_dir(results, run, engine), names[engine])


def export_report(results, run, engine) -> str:
    return _p(export_dir(results, run, engine), "report.json")


def export_config(results, run, engine) -> str:
    """The engine config values an export dictates (detectron2 only)."""
    return _p(export_dir(results, run, engine), "config.yaml")


def export_files(results, run, engine) -> dict[str, str]:
    """Every file an export writes (its provenance aside), by the rule's output names."""
    files = {"weights": export_weights(results, run, engine), "report": export_report(results, run, engine)}
    if engine == "detectron2":
        files["config"] = export_config(results, run, engine)
    return files


def transfer_dir(results, task, dataset, run, seed) -> str:
    return _p(results, "transfer", task, dataset, run, f"seed{seed}")


def transfer_metrics(results, task, dataset, run, seed) -> str:
    return _p(transfer_dir(results, task, dataset, run, seed), "metrics.json")


def table(results, name, ext) -> str:
    return _p(results, "tables", f"{name}.{ext}")


def state_dir(results, stage, *names) -> str:
    """Resumable training state: beside the results, never a declared output (Snakemake's
    clean-up of a failed job must not delete it)."""
    return _p(results, "state", stage, *map(str, names))


def log_file(results, stage, *names) -> str:
    return _p(results, "logs", stage, *map(str, names[:-1]), f"{names[-1]}.log")


def benchmark_file(results, stage, *names) -> str:
    return _p(results, "benchmarks", stage, *map(str, names[:-1]), f"{names[-1]}.tsv")


def gpu_check(results) -> str:
    return _p(results, "checks", "gpu_check.json")


def plots_dir(results) -> str:
    return _p(results, "plots")


def plot(results, name, ext) -> str:
    return _p(plots_dir(results), f"{name}.{ext}")
