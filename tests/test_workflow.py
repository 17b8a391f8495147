"""Snakemake integration: the tiny demo DAG runs end to end through the real rules; a re-run does
nothing; deleting one transfer result re-runs only that job and the table."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from conftest import REPO, tool

pytestmark = pytest.mark.slow


def snakemake(config, *args, timeout=1200):
    cmd = [tool("snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO),
           "--configfile", str(config), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def planned_jobs(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[-1] if "Job stats:" in output else ""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)
            if m.group(1) != "total"}


def _with_imported_run(config, work):
    """Add an ``imported`` run: a hand-written student file in KDEP's robustness layout."""
    import torch
    import yaml

    from kdflow.models.network import Network
    from test_checkpoints import _robustness_file

    torch.manual_seed(5)
    _robustness_file(work / "kdep_student.pt", Network("test_resnet", num_classes=1000), student=True)
    cfg = yaml.safe_load(config.read_text())
    cfg["pretrain"]["kdep_released"] = {"method": "imported", "student": "tres",
                                        "checkpoint": {"path": str(work / "kdep_student.pt")}}
    cfg["transfer"]["grids"]["tiny"]["runs"].append("kdep_released")
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def _with_plugin_method(config):
    """Add a run of a test-only method that lives outside kdflow (tests/methods/logit_probe.py):
    it reads the teacher's logits and owns a trainable module; the config only names its file."""
    import yaml

    cfg = yaml.safe_load(config.read_text())
    cfg["method_modules"] = [str(REPO / "tests" / "methods" / "logit_probe.py")]
    cfg["pretrain"]["probe"] = {"method": "logit_probe", "student": "tres", "teacher": "tiny_teacher",
                                "data": "tin_25", "training": cfg["pretrain"]["sup"]["training"],
                                "logit_probe": {"temperature": 3.0}}
    cfg["transfer"]["grids"]["tiny"]["runs"].append("probe")
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import write_config

    work = tmp_path_factory.mktemp("tiny")
    config = _with_imported_run(write_config(REPO / "tests" / "data" / "tiny_config.yaml", work), work)
    config = _with_plugin_method(config)
    done = snakemake(config)
    assert done.returncode == 0, done.stderr[-4000:]
    return config, work / "results"


def test_tiny_dag_produces_every_artefact(tiny_run):
    config, results = tiny_run
    table = (results / "tables" / "classification.md").read_text()
    for run in ("scratch", "sup", "kdep", "kdep_random", "kdep_released", "fkd"):
        assert f"| {run} |" in table
    assert "mean ± sample standard deviation" in table
    metrics = sorted((results / "transfer" / "classification" / "tdown").glob("*/seed*/metrics.json"))
    assert len(metrics) == 14
    record = json.loads(metrics[0].read_text())
    assert record["task"] == "classification" and {m["checkpoint"] for m in record["metrics"]} == {"best", "final"}
    svd_prov = json.loads((results / "svd" / "tiny_teacher" / "tin_25.provenance.json").read_text())
    assert svd_prov["summary"]["n"] == 100 and svd_prov["summary"]["dim"] == 256
    student_prov = json.loads((results / "pretrain" / "kdep" / "provenance.json").read_text())
    assert student_prov["config"]["teacher"]["name"] == "tiny_teacher" and len(student_prov["config_hash"]) == 64
    assert (results / "pretrain" / "kdep" / "log.csv").read_text().count("\n") == 3  # header + 2 epochs
    assert (results / "logs" / "pretrain" / "kdep.log").stat().st_size > 0
    assert (results / "benchmarks" / "pretrain" / "kdep.tsv").exists()
    check = json.loads((results / "teachers" / "tiny_teacher" / "check.json").read_text())
    assert check["min_top1"] == 0 and check["images"] == 24
    imported = json.loads((results / "pretrain" / "kdep_released" / "provenance.json").read_text())
    assert imported["file_naming"] == "robustness" and imported["load"]["unexpected"] == []
    released = json.loads((results / "transfer" / "classification" / "tdown" / "kdep_released" / "seed0"
                           / "provenance.json").read_text())
    assert released["load"]["missing"] == ["fc.bias", "fc.weight"]  # only the new head is not loaded
    store = json.loads((results / "softlabels" / "tiny_labels" / "store.json").read_text())
    assert [s["count"] for s in store["shards"]] == [50, 50] and store["teacher"]["name"] == "tiny_teacher"
    assert store["bytes_per_crop"] == 4 and store["recovery"]["stored_max_abs_error"] <= 1 / 255 + 1e-6
    fkd_log = (results / "pretrain" / "fkd" / "log.csv").read_text().splitlines()
    assert fkd_log[0].split(",")[:5] == ["epoch", "pass", "lr", "loss", "soft_ce"] and len(fkd_log) == 2  # 1 pass = 2 epochs
    teacher_metrics = json.loads((results / "teachers" / "tiny_teacher" / "metrics.json").read_text())
    assert teacher_metrics["metrics"][0]["metric"] == "val_top1"


def test_a_method_declared_outside_kdflow_runs_through_the_workflow(tiny_run):
    """tests/methods/logit_probe.py: teacher logits, a method-owned probe, its own option block."""
    from safetensors.torch import load_file

    _, results = tiny_run
    run_dir = results / "pretrain" / "probe"
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["config"]["method"] == "logit_probe"
    assert provenance["config"]["logit_probe"] == {"temperature": 3.0}  # its option block, in the identity
    assert provenance["config"]["teacher"]["name"] == "tiny_teacher"
    assert provenance["execution"]["method_module"].endswith("tests/methods/logit_probe.py")
    assert (run_dir / "log.csv").read_text().splitlines()[0].split(",")[:4] == ["epoch", "pass", "lr", "loss"]
    assert "kl" in (run_dir / "log.csv").read_text().splitlines()[0].split(",")
    student = load_file(run_dir / "student.safetensors")
    assert student and not any(k.startswith("probe") for k in student)  # the probe is never exported
    assert (results / "transfer" / "classification" / "tdown" / "probe" / "seed1" / "metrics.json").is_file()
    assert "| probe |" in (results / "tables" / "classification.md").read_text()


def test_tables_by_hand_read_the_configs_jobs_only(tiny_run):
    """A metrics.json left by a run the config no longer has is not aggregated."""
    import sys

    config, results = tiny_run
    table = results / "tables" / "classification.md"
    before = table.read_text()
    stale = results / "transfer" / "classification" / "tdown" / "old_run" / "seed0" / "metrics.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"task": "classification", "dataset": "tdown", "run": "old_run", "seed": 0,
                                 "metrics": [{"metric": "top1", "value": 99.0, "checkpoint": "final"}]}))
    try:
        out = subprocess.run([sys.executable, str(REPO / "workflow_scripts" / "tables.py"), "--config", str(config)],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "old_run" not in table.read_text() and table.read_text() == before
    finally:
        stale.unlink()
        stale.parent.rmdir()


def test_rerun_does_nothing(tiny_run):
    config, _ = tiny_run
    dry = snakemake(config, "-n")
    assert dry.returncode == 0, dry.stderr
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_deleting_one_metrics_reruns_only_that_job_and_the_table(tiny_run):
    config, results = tiny_run
    victim = results / "transfer" / "classification" / "tdown" / "kdep" / "seed1" / "metrics.json"
    victim.unlink()
    dry = snakemake(config, "-n")
    assert planned_jobs(dry.stdout + dry.stderr) == {"transfer_cls": 1, "collect_results": 1, "tables": 1, "plots": 1, "all": 1}
    again = snakemake(config)
    assert again.returncode == 0, again.stderr[-4000:]
    assert victim.exists()
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(snakemake(config, "-n"))


REPORT_JOBS = {"collect_results", "tables", "plots"}


def _planned_after(config, change) -> dict[str, int]:
    """The jobs ``snakemake -n`` plans while ``change`` (a context manager) is in effect."""
    with change as changed_config:
        dry = snakemake(changed_config or config, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    return {rule: n for rule, n in planned_jobs(dry.stdout + dry.stderr).items() if rule != "all"}


@pytest.mark.parametrize("what", ["report code", "published numbers", "aggregation rule"])
def test_touching_the_report_reruns_report_jobs_only(tiny_run, what, tmp_path):
    """Report code, the published numbers and the config's ``report`` block feed the report jobs
    only: changing one plans at least one of them and no other job."""
    import contextlib
    import os

    import yaml

    config, _ = tiny_run

    @contextlib.contextmanager
    def edited(path, text):  # a repository file changed for the dry run, restored byte- and mtime-exact
        before, stat = path.read_bytes(), path.stat()
        try:
            path.write_bytes(text(before))
            yield None
        finally:
            path.write_bytes(before)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    @contextlib.contextmanager
    def other_aggregation():
        cfg = yaml.safe_load(config.read_text())
        cfg["report"] = {**cfg.get("report", {}), "spread": "sem"}
        changed = tmp_path / "config.yaml"
        changed.write_text(yaml.safe_dump(cfg, sort_keys=False))
        yield changed

    change = {
        "report code": edited(REPO / "src" / "kdflow" / "report" / "plots.py", lambda b: b + b"\n# a style change\n"),
        "published numbers": edited(REPO / "config" / "published" / "fkd.yaml",
                                    lambda b: b.replace(b"value: 79.8", b"value: 79.9")),
        "aggregation rule": other_aggregation(),
    }[what]
    planned = _planned_after(config, change)
    assert planned and set(planned) <= REPORT_JOBS, planned
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(snakemake(config, "-n"))  # restored


def _snapshot(results) -> dict[str, tuple[bytes, int]]:
    """Every transfer result: its bytes and modification time."""
    return {str(p.relative_to(results)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted((results / "transfer").rglob("metrics.json"))}


def test_a_failed_transfer_leaves_every_other_result_and_a_rerun_redoes_only_it(tiny_run):
    """One transfer job fails (its student file was cut short); the cluster profile's keep-going
    lets the others finish. Snakemake reports the failure, every other result is intact, and once
    the cause is fixed a re-run plans that job and the report only."""
    import os

    config, results = tiny_run
    tdown = results / "transfer" / "classification" / "tdown"
    failing, other = tdown / "kdep" / "seed1" / "metrics.json", tdown / "sup" / "seed1" / "metrics.json"
    failing.unlink()
    other.unlink()
    before = _snapshot(results)
    student = results / "pretrain" / "kdep" / "student.safetensors"
    good, stat = student.read_bytes(), student.stat()
    student.write_bytes(good[:len(good) // 2])
    os.utime(student, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same age: only the transfer fails
    try:
        failed = snakemake(config, "--keep-going")
    finally:
        student.write_bytes(good)
        os.utime(student, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    out = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert re.search(rf"Error in rule transfer_cls:\n(?:    .*\n)*?    output: {re.escape(str(failing))}\n", out), out[-4000:]
    log = (results / "logs" / "transfer_cls" / "tdown" / "kdep" / "seed1.log").read_text()
    assert str(student) in log and "CheckpointError" in log, log[-3000:]
    assert not failing.exists() and other.exists()  # the other job of the run was done
    after = _snapshot(results)
    assert {k: v for k, v in after.items() if k != str(other.relative_to(results))} == before
    dry = snakemake(config, "-n")
    assert planned_jobs(dry.stdout + dry.stderr) == {"transfer_cls": 1, "collect_results": 1, "tables": 1,
                                                     "plots": 1, "all": 1}
    again = snakemake(config)
    assert again.returncode == 0, again.stderr[-4000:]
    assert failing.exists() and _snapshot(results)[str(other.relative_to(results))] == after[str(other.relative_to(results))]


def test_a_second_run_on_the_same_results_is_refused_also_from_another_directory(tiny_run, tmp_path):
    """Snakemake locks its working directory; kdflow's lock on the results root also refuses a run
    started from another directory. A dry run never takes it; a crashed holder's lock is taken over."""
    import sys
    import time

    from kdflow.lock import lock_path

    config, results = tiny_run
    lock = lock_path(results)
    assert not lock.exists()  # every earlier run released it
    victim = results / "transfer" / "classification" / "tdown" / "sup" / "seed0" / "metrics.json"
    victim.unlink()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom kdflow import lock\n"
                               f"lock.acquire({str(results)!r}); print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held"
        other_dir = tmp_path / "elsewhere"
        other_dir.mkdir()
        cmd = [tool("snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(other_dir),
               "--configfile", str(config), "--cores", "2"]
        assert subprocess.run([*cmd, "-n"], capture_output=True, text=True, timeout=600).returncode == 0  # dry: no lock
        refused = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        out = refused.stdout + refused.stderr
        assert refused.returncode != 0
        assert f"{results} is in use by another Snakemake run (pid {holder.pid} on" in out, out[-3000:]
        assert f"delete {lock} and start again" in out
        assert not victim.exists() and lock.exists()  # no job ran; the holder's lock is left alone
    finally:
        holder.kill()
        holder.wait()
    started = time.time()
    again = snakemake(config)  # the holder is gone: its lock is stale and taken over
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"{lock} was left by pid {holder.pid}" in again.stderr and "taking it over" in again.stderr
    assert victim.exists() and not lock.exists()
    print(f"re-run after a stale lock: {time.time() - started:.0f} s")
