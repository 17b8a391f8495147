"""Provenance's git commit: untracked source files make the tree dirty, ignored files do not."""

from __future__ import annotations

import subprocess

from kdflow.provenance import git_commit


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)


def _repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / ".gitignore").write_text("/results/\n")
    (repo / "method.py").write_text("x = 1\n")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return repo


def test_an_untracked_file_makes_the_tree_dirty_an_ignored_one_does_not(tmp_path):
    repo = _repo(tmp_path)
    clean = git_commit(repo)
    assert clean is not None and len(clean) == 40, clean
    (repo / "results").mkdir()
    (repo / "results" / "metrics.json").write_text("{}\n")
    assert git_commit(repo) == clean  # ignored
    (repo / "new_method.py").write_text("y = 2\n")
    assert git_commit(repo) == clean + "-dirty"


def test_a_modified_tracked_file_makes_the_tree_dirty(tmp_path):
    repo = _repo(tmp_path)
    clean = git_commit(repo)
    (repo / "method.py").write_text("x = 2\n")
    assert git_commit(repo) == clean + "-dirty"


def test_no_repository_gives_no_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # whatever repository /tmp may be in
    assert git_commit(tmp_path) is None
