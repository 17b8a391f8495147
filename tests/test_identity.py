"""Re-runs only when results would change: execution keys (loader workers, a dataset's folder, the
results root) schedule no job and keep an interrupted state resumable; identity changes (a
learning rate, a replaced image) re-run exactly the jobs downstream of them."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_imagefolder
from test_workflow import planned_jobs, snakemake

pytestmark = pytest.mark.slow

TRAINING = {"epochs": 6, "batch_size": 8, "workers": 0, "optim": {"lr": 0.05},
            "schedule": {"name": "step", "step_epochs": 3}, "augment": {"size": 16, "scale": [0.5, 1.0]},
            "eval": {"resize": 16, "crop": 16}}


def _config(work: Path, results: Path, data: Path, workers: int = 0, lr: float = 0.05) -> Path:
    training = {**TRAINING, "workers": workers, "optim": {"lr": lr}}
    cfg = {
        "results": str(results),
        "datasets": {"pre": {"root": str(data / "pre")}, "down": {"root": str(data / "down")}},
        "subsets": {"pre_all": {"dataset": "pre", "fraction": 1.0}},
        "students": {"tres": {"arch": "test_resnet"}},
        "pretrain": {"scratch": {"method": "scratch", "student": "tres"},
                     "sup": {"method": "supervised", "student": "tres", "data": "pre_all", "training": training}},
        "transfer": {
            "protocols": {"quick": {"training": {**TRAINING, "epochs": 1, "workers": workers}}},
            "grids": {"g": {"datasets": ["down"], "runs": ["scratch", "sup"], "seeds": [0], "protocol": "quick"}},
        },
    }
    path = work / f"config-{results.name}-{data.name}-w{workers}-lr{lr}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _make_data(data: Path) -> None:
    for name, n in (("pre", 12), ("down", 8)):
        make_imagefolder(data / name, {"a": n, "b": n}, split="train", size=16)
        make_imagefolder(data / name, {"a": 3, "b": 4}, split="val", size=16)


def _dry(config) -> dict[str, int]:
    out = snakemake(config, "-n")
    assert out.returncode == 0, out.stderr[-3000:]
    return planned_jobs(out.stdout + out.stderr)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    work = tmp_path_factory.mktemp("identity")
    _make_data(work / "data")
    config = _config(work, work / "results", work / "data")
    done = snakemake(config)
    assert done.returncode == 0, done.stderr[-4000:]
    assert _dry(config) == {}
    return work


def test_workers_and_a_moved_dataset_schedule_nothing(base):
    assert _dry(_config(base, base / "results", base / "data", workers=2)) == {}
    moved = base / "data_on_local_disk"
    shutil.move(base / "data", moved)
    try:
        assert _dry(_config(base, base / "results", moved)) == {}  # the same files elsewhere
    finally:
        shutil.move(moved, base / "data")


def test_a_learning_rate_reruns_exactly_the_jobs_downstream_of_it(base):
    planned = _dry(_config(base, base / "results", base / "data", lr=0.02))
    assert planned == {"pretrain": 1, "transfer_cls": 1, "collect_results": 1, "tables": 1, "plots": 1, "all": 1}  # not the scratch transfer


def test_a_replaced_image_reruns_exactly_its_consumers(base):
    victim = base / "data" / "down" / "train" / "a" / "a_000.JPEG"
    original = victim.read_bytes()
    try:
        from PIL import Image

        Image.new("RGB", (16, 16), (200, 10, 10)).save(victim)  # another image, another size
        assert len(victim.read_bytes()) != len(original)
        assert _dry(_config(base, base / "results", base / "data")) == {
            "prepare_dataset": 1, "transfer_cls": 2, "collect_results": 1, "tables": 1, "plots": 1, "all": 1}
    finally:
        victim.write_bytes(original)
    assert _dry(_config(base, base / "results", base / "data")) == {}


def _kill_after_first_epoch(config: Path, results: Path) -> None:
    """Run the ``sup`` pre-training by hand and SIGKILL it once an epoch is logged."""
    log = results / "pretrain" / "sup" / "log.csv"
    cmd = [sys.executable, str(REPO / "workflow_scripts" / "pretrain.py"), "--config", str(config), "--run-id", "sup",
           "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (log.exists() and len(log.read_text().splitlines()) > 1):
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_an_interrupted_state_resumes_in_a_moved_results_root_with_moved_data_and_other_workers(base, tmp_path):
    # a copy of the finished results whose `sup` pre-training is interrupted after its first epoch
    first = tmp_path / "results"
    shutil.copytree(base / "results", first, symlinks=True)  # copy2: modification times kept
    shutil.copytree(base / "data", tmp_path / "data")
    for name in ("student.safetensors", "metrics.json", "log.csv"):
        (first / "pretrain" / "sup" / name).unlink()
    _kill_after_first_epoch(_config(tmp_path, first, tmp_path / "data"), first)
    assert (first / "state" / "pretrain" / "sup" / "last.pt").is_file()

    # the whole results folder and the dataset move (e.g. to node-local storage), workers change
    moved = tmp_path / "scratch" / "results"
    shutil.copytree(first, moved, symlinks=True)
    shutil.move(tmp_path / "data", tmp_path / "local_data")
    config = _config(tmp_path, moved, tmp_path / "local_data", workers=1)
    assert _dry(config) == {"pretrain": 1, "transfer_cls": 1, "collect_results": 1, "tables": 1, "plots": 1, "all": 1}
    done = snakemake(config)
    assert done.returncode == 0, done.stderr[-4000:]
    log = (moved / "logs" / "pretrain" / "sup.log").read_text()
    assert re.search(r"resuming after pass [1-5]/6", log), log[-2000:]
    assert "different config" not in log
    assert _dry(config) == {}


def _as_first_format(manifest: Path, root: Path) -> None:
    """Rewrite a manifest as kdflow wrote them before identities (absolute root, no sizes),
    keeping its modification time."""
    lines = manifest.read_text().splitlines()
    header = {k: v for k, v in (line[2:].split("=", 1) for line in lines if line.startswith("# ") and "=" in line)}
    rows = [line.split("\t")[:3] for line in lines[lines.index("path\tclass\tindex\tbytes") + 1:] if line]
    stat = manifest.stat()
    manifest.write_text(f"# root={root}\n# classes={header['classes']}\npath\tclass\tindex\n"
                        + "".join("\t".join(r) + "\n" for r in rows))
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_migration_of_results_made_by_an_older_kdflow(base):
    """Older results: manifests in the first format and Snakemake records of other params. The
    migration rewrites the manifests and re-records the params; nothing re-runs afterwards."""
    config = _config(base, base / "results", base / "data")
    other = _config(base, base / "results", base / "data", lr=0.02)
    touched = snakemake(other, "--touch")  # records other params, as an older kdflow's would differ
    assert touched.returncode == 0, touched.stderr[-3000:]
    assert _dry(config) == {"pretrain": 1, "transfer_cls": 1, "collect_results": 1, "tables": 1, "plots": 1, "all": 1}
    manifests = [base / "results" / "datasets" / "down" / "train.tsv", base / "results" / "subsets" / "pre_all.tsv"]
    _as_first_format(manifests[0], base / "data" / "down")
    _as_first_format(manifests[1], base / "data" / "pre")

    out = subprocess.run([sys.executable, "-m", "kdflow", "migrate", "--configfile", str(config), "--",
                          "--directory", str(REPO)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert out.stdout.count("manifest rewritten") == 2
    assert all(m.read_text().startswith("# kdflow manifest 2") for m in manifests)
    assert _dry(config) == {}
    victim = base / "results" / "transfer" / "classification" / "down" / "sup" / "seed0" / "metrics.json"
    victim.unlink()  # a job reading the migrated manifests still runs
    again = snakemake(config)
    assert again.returncode == 0, again.stderr[-3000:]
    assert victim.is_file()
