"""The results root's lock (kdflow.lock) without Snakemake: what a holder on another host, an
unreadable lock and a release by a non-holder do. The Snakemake runs are in test_workflow.py."""

from __future__ import annotations

import json
import os

import pytest

from kdflow.lock import ResultsLocked, acquire, lock_path, release


def test_a_lock_from_another_host_is_refused_and_names_how_to_clear_it(tmp_path):
    lock = lock_path(tmp_path)
    lock.write_text(json.dumps({"host": "login-2", "pid": 4242, "workdir": "/home/me/kdflow",
                                "command": "snakemake --profile slurm", "since": "2026-12-01 09:00:00 UTC"}))
    with pytest.raises(ResultsLocked, match=r"pid 4242 on login-2, started 2026-12-01 09:00:00 UTC from "
                                            r"/home/me/kdflow: snakemake --profile slurm.*delete .*\.kdflow\.lock"):
        acquire(tmp_path)
    release(tmp_path)  # not ours: left alone
    assert json.loads(lock.read_text())["host"] == "login-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".kdflow.lock"]  # no temporary file left


def test_an_unreadable_lock_is_refused_and_ours_is_released(tmp_path):
    lock_path(tmp_path).write_text("{half a lo")
    with pytest.raises(ResultsLocked, match="an unreadable lock"):
        acquire(tmp_path)
    lock_path(tmp_path).unlink()
    path = acquire(tmp_path / "new_root")  # a results root that does not exist yet
    assert json.loads(path.read_text())["pid"] == os.getpid()
    release(tmp_path / "new_root")
    assert not path.exists()
