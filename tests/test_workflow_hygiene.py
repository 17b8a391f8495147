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
        for directive in ("log:", "benchmark:", "conda:", "threads:", "resources:"):
            assert directive in body, f"rule {name} lacks {directive}"
    assert "lambda" not in text + (REPO / "Snakefile").read_text()


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
