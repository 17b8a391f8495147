"""The built-in demo, end to end: KDEP must beat scratch and KDEP from an untrained teacher.

Runs ``snakemake --cores 2`` on config/config.yaml into a temporary results root (about 10
minutes on 2 cores), unless KDFLOW_DEMO_RESULTS points at the results of a finished demo run.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, tool

pytestmark = pytest.mark.slow

KDEP, UNTRAINED, SCRATCH = "kdep_r18_r18_in48", "kdep_untrained_r18_in48", "scratch"


@pytest.fixture(scope="module")
def demo_results(tmp_path_factory) -> Path:
    given = os.environ.get("KDFLOW_DEMO_RESULTS")
    if given:
        return Path(given)
    results = tmp_path_factory.mktemp("demo") / "results"
    started = time.time()
    out = subprocess.run([tool("snakemake"), "--cores", "2", "--config", f"results={results}"], cwd=REPO,
                         capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-5000:]
    print(f"demo wall time: {time.time() - started:.0f} s")
    print((results / "tables" / "classification.md").read_text())
    return results


def _top1(results: Path) -> pd.DataFrame:
    table = pd.read_csv(results / "tables" / "classification.csv")
    return table.set_index("run")


def test_kdep_beats_scratch_by_a_clear_margin(demo_results):
    stats = _top1(demo_results)
    assert stats.loc[KDEP, "n"] == 3 and stats.loc[SCRATCH, "n"] == 3
    gap = stats.loc[KDEP, "mean"] - stats.loc[SCRATCH, "mean"]
    margin = max(2.0, 2 * max(stats.loc[KDEP, "std"], stats.loc[SCRATCH, "std"]))
    assert gap > margin, f"KDEP - scratch = {gap:.2f} points, needs > {margin:.2f}\n{stats}"


def test_trained_teacher_beats_untrained_teacher(demo_results):
    stats = _top1(demo_results)
    assert stats.loc[KDEP, "mean"] > stats.loc[UNTRAINED, "mean"], stats


def test_compared_runs_used_the_identical_transfer_protocol(demo_results):
    def protocols(run):
        found = []
        for prov in sorted((demo_results / "transfer" / "classification" / "demo_shapes" / run).glob("seed*/provenance.json")):
            found.append(json.dumps(json.loads(prov.read_text())["config"]["protocol"], sort_keys=True))
        return found

    kdep, scratch, untrained = protocols(KDEP), protocols(SCRATCH), protocols(UNTRAINED)
    assert len(kdep) == len(scratch) == len(untrained) == 3
    assert len(set(kdep + scratch + untrained)) == 1
