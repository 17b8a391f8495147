"""Workflow hygiene: lint, formatting, per-rule log/benchmark/env, env pins equal the requirements."""

from __future__ import annotations

import re
import subprocess

import yaml

from conftest import REPO, tool


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        name = re.split(r"[=<>!~]", line, maxsplit=1)[0].strip().lower()
        pins[name] = line.replace(" ", "")
    return pins


def test_snakemake_lint_passes():
    out = subprocess.run([tool("snakemake"), "--lint", "--directory", str(REPO), "--snakefile",
                          str(REPO / "Snakefile")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_snakefmt_check_passes():
    files = [str(REPO / "Snakefile"), *map(str, sorted((REPO / "rules").glob("*.smk")))]
    out = subprocess.run([tool("snakefmt"), "--check", *files], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_conda_envs_pin_the_requirement_versions():
    required = _pins((REPO / "requirements.txt").read_text().splitlines())
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
        pinned = _pins(pip)
        assert pinned, env_file
        for name, spec in pinned.items():
            assert name in required, f"{env_file.name}: {name} is not in requirements.txt"
            assert spec == required[name], f"{env_file.name}: {spec} != requirements.txt {required[name]}"
    kdflow_env = _pins(next(d["pip"] for d in yaml.safe_load((REPO / "envs" / "kdflow.yaml").read_text())
                            ["dependencies"] if isinstance(d, dict)))
    assert set(kdflow_env) == set(required), "the training env must pin every runtime requirement"


def test_every_rule_has_log_benchmark_env_and_no_lambda():
    text = "\n".join(p.read_text() for p in sorted((REPO / "rules").glob("*.smk")))
    rules = re.split(r"^rule ", text, flags=re.M)[1:]
    assert len(rules) >= 7
    for body in rules:
        name = body.split(":")[0]
        for directive in ("log:", "benchmark:", "conda:", "threads:", "resources:", "mem_mb=", "runtime=", "gpu="):
            assert directive in body, f"rule {name} lacks {directive}"
    assert "lambda" not in text + (REPO / "Snakefile").read_text()


def _rule_gpus() -> dict[str, int]:
    text = "\n".join(p.read_text() for p in sorted((REPO / "rules").glob("*.smk")))
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^rule (\w+):(?:(?!^rule ).)*?gpu=(\d+)", text, re.M | re.S)}


def test_slurm_profile_resolves_from_the_root_and_covers_every_gpu_rule():
    assert (REPO / "slurm").is_symlink() and (REPO / "slurm").resolve() == (REPO / "profiles" / "slurm").resolve()
    profile = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and "slurm-status-command" not in profile  # sacct, the default
    assert "--signal=URG@" in profile["default-resources"]["slurm_extra"]
    gpus = _rule_gpus()
    assert set(profile["set-resources"]) <= set(gpus) and set(profile["set-threads"]) <= set(gpus)
    for rule, n in gpus.items():
        if n:  # every GPU rule: its GPU count and no implicit task per GPU (one process launches the ranks)
            assert profile["set-resources"][rule]["tasks_per_gpu"] == 0, rule
            assert profile["set-resources"][rule]["gpu"] >= 1, rule
    assert profile["set-resources"]["pretrain"]["gpu"] == 4
    assert profile["set-resources"]["fkd_soft_label_shard"]["gpu"] == 1
    plugin = _pins((REPO / "requirements.txt").read_text().splitlines())["snakemake-executor-plugin-slurm"]
    version = tuple(int(x) for x in plugin.split("==")[1].split("."))
    assert version >= (2, 7, 1)  # before 2.7.1 a gpu=N job got --ntasks-per-gpu and ran N copies


def test_dry_run_with_the_slurm_profile_prints_slurm_resources():
    out = subprocess.run([tool("snakemake"), "-n", "--profile", "slurm"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "Using profile slurm" in text
    pretrain = re.search(r"^rule pretrain:\n(?:    .*\n)*?    resources: (.*)$", text, re.M).group(1)
    for item in ("mem_mb=128000", "runtime=2880", "gpu=4", "tasks_per_gpu=0", "slurm_extra=--signal=URG@600"):
        assert item in pretrain, pretrain


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (REPO / ".ci" / "run").read_text()


def test_every_workflow_script_runs_by_hand():
    import sys

    for script in sorted((REPO / "workflow_scripts").glob("*.py")):
        out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "--config" in out.stdout, f"{script.name}: {out.stderr[-2000:]}"


def test_kdflow_cli_validates_the_demo_config():
    import sys

    out = subprocess.run([sys.executable, "-m", "kdflow", "validate", str(REPO / "config" / "config.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "kdep_r18_r18_in48" in out.stdout and "scratch" in out.stdout
