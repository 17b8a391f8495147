"""Load: FKD soft-label generation and replay over a 100,000-image manifest keep peak RSS flat
against 1,000 images (the store is read record by record, never whole), and Snakemake plans a
10,000-job grid. Peaks and times are printed (the closing notes quote them), never asserted as
times. The images are made on the fly and the teacher is a stand-in (tests/load_worker.py): what is
measured is kdflow's own per-image state."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tool

pytestmark = pytest.mark.slow

WORKER = Path(__file__).parent / "load_worker.py"
SIZES = (1_000, 100_000)
SHARDS = 2  # generation in two shard processes side by side, as the cluster runs them


def _phase(*args, background: bool = False):
    cmd = [sys.executable, str(WORKER), *map(str, args)]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return _result(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))


def _result(proc) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def peaks(tmp_path_factory) -> dict[int, dict]:
    measured = {}
    for images in SIZES:
        out = tmp_path_factory.mktemp(f"load{images}")
        started = time.time()
        phases = {"manifest": _phase("manifest", "--images", images, "--out", out)}
        shards = [_phase("shard", "--shard", k, "--shards", SHARDS, "--out", out, background=True)
                  for k in range(SHARDS)]
        phases["shard"] = [_result(p) for p in shards]
        phases["store"] = _phase("store", "--shards", SHARDS, "--out", out)
        phases["replay"] = _phase("replay", "--workers", 0, "--out", out)  # the process's own state
        phases["seconds"] = round(time.time() - started, 1)
        measured[images] = phases
        print(f"{images} images: {json.dumps(phases)}")
    return measured


def test_soft_label_generation_and_replay_over_100k_images_keep_peak_rss_flat(peaks):
    small, large = peaks[SIZES[0]], peaks[SIZES[1]]
    store_mb = large["store"]["total_bytes"] / 2**20
    assert store_mb > 350  # 4 kB of labels per image: a store read whole would show below
    assert sum(s["count"] for s in large["shard"]) == SIZES[1]
    assert large["replay"]["crops"] == large["replay"]["label_mass"] > 0.99 * 2 * SIZES[1]  # each label sums to 1
    growth = {
        "generation": max(s["peak_rss_mb"] for s in large["shard"]) - max(s["peak_rss_mb"] for s in small["shard"]),
        "store index": large["store"]["peak_rss_mb"] - small["store"]["peak_rss_mb"],
        "replay": large["replay"]["peak_rss_mb"] - small["replay"]["peak_rss_mb"],
    }
    print(f"peak RSS growth from {SIZES[0]:,} to {SIZES[1]:,} images (MB): {growth}; store {store_mb:.0f} MB")
    for phase, mb in growth.items():
        # what grows is the manifest and the store's index (well under 1 kB per image), never the store
        assert mb < 100, f"{phase}: peak RSS grew by {mb:.0f} MB from {SIZES[0]} to {SIZES[1]} images"


def test_a_10000_job_grid_is_planned(tmp_path):
    """The KDEP paper grid with every transfer grid's seeds multiplied to over 10,000 jobs."""
    cfg = yaml.safe_load((REPO / "config" / "kdep.yaml").read_text())
    for grid in cfg["transfer"]["grids"].values():
        grid["seeds"] = [s + k * 1000 for k in range(62) for s in grid["seeds"]]
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    started = time.time()
    out = subprocess.run([tool("snakemake"), "-n", "--quiet", "rules", "--snakefile", str(REPO / "Snakefile"),
                          "--directory", str(tmp_path), "--configfile", str(config), "--config",
                          "allow_placeholders=True"], capture_output=True, text=True, timeout=900)
    seconds = time.time() - started
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = int(re.findall(r"^total\s+(\d+)$", out.stdout + out.stderr, re.M)[-1])
    print(f"snakemake -n of a {jobs}-job grid: {seconds:.1f} s")
    assert jobs >= 10_000
