"""A training job SIGKILLed mid-run and re-run ends with exactly the weights of an uninterrupted run;
a changed config or a state file that is not plain data is refused."""

from __future__ import annotations

import errno
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from conftest import REPO, PicklePayload, training_config
from kdflow.config import load_config, resolve_dataset, resolve_subset
from kdflow.jobs.data import demo_data, imagenet_subset, prepare_dataset
from kdflow import paths
from kdflow.distill.base import Method, MethodContext
from kdflow.train.trainer import PREVIOUS_STATE_FILE, STATE_FILE, OutOfMemory, StateMismatch, Trainer

pytestmark = pytest.mark.slow


def _prepare(tmp_path, name, epochs):
    src = REPO / "tests" / "data" / "tiny_config.yaml"
    base = yaml.safe_load(src.read_text())
    (tmp_path / name).mkdir()
    base["pretrain"]["sup"]["training"] = {**base["pretrain"]["sup"]["training"], "epochs": epochs}
    cfg_path = tmp_path / name / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({**base, "results": str(tmp_path / name / "results")}))
    cfg = load_config(cfg_path)
    results = cfg["results"]
    demo_data("tiny_in", cfg["demo"]["tiny_in"], paths.demo_dataset(results, "tiny_in"))
    manifests = {split: paths.dataset_manifest(results, "tin", split) for split in ("train", "test")}
    prepare_dataset(resolve_dataset(cfg, "tin"), manifests)
    imagenet_subset(resolve_subset(cfg, "tin_25"), manifests["train"], paths.subset_manifest(results, "tin_25"))
    return cfg_path, cfg


def _command(cfg_path):
    return [sys.executable, str(REPO / "workflow_scripts" / "pretrain.py"), "--config", str(cfg_path),
            "--run-id", "sup", "--threads", "1"]


def _kill_after_epochs(cfg_path, log_csv, epochs_done: int) -> int:
    """Start the pre-training script and SIGKILL it once ``epochs_done`` epochs are logged."""
    proc = subprocess.Popen(_command(cfg_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (log_csv.exists() and len(log_csv.read_text().splitlines()) > epochs_done):
        assert proc.poll() is None, "training finished before it could be killed"
        assert time.time() < deadline, "training made no progress"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(log_csv.read_text().splitlines()) - 1


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    epochs = 8
    ref_cfg, _ = _prepare(tmp_path, "reference", epochs)
    subprocess.run(_command(ref_cfg), check=True, capture_output=True, timeout=600)

    cfg_path, _ = _prepare(tmp_path, "killed", epochs)
    run_dir = tmp_path / "killed" / "results" / "pretrain" / "sup"
    done_before_kill = _kill_after_epochs(cfg_path, run_dir / "log.csv", 2)
    assert 2 <= done_before_kill < epochs
    assert not (run_dir / "student.safetensors").exists()

    rerun = subprocess.run(_command(cfg_path), check=True, capture_output=True, text=True, timeout=600)
    resumed_at = int(re.search(r"resuming after pass (\d+)/8", rerun.stdout + rerun.stderr).group(1))
    assert done_before_kill <= resumed_at < epochs  # the state is saved before the log row

    reference = load_file(tmp_path / "reference" / "results" / "pretrain" / "sup" / "student.safetensors")
    resumed = load_file(run_dir / "student.safetensors")
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert reference[key].equal(resumed[key]), key
    assert len((run_dir / "log.csv").read_text().splitlines()) == epochs + 1  # no duplicated rows
    state = tmp_path / "killed" / "results" / "state" / "pretrain" / "sup" / "last.pt"
    assert not state.exists()  # discarded once the outputs were written


def test_changed_config_refuses_stale_state(tmp_path):
    cfg_path, _ = _prepare(tmp_path, "run", 8)
    _kill_after_epochs(cfg_path, tmp_path / "run" / "results" / "pretrain" / "sup" / "log.csv", 1)
    raw = yaml.safe_load(cfg_path.read_text())
    raw["pretrain"]["sup"]["training"]["optim"]["lr"] = 0.5
    cfg_path.write_text(yaml.safe_dump(raw))
    out = subprocess.run(_command(cfg_path), capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert "belongs to a run with a different config" in out.stderr


class Squares(Method):
    """A one-step-per-pass method on a fixed batch: enough for the trainer's state handling."""

    def loader(self, pass_index):
        return [{"image": torch.ones(2, 3)}]

    def loss(self, student, batch):
        return student(batch["image"]).pow(2).mean(), {}


def test_a_state_file_that_would_run_code_is_refused_without_running_it(tmp_path):
    """Resumable states are read with torch's weights-only unpickler: a pickle with a malicious
    ``__reduce__`` is refused, saying why, and its payload never runs."""
    marker = tmp_path / "payload-ran"
    (tmp_path / "state").mkdir()
    torch.save({"config_hash": "h", "passes_done": 0, "payload": PicklePayload(marker)}, tmp_path / "state" / STATE_FILE)
    training = training_config(epochs=1, workers=0)
    method = Squares(MethodContext(data=None, training=training, device=torch.device("cpu")))
    with pytest.raises(StateMismatch, match="refusing to unpickle it"):
        Trainer(nn.Linear(3, 1), method, training, tmp_path / "run", tmp_path / "state", "h").fit()
    assert not marker.exists()


def _full_disk(code):
    """A writer that gets half its bytes out, then finds the disk (or the quota) full."""
    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half of the new fi")
        raise OSError(code, os.strerror(code))
    return write


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_while_writing_keeps_the_previous_file(tmp_path, monkeypatch, code):
    """ENOSPC / EDQUOT while writing a metrics file or a resumable state: the error names the file,
    the previous version stays valid, and no partial file is left beside it."""
    from kdflow.io import read_json, write_json, write_with

    metrics = tmp_path / "metrics.json"
    write_json(metrics, {"top1": 37.0})
    with pytest.raises(OSError, match=rf"while writing {metrics}; the previous metrics.json is unchanged"):
        write_with(metrics, _full_disk(code))
    assert read_json(metrics) == {"top1": 37.0}

    training = training_config(epochs=2, workers=0)
    method = Squares(MethodContext(data=None, training=training, device=torch.device("cpu")))
    trainer = Trainer(nn.Linear(3, 1), method, training, tmp_path / "run", tmp_path / "state", "h")
    optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.1)
    trainer._save_state(optimizer, passes_done=1)
    state = tmp_path / "state" / STATE_FILE
    before = state.read_bytes()
    monkeypatch.setattr(torch, "save", lambda obj, tmp: _full_disk(code)(tmp))
    with pytest.raises(OSError, match=rf"while writing {state}; the previous {STATE_FILE} is unchanged"):
        trainer._save_state(optimizer, passes_done=2)
    monkeypatch.undo()
    assert state.read_bytes() == before and torch.load(state, weights_only=True)["passes_done"] == 1
    assert sorted(p.name for p in state.parent.iterdir()) == [STATE_FILE]  # no partial file beside it
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_state_cut_short_resumes_from_the_previous_one(tmp_path, capsys):
    """A last.pt truncated after it was written (a crash on a file system that lost the end, an
    interrupted copy): the previous state, kept beside it, is resumed from, and the log says so."""
    training = training_config(epochs=3, workers=0)
    method = Squares(MethodContext(data=None, training=training, device=torch.device("cpu")))
    trainer = Trainer(nn.Linear(3, 1), method, training, tmp_path / "run", tmp_path / "state", "h")
    optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.1)
    for passes_done in (1, 2):
        trainer._save_state(optimizer, passes_done=passes_done)
    state = tmp_path / "state" / STATE_FILE
    state.write_bytes(state.read_bytes()[:100])
    assert trainer._load_state(optimizer)["passes_done"] == 1
    out = capsys.readouterr().out
    assert f"{state} is unreadable" in out and "resuming from the state before it" in out
    (tmp_path / "state" / PREVIOUS_STATE_FILE).write_bytes(b"")
    with pytest.raises(StateMismatch, match="both .* are unreadable; delete them to start over"):
        trainer._load_state(optimizer)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, MemoryError])
def test_out_of_memory_names_the_batch_size_to_lower(tmp_path, error):
    class Hungry(Method):
        def loader(self, pass_index):
            return [{"image": torch.ones(2, 3)}]

        def loss(self, student, batch):
            raise error("CUDA out of memory. Tried to allocate 20.00 GiB")

    training = training_config(epochs=1, workers=0, batch_size=256)
    method = Hungry(MethodContext(data=None, training=training, device=torch.device("cpu")))
    with pytest.raises(OutOfMemory, match=r"out of cpu memory in pass 1 with training.batch_size 256 \(256 per "
                                          r"process over 1\): lower training.batch_size .*Tried to allocate"):
        Trainer(nn.Linear(3, 1), method, training, tmp_path / "run", tmp_path / "state", "h").fit()


@pytest.mark.parametrize("existing", [False, True])
def test_a_writer_killed_between_write_and_rename_leaves_the_final_path_absent_or_complete(tmp_path, existing):
    """SIGKILL after a result's bytes are written but before they are renamed into place: the
    final path holds the previous complete file, or nothing — never the half-made one."""
    final = tmp_path / "metrics.json"
    if existing:
        final.write_text('{"top1": 37.0}')
    ready = tmp_path / "written"
    child = subprocess.Popen([sys.executable, "-c", (
        "import pathlib, time\n"
        "from kdflow.io import write_with\n"
        "def writer(tmp):\n"
        "    tmp.write_text('{\"top1\": 12')  # a half-made result\n"
        f"    pathlib.Path({str(ready)!r}).touch()\n"
        "    time.sleep(60)\n"
        f"write_with({str(final)!r}, writer)\n")])
    deadline = time.time() + 60
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert ready.exists()
    if existing:
        assert final.read_text() == '{"top1": 37.0}'
    else:
        assert not final.exists()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_names_the_step_and_its_images_and_keeps_the_last_good_state(tmp_path, capsys, bad):
    """A loss that turns NaN or inf in pass 2 stops the run naming the step and the images of its
    batch; the state saved after pass 1 is kept, and a re-run resumes from it."""
    from PIL import Image

    from kdflow.data.imagefolder import Manifest, Sample

    samples = []
    for i in range(8):
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.new("RGB", (12, 12), (30 * i, 0, 0)).save(tmp_path / "images" / f"img {i}.png")
        samples.append(Sample(path=f"img {i}.png", cls="c", index=0))
    data = Manifest(root=tmp_path / "images", samples=samples, classes=["c"])

    class Diverging(Method):
        calls = 0

        def loss(self, student, batch):
            Diverging.calls += 1
            out = student(batch["image"].flatten(1)).pow(2).mean()
            return (out * bad if Diverging.calls == 3 else out), {}  # pass 2's first step

    training = training_config(epochs=3, workers=0, batch_size=4, augment={"size": 8, "scale": [0.5, 1.0]})
    method = Diverging(MethodContext(data=data, training=training, device=torch.device("cpu")))
    trainer = Trainer(nn.Linear(3 * 8 * 8, 1), method, training, tmp_path / "run", tmp_path / "state", "h")
    with pytest.raises(FloatingPointError) as err:
        trainer.fit()
    message = str(err.value)
    assert f"non-finite loss {bad} in step 1/2 of pass 2" in message
    batch = method.loader(1).paths(0)
    assert len(batch) == 4 and f"the batch's images: {', '.join(batch)}" in message
    assert all(str(tmp_path / "images") in path for path in batch)
    state = tmp_path / "state" / STATE_FILE
    assert f"the last good state is kept in {state}" in message
    assert torch.load(state, weights_only=True)["passes_done"] == 1
    rerun = Trainer(nn.Linear(3 * 8 * 8, 1), method, training, tmp_path / "run", tmp_path / "state", "h").fit()
    assert [row["pass"] for row in rerun["rows"]] == [1, 2, 3]  # diverging no more
    assert f"resuming after pass 1/3 from {state}" in capsys.readouterr().out
