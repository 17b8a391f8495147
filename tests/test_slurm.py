"""The SLURM path against a real local cluster (tests/slurm_cluster.py): the users' profile with
only the test cluster's differences, a tiny DAG submitted job by job through sbatch, a 2-GPU
pre-training job that is one SLURM job running DDP with 2 ranks, and pre-training jobs stopped by
``scancel`` and by the pre-timeout signal that resume to the uninterrupted run's weights.

Installs the Debian packages when they are missing (root); every Snakemake run has a hard time
limit, so a hang fails instead of blocking CI; the cluster is stopped by PID in all cases.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from conftest import REPO, tool
from slurm_cluster import FAKE_GPUS, LocalSlurm, install_packages, missing_binaries

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

RUN = "ddp"
SNAKEMAKE_LIMIT = 420  # seconds for one Snakemake run on the test cluster


# --------------------------------------------------------------------------- profile and config
def users_profile() -> dict:
    return yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())


def test_cluster_profile(users: dict, cluster: LocalSlurm) -> dict:
    """The users' profile, changed only where this cluster needs it: no accounting database, so job
    status comes from squeue; a short wait before the first status check; no request above the
    node's 2 fake GPUs, its CPUs, or a share of its memory that lets two jobs run side by side."""
    profile = copy.deepcopy(users)
    profile["slurm-status-command"] = "squeue"
    profile["slurm-init-seconds-before-status-checks"] = 2
    profile["set-threads"] = {rule: min(n, cluster.cpus) for rule, n in profile["set-threads"].items()}
    for resources in profile["set-resources"].values():
        if "gpu" in resources:
            resources["gpu"] = min(resources["gpu"], len(FAKE_GPUS))
        if "mem_mb" in resources:  # "N * attempt": N capped, the scaling by attempt kept
            asked = _memory_per_attempt(resources["mem_mb"])
            resources["mem_mb"] = f"{min(asked, cluster.memory_mb // 4)} * attempt"
    return profile


test_cluster_profile.__test__ = False  # a helper, not a test


def _memory_per_attempt(expression: str) -> int:
    """N of the profile's ``mem_mb: "N * attempt"``."""
    match = re.fullmatch(r"(\d+) \* attempt", str(expression))
    assert match, f"profiles/slurm: mem_mb {expression!r} does not scale with the attempt"
    return int(match.group(1))


def _config(results: Path) -> dict:
    """A tiny DAG: two demo datasets, a subset, one 2-GPU pre-training run, one transfer job."""
    base = yaml.safe_load((REPO / "tests" / "data" / "tiny_config.yaml").read_text())
    training = {**base["_train"], "epochs": 6, "batch_size": 4}
    return {
        "results": str(results),
        "demo": base["demo"],
        "datasets": base["datasets"],
        "subsets": {"tin_25": base["subsets"]["tin_25"]},
        "students": {"gn": {"arch": "test_efficientnet_gn"}},  # GroupNorm: DDP equals one process
        "pretrain": {RUN: {"method": "supervised", "student": "gn", "data": "tin_25", "training": training}},
        "transfer": {"protocols": base["transfer"]["protocols"],
                     "grids": {"one": {"datasets": ["tdown"], "runs": [RUN], "seeds": [0], "protocol": "quick"}}},
    }


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if missing_binaries():
        if os.geteuid() != 0:
            pytest.fail(f"SLURM is not installed ({', '.join(missing_binaries())} missing) and installing "
                        "it needs root: apt-get install slurmctld slurmd slurm-client munge")
        install_packages()
    local = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        yield local.start()
    finally:
        local.stop()


@pytest.fixture(scope="module")
def profile_dir(cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("profile") / "slurm-test"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(test_cluster_profile(users_profile(), cluster)))
    return folder


class Workflow:
    """One working directory with its own config and results."""

    def __init__(self, root: Path, cluster: LocalSlurm, profile: Path):
        self.root = root
        self.results = root / "results"
        self.cluster = cluster
        self.profile = profile
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "config.yaml"
        self.config.write_text(yaml.safe_dump(_config(self.results), sort_keys=False))
        self.output = root / "snakemake.out"

    def command(self, *targets: str) -> list[str]:
        return [tool("snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(self.root),
                "--configfile", str(self.config), "--profile", str(self.profile), "--verbose", *targets]

    def start(self, *targets: str) -> subprocess.Popen:
        env = self.cluster.env
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
        return subprocess.Popen(self.command(*targets), stdout=open(self.output, "w"), stderr=subprocess.STDOUT,
                                env=env, cwd=self.root, start_new_session=True)

    def finish(self, proc: subprocess.Popen) -> str:
        try:
            proc.wait(timeout=SNAKEMAKE_LIMIT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            pytest.fail(f"snakemake ran past {SNAKEMAKE_LIMIT} s:\n{self.tail()}\n{self.cluster.log_tails()}")
        assert proc.returncode == 0, self.tail()
        return self.output.read_text()

    def run(self, *targets: str) -> str:
        return self.finish(self.start(*targets))

    def tail(self, n: int = 80) -> str:
        return "\n".join(self.output.read_text(errors="replace").splitlines()[-n:])

    def student(self) -> dict:
        return load_file(self.results / "pretrain" / RUN / "student.safetensors")

    def rule_log(self) -> str:
        return (self.results / "logs" / "pretrain" / f"{RUN}.log").read_text()


def _sbatch_calls(output: str, records: dict[str, dict]) -> dict[str, str]:
    """SLURM job id -> the sbatch command line the plugin ran for it (from --verbose output).

    Paired through the job's ``--comment`` (rule and wildcards, unique per job), which SLURM keeps
    in its record: the plugin submits jobs concurrently, so the order of "sbatch call" lines and
    of "submitted with SLURM jobid" lines need not agree."""
    calls = re.findall(r"^sbatch call: (sbatch .+)$", output, re.M)
    assert calls and len(calls) == len(records), output[-3000:]
    by_comment = {re.search(r"--comment '?([^' ]+)", call).group(1): call for call in calls}
    assert len(by_comment) == len(calls), calls
    return {job_id: by_comment[record["Comment"].strip()] for job_id, record in records.items()}


def _asked(call: str) -> dict:
    """The resources an sbatch line asks for, in scontrol's terms."""
    cpus = re.search(r"--cpus-per-task[= ](\d+)", call)
    gpus = re.search(r"--gpus[= ](\d+)", call)
    return {"rule": re.search(r"--comment '?(rule_[a-z_]+?)(_wildcards|'| )", call).group(1)[len("rule_"):],
            "NumCPUs": cpus.group(1) if cpus else None,
            "MinMemoryNode": re.search(r"--mem (\d+)", call).group(1) + "M",
            "minutes": int(re.search(r" -t '?(\d+)", call).group(1)),
            "gpus": int(gpus.group(1)) if gpus else 0}


def _minutes(limit: str) -> int:
    days, _, clock = limit.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


@pytest.fixture(scope="module")
def dag(cluster, profile_dir, tmp_path_factory):
    """The tiny DAG through SLURM (data, subset, 2-GPU pre-training, a transfer job) plus gpu_check;
    SLURM's records of its jobs."""
    flow = Workflow(tmp_path_factory.mktemp("dag"), cluster, profile_dir)
    started = time.time()
    targets = [flow.results / "transfer" / "classification" / "tdown" / RUN / "seed0" / "metrics.json",
               flow.results / "checks" / "gpu_check.json"]
    output = flow.run(*map(str, targets))
    seconds = time.time() - started
    records = {job["JobId"]: job for job in cluster.jobs()}
    return flow, output, records, seconds


# --------------------------------------------------------------------------- tests
def test_test_profile_changes_only_what_the_cluster_needs(cluster):
    users = users_profile()
    mine = test_cluster_profile(users, cluster)
    assert users.get("slurm-status-command") is None  # real clusters: the plugin's default, sacct
    changed = {k for k in set(users) | set(mine) if users.get(k) != mine.get(k)}
    assert changed <= {"slurm-status-command", "slurm-init-seconds-before-status-checks", "set-threads",
                       "set-resources"}
    for rule, resources in users["set-resources"].items():
        diff = {k for k in resources if resources[k] != mine["set-resources"][rule][k]}
        assert diff <= {"gpu", "mem_mb"}, rule


def test_every_job_went_through_sbatch_with_the_resources_asked(dag):
    flow, output, records, seconds = dag
    print(f"tiny DAG on SLURM: {seconds:.0f} s")
    calls = _sbatch_calls(output, records)
    rules = []
    for job_id, call in calls.items():
        asked, record = _asked(call), records[job_id]
        rules.append(asked["rule"])
        assert record["BatchFlag"] == "1" and record["JobState"] == "COMPLETED", (call, record)
        assert record["NumCPUs"] == asked["NumCPUs"], (call, record)
        assert record["MinMemoryNode"] == asked["MinMemoryNode"], (call, record)
        assert _minutes(record["TimeLimit"]) == asked["minutes"], (call, record)
        assert record.get("TresPerJob", "").strip() == (f"gres:gpu:{asked['gpus']}" if asked["gpus"] else ""), record
        assert "--signal=URG@600" in call  # the pre-timeout signal of the users' profile
        if asked["rule"] in ("demo_data", "prepare_dataset", "imagenet_subset"):
            assert asked["gpus"] == 0, call
    assert sorted(rules) == sorted(["demo_data"] * 2 + ["prepare_dataset"] * 2 +
                                   ["imagenet_subset", "pretrain", "transfer_cls", "gpu_check"])
    pretrain_call = next(c for c in calls.values() if "rule_pretrain" in c)
    print(f"pretrain sbatch line: {pretrain_call}")
    assert _asked(pretrain_call)["gpus"] == 2 and _asked(pretrain_call)["minutes"] == 2880
    transfer_call = next(c for c in calls.values() if "rule_transfer_cls" in c)
    assert _asked(transfer_call)["gpus"] == 1


def test_two_gpu_pretraining_is_one_job_running_two_ddp_ranks(dag, tmp_path):
    flow, output, records, _ = dag
    pretrain_jobs = [r for r in records.values() if r["Comment"].startswith("rule_pretrain")]
    assert len(pretrain_jobs) == 1 and pretrain_jobs[0]["TresPerJob"].strip() == "gres:gpu:2"
    assert "[launch] 2 ranks (gloo)" in flow.rule_log()

    # the same run as one process, by hand, on a copy of the prepared data
    single = tmp_path / "single"
    single.mkdir()
    config = single / "config.yaml"
    config.write_text(yaml.safe_dump(_config(single / "results")))
    for part in ("data", "datasets", "subsets"):
        shutil.copytree(flow.results / part, single / "results" / part, symlinks=True)
    subprocess.run([sys.executable, str(REPO / "workflow_scripts" / "pretrain.py"), "--config", str(config),
                    "--run-id", RUN, "--threads", "1"], check=True, capture_output=True, timeout=300)
    reference = load_file(single / "results" / "pretrain" / RUN / "student.safetensors")
    ddp = flow.student()
    assert reference.keys() == ddp.keys()
    for key in reference:
        assert (reference[key] - ddp[key]).abs().max().item() < 1e-4, key


def test_gpu_check_reports_what_the_job_sees(dag):
    flow, *_ = dag
    report = json.loads((flow.results / "checks" / "gpu_check.json").read_text())
    assert report["world_size"] == 2 and report["all_reduce_ok"] is True
    for rank in report["ranks"]:
        assert rank["env"]["CUDA_VISIBLE_DEVICES"] == "0,1" and rank["env"]["SLURM_JOB_ID"]


def _interrupted_run(dag, cluster, profile_dir, root: Path, scancel_args: list[str]) -> Workflow:
    """Pre-train on a copy of the DAG's prepared data; once the first epoch is logged, ``scancel``
    the job; Snakemake's retry resubmits it."""
    done, *_ = dag
    flow = Workflow(root, cluster, profile_dir)
    for part in ("data", "datasets", "subsets"):
        shutil.copytree(done.results / part, flow.results / part, symlinks=True)
    log_csv = flow.results / "pretrain" / RUN / "log.csv"
    proc = flow.start(str(flow.results / "pretrain" / RUN / "metrics.json"))
    deadline = time.time() + SNAKEMAKE_LIMIT
    while not (log_csv.exists() and len(log_csv.read_text().splitlines()) >= 2):
        assert proc.poll() is None, flow.tail()
        assert time.time() < deadline, flow.tail()
        time.sleep(0.05)
    job_id = _running_pretrain_job(cluster)
    subprocess.run(["scancel", *scancel_args, job_id], check=True, env=cluster.env, timeout=30)
    flow.finish(proc)
    return flow


def _running_pretrain_job(cluster: LocalSlurm) -> str:
    jobs = [j for j in cluster.jobs() if j["Comment"].startswith("rule_pretrain") and j["JobState"] == "RUNNING"]
    assert len(jobs) == 1, jobs
    return jobs[0]["JobId"]


def _assert_equal_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max().item() < 1e-6, key


def test_a_cancelled_job_resumes_and_ends_with_the_uninterrupted_weights(dag, cluster, profile_dir, tmp_path):
    flow = _interrupted_run(dag, cluster, profile_dir, tmp_path / "cancelled", [])
    log = flow.rule_log()
    assert "resuming after" in log, log[-3000:]
    states = [j["JobState"] for j in cluster.jobs()
              if j["Comment"].startswith("rule_pretrain") and j["WorkDir"] == str(flow.root)]
    assert states == ["CANCELLED", "COMPLETED"], states
    _assert_equal_weights(dag[0].student(), flow.student())


def test_the_pre_timeout_signal_saves_mid_epoch_and_the_resubmitted_job_resumes(dag, cluster, profile_dir, tmp_path):
    # the signal SLURM sends 10 minutes before the time limit (--signal=URG@600), sent now
    flow = _interrupted_run(dag, cluster, profile_dir, tmp_path / "signalled", ["--signal=URG"])
    # the rule log holds the last attempt only (Snakemake starts each attempt afresh); the
    # provenance keeps every stop
    log = flow.rule_log()
    assert "resuming after" in log, log[-3000:]
    provenance = json.loads((flow.results / "pretrain" / RUN / "provenance.json").read_text())
    assert [stop["signal"] for stop in provenance["interruptions"]] == ["SIGURG"], provenance["interruptions"]
    states = [j["JobState"] for j in cluster.jobs()
              if j["Comment"].startswith("rule_pretrain") and j["WorkDir"] == str(flow.root)]
    assert states == ["FAILED", "COMPLETED"], states
    _assert_equal_weights(dag[0].student(), flow.student())


def test_a_job_killed_for_memory_is_resubmitted_asking_for_more(cluster, profile_dir, tmp_path):
    """The cluster's OOM killer SIGKILLs a job (exit 137; SLURM's OUT_OF_MEMORY): the profile's
    retry resubmits it, and its mem_mb ("N * attempt") asks SLURM for twice the memory."""
    base = _memory_per_attempt(yaml.safe_load((profile_dir / "config.yaml").read_text())["default-resources"]["mem_mb"])
    root = tmp_path / "oom"
    root.mkdir()
    (root / "Snakefile").write_text(
        "rule hungry:\n"
        "    output: 'hungry.txt'\n"
        "    shell: 'echo attempt mem_mb={resources.mem_mb} >> attempts.txt; '\n"
        f"           'if [ {{resources.mem_mb}} -lt {2 * base} ]; then kill -9 $$; fi; '  # as the OOM killer would\n"
        "           'echo mem_mb={resources.mem_mb} > {output}'\n")
    env = cluster.env
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    out = subprocess.run([tool("snakemake"), "--profile", str(profile_dir), "--verbose", "hungry.txt"], cwd=root,
                         env=env, capture_output=True, text=True, timeout=SNAKEMAKE_LIMIT)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert (root / "attempts.txt").read_text().split() == ["attempt", f"mem_mb={base}", "attempt", f"mem_mb={2 * base}"]
    assert (root / "hungry.txt").read_text().split() == [f"mem_mb={2 * base}"]
    asked = [int(m) for m in re.findall(r"^sbatch call: sbatch .*--mem (\d+)", out.stdout + out.stderr, re.M)]
    assert asked == [base, 2 * base], asked
    jobs = [(j["JobState"], j["MinMemoryNode"]) for j in cluster.jobs() if j["WorkDir"] == str(root)]
    assert jobs == [("FAILED", f"{base}M"), ("COMPLETED", f"{2 * base}M")], jobs  # what SLURM granted
