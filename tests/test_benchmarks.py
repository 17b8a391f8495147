"""The benchmark scripts keep running (tiny settings); their numbers are not asserted here —
speed is measured by running them, never by timed assertions in tests."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_fkd_throughput_benchmark_runs_and_reports_ratios(tmp_path):
    out = tmp_path / "fkd_throughput.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "fkd_throughput.py"), "--images", "8", "--image-size", "64x48",
           "--input-size", "32", "--batch", "8", "--workers", "0", "--stored-crops", "4", "--warmup", "1",
           "--windows", "2", "--window-steps", "1", "--threads", "1", "--teacher", "resnet50", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["modes"]) == {"supervised", "online_kd", "fkd_replay"}
    for mode in report["modes"].values():
        assert len(mode["windows_crops_per_s"]) == 2 and mode["crops_per_s"] > 0
    fkd, sup = report["modes"]["fkd_replay"], report["modes"]["supervised"]
    assert abs(fkd["images_per_s"] * 4 - fkd["crops_per_s"]) < 0.05  # one decode per 4 replayed crops
    assert report["ratios"]["fkd_over_supervised"] == round(fkd["crops_per_s"] / sup["crops_per_s"], 3)
    assert report["forward_gflops"]["teacher_over_student"] > 1
    assert report["soft_labels"]["bytes_per_crop"] == 15  # top-5 of 1000 classes
