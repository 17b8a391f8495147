"""The benchmark suite keeps running (tiny settings) and reports what it says it does; its
numbers are not asserted — speed is measured by running the benchmarks, never by timed assertions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmarks")
    demo = tmp_path_factory.mktemp("demo")
    (demo / "benchmarks" / "pretrain" ).mkdir(parents=True)
    (demo / "benchmarks" / "pretrain" / "kdep.tsv").write_text("s\th:m:s\n42.5\t0:00:42\n")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--quick", "--out-dir", str(out),
                           "--results", str(demo)], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_run_all_writes_every_report_and_the_summary(quick_suite):
    summary = json.loads((quick_suite / "summary.json").read_text())
    assert set(summary["ratios"]) == {"pretrain_throughput", "input_pipeline", "svd_pass", "dag", "demo_wall"}
    assert summary["skipped"] == {}
    md = (quick_suite / "summary.md").read_text()
    for name in summary["ratios"]:
        assert f"## {name}" in md


def test_pretrain_throughput_reports_every_path_against_the_ceiling(quick_suite):
    report = json.loads((quick_suite / "pretrain_throughput.json").read_text())
    assert set(report["modes"]) == {"ceiling", "supervised", "online_kd", "online_kdep", "kdep_replay", "fkd_replay"}
    for mode in report["modes"].values():
        assert len(mode["crops_per_s_spread"]["windows"]) == 2 and mode["crops_per_s"] > 0
    replay = report["modes"]["kdep_replay"]
    assert abs(replay["images_per_s"] * 4 - replay["crops_per_s"]) < 0.05 * replay["crops_per_s"]  # 4 per decode
    crops = {m: r["crops_per_s"] for m, r in report["modes"].items()}
    assert report["ratios"]["kdep_replay_over_online_kdep"] == round(crops["kdep_replay"] / crops["online_kdep"], 3)
    assert report["ratios"]["supervised_over_ceiling"] == round(crops["supervised"] / crops["ceiling"], 3)
    assert report["forward_gflops"]["teacher_over_student"] > 1
    assert report["stores"]["soft_labels"]["bytes_per_crop"] == 15  # top-5 of 1000 classes
    assert report["stores"]["kdep_targets"]["bytes_per_crop"] == 1024  # 512 fp16 targets (ResNet-18)
    assert report["stores"]["kdep_targets"]["generation"]["break_even_epochs"] > 0


def test_the_other_benchmarks_report_their_ratios(quick_suite):
    pipeline = json.loads((quick_suite / "input_pipeline.json").read_text())
    assert {"one_crop_w0", "one_crop_w1", "one_crop_w2", "k_crops_w0", "pil_decode", "draft_decode",
            "tv_decode_jpeg"} == set(pipeline["modes"])
    svd = json.loads((quick_suite / "svd_pass.json").read_text())
    assert set(svd["peak_rss_mb_by_features"]) == {"512", "2048"} and svd["ratios"]["svd_over_inference"] > 0
    dag = json.loads((quick_suite / "dag.json").read_text())
    assert dag["cases"]["scaled"]["jobs"] > dag["cases"]["paper"]["jobs"] > dag["cases"]["empty"]["jobs"]
    wall = json.loads((quick_suite / "demo_wall.json").read_text())
    assert wall["rules"]["pretrain"] == {**wall["rules"]["pretrain"], "jobs": 1, "total_s": 42.5}
    assert 0 < wall["rules"]["pretrain"]["start_up_share"] < 1
