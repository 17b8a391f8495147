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


# The envs every rule may use; any other envs/*.yaml belongs to one optional engine (envs/mmseg.yaml,
# envs/detectron2.yaml) and may add that engine's own packages.
CORE_ENVS = ("kdflow.yaml", "report.yaml")
EXACT_PIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?==[^=<>!~,;*]+")  # name[extras]==version


def _requirement_files(root):
    """requirements.txt and each optional engine's requirements-*.txt; the test tools are no runtime pin."""
    extra = sorted(p for p in root.glob("requirements-*.txt") if p.name != "requirements-test.txt")
    return [root / "requirements.txt", *extra]


def _env_pip_pins(env_file):
    env = yaml.safe_load(env_file.read_text())
    pip = next((d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d), [])
    return _pins(pip)


def _env_pin_problems(root) -> list[str]:
    """Why the conda envs under ``root/envs`` do not pin what the requirement files pin (empty: they do).

    A package an env shares with a requirement file is pinned exactly as there, so a rule's env and a
    by-hand install run the same versions; a package in no requirement file is an engine's own and
    only an engine env may pin it, exactly (==); envs/kdflow.yaml pins every runtime requirement."""
    requirements = {f.name: _pins(f.read_text().splitlines()) for f in _requirement_files(root)}
    problems = []
    for env_file in sorted((root / "envs").glob("*.yaml")):
        pinned = _env_pip_pins(env_file)
        if not pinned:
            problems.append(f"{env_file.name}: pins no pip package")
        for name, spec in pinned.items():
            problems += _pin_problems(env_file.name, name, spec, requirements)
    missing = set(requirements["requirements.txt"]) - set(_env_pip_pins(root / "envs" / "kdflow.yaml"))
    if missing:
        problems.append(f"kdflow.yaml: does not pin the runtime requirements {', '.join(sorted(missing))}")
    return problems


def _pin_problems(env: str, name: str, spec: str, requirements: dict[str, dict[str, str]]) -> list[str]:
    shared = {req: pins[name] for req, pins in requirements.items() if name in pins}
    if shared:
        return [f"{env}: {spec} != {req} {want}" for req, want in shared.items() if spec != want]
    if env in CORE_ENVS:
        return [f"{env}: {name} is in no requirement file ({', '.join(requirements)})"]
    if not EXACT_PIN.fullmatch(spec):
        return [f"{env}: {spec} is not pinned exactly (==)"]
    return []


def test_conda_envs_pin_the_requirement_versions():
    assert _env_pin_problems(REPO) == []


def _fake_checkout(root, envs: dict[str, list[str]], requirements: dict[str, str]):
    (root / "envs").mkdir()
    for name, pip in envs.items():
        (root / "envs" / name).write_text(yaml.safe_dump({"dependencies": ["python=3.11", "pip", {"pip": pip}]}))
    for name, text in requirements.items():
        (root / name).write_text(text)
    return root


_REQUIREMENTS = {"requirements.txt": "torch==2.14.1\nnumpy==2.4.6\n",
                 "requirements-mmseg.txt": "mmengine==0.10.7\n",
                 "requirements-test.txt": "pytest==9.2.0\n"}


def test_env_pin_checker_accepts_an_engine_env_that_agrees_with_the_requirements(tmp_path):
    root = _fake_checkout(tmp_path, {
        "kdflow.yaml": ["torch==2.14.1", "numpy==2.4.6", "-e .."],
        "report.yaml": ["numpy==2.4.6"],
        "mmseg.yaml": ["torch==2.14.1", "mmengine==0.10.7", "mmsegmentation==1.2.2", "mmcv-lite==2.2.0"],
    }, _REQUIREMENTS)
    assert _env_pin_problems(root) == []


def test_env_pin_checker_names_the_env_and_package_that_disagree(tmp_path):
    root = _fake_checkout(tmp_path, {
        "kdflow.yaml": ["torch==2.14.1", "numpy==2.4.6"],
        "mmseg.yaml": ["torch==2.9.0", "mmengine==0.10.7"],
    }, _REQUIREMENTS)
    assert _env_pin_problems(root) == ["mmseg.yaml: torch==2.9.0 != requirements.txt torch==2.14.1"]


def test_env_pin_checker_refuses_loose_or_stray_pins(tmp_path):
    root = _fake_checkout(tmp_path, {
        "kdflow.yaml": ["torch==2.14.1", "mmcv-lite==2.2.0"],  # an engine's package in a core env, no numpy
        "report.yaml": ["numpy==2.4.6", "pytest==9.2.0"],  # a test tool is no runtime requirement
        "mmseg.yaml": ["mmengine==0.10.6", "mmsegmentation>=1.2"],
    }, _REQUIREMENTS)
    assert _env_pin_problems(root) == [
        "kdflow.yaml: mmcv-lite is in no requirement file (requirements.txt, requirements-mmseg.txt)",
        "mmseg.yaml: mmengine==0.10.6 != requirements-mmseg.txt mmengine==0.10.7",
        "mmseg.yaml: mmsegmentation>=1.2 is not pinned exactly (==)",
        "report.yaml: pytest is in no requirement file (requirements.txt, requirements-mmseg.txt)",
        "kdflow.yaml: does not pin the runtime requirements numpy",
    ]


def test_every_rule_has_log_benchmark_env_and_no_lambda():
    text = "\n".join(p.read_text() for p in sorted((REPO / "rules").glob("*.smk")))
    rules = re.split(r"^rule ", text, flags=re.M)[1:]
    assert len(rules) >= 7
    for body in rules:
        name = body.split(":")[0]
        for directive in ("log:", "benchmark:", "conda:", "threads:", "resources:", "mem_mb=", "runtime=", "gpu="):
            assert directive in body, f"rule {name} lacks {directive}"
    assert "lambda" not in text + (REPO / "Snakefile").read_text()


def test_every_jobs_memory_grows_with_its_attempt():
    """A job killed for memory (exit 137) is retried asking for more: every rule's mem_mb and every
    mem_mb of the SLURM profile scales with Snakemake's attempt."""
    text = "\n".join(p.read_text() for p in sorted((REPO / "rules").glob("*.smk")))
    asked = re.findall(r"mem_mb=([^\n]+)", text)
    assert asked and all(re.fullmatch(r"by_attempt\(\d+\),", a) for a in asked), asked
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    blocks = [profile["default-resources"], *profile["set-resources"].values()]
    for expression in (b["mem_mb"] for b in blocks if "mem_mb" in b):
        assert re.fullmatch(r"\d+ \* attempt", expression), expression


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


def test_dry_run_with_the_slurm_profile_prints_slurm_resources(tmp_path):
    # an empty results root: the repository's own results/ may already hold the demo's outputs
    out = subprocess.run([tool("snakemake"), "-n", "--profile", "slurm", "--config", f"results={tmp_path}"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
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


def test_the_library_does_not_import_the_job_layer():
    """One layering for every stage: workflow_scripts -> kdflow.jobs (a job's work: provenance,
    metrics.json, state clean-up) -> the library (data, models, distill, train, transfer, report),
    which never imports jobs or the config upward."""
    library = ("data", "models", "distill", "train", "transfer", "report")
    for package in library:
        for path in sorted((REPO / "src" / "kdflow" / package).glob("*.py")):
            upward = re.findall(r"^\s*(?:from|import) kdflow\.(jobs|config)\b", path.read_text(), re.M)
            assert not upward, f"{path.relative_to(REPO)} imports kdflow.{upward[0]}"
