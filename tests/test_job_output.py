"""A failing job leaves its traceback in the rule's log file (the file Snakemake tells the user to
read), not only on Snakemake's terminal or in the SLURM job log; the job still fails."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, make_imagefolder, tool, write_config
from kdflow import paths
from kdflow.jobs.common import job_output


def _fail_inside_the_job():
    os.write(1, b"started\n")  # file descriptor 1, as a job's prints are: pytest's capture replaces sys.stdout
    raise RuntimeError("the data is broken")


def test_the_traceback_lands_in_the_log_and_the_exception_propagates(tmp_path):
    log = tmp_path / "logs" / "rule" / "job.log"
    with pytest.raises(RuntimeError, match="the data is broken"):
        with job_output(str(log)):
            _fail_inside_the_job()
    text = log.read_text()
    assert text.index("started") < text.index("Traceback (most recent call last):")
    assert "_fail_inside_the_job" in text and "RuntimeError: the data is broken" in text


_SCRIPT = """
import sys
from kdflow.jobs.common import job_output

def load():
    try:
        {}["labels"]
    except KeyError as e:
        raise ValueError("no labels") from e

def main():
    with job_output(sys.argv[1]):
        load()

main()
"""


def test_the_log_has_the_frames_and_the_chained_cause(tmp_path):
    """The frames below the job's start and the chained cause, as the interpreter reports them."""
    (tmp_path / "job.py").write_text(_SCRIPT)
    log = tmp_path / "job.log"
    out = subprocess.run([sys.executable, str(tmp_path / "job.py"), str(log)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "ValueError: no labels" in out.stderr and "in <module>" in out.stderr
    text = log.read_text()
    for part in ("KeyError: 'labels'", "The above exception was the direct cause", "in load",
                 "ValueError: no labels"):
        assert part in text, text


def test_a_clean_exit_logs_no_traceback(tmp_path):
    log = tmp_path / "job.log"
    with pytest.raises(SystemExit):
        with job_output(str(log)):
            raise SystemExit(0)
    assert "Traceback" not in log.read_text()


def _config_with_a_broken_dataset(tmp_path):
    """The tiny config plus a user dataset whose class folder ``b`` holds no image: prepare_dataset rejects it."""
    root = make_imagefolder(tmp_path / "broken", {"a": 1}, split="train")
    make_imagefolder(root, {"a": 1}, split="val")
    (root / "train" / "b").mkdir()
    config = write_config(REPO / "tests" / "data" / "tiny_config.yaml", tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["datasets"]["broken"] = {"root": str(root), "format": "imagefolder", "train_split": "train",
                                 "val_split": "val"}
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config, tmp_path / "results"


@pytest.mark.slow  # runs Snakemake (seconds)
def test_a_failing_snakemake_job_writes_its_traceback_to_the_rule_log(tmp_path):
    config, results = _config_with_a_broken_dataset(tmp_path)
    target = paths.dataset_manifest(results, "broken", "train")
    out = subprocess.run([tool("snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO),
                          "--configfile", str(config), "--cores", "1", target],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0, out.stdout[-3000:] + out.stderr[-3000:]
    logs = list((results / "logs").rglob("*.log"))  # one job ran: its log, whatever the rule's name
    text = "\n".join(p.read_text() for p in logs)
    assert "Traceback (most recent call last):" in text, (logs, out.stderr[-3000:])
    assert "DatasetError" in text and "contains no images" in text and str(tmp_path / "broken") in text
