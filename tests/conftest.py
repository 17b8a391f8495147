"""Shared fixtures. Tests never touch the network: the hub is forced offline."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A console script of the test interpreter's environment (snakemake, snakefmt)."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed in {BIN} nor on PATH; install requirements-test.txt")
    return found


@pytest.fixture
def repo() -> Path:
    return REPO


def make_imagefolder(root: Path, classes: dict[str, int], split: str = "train", size: int = 8) -> Path:
    """Tiny real JPEG ImageFolder: ``{class: n_images}``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, n in classes.items():
        folder = root / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            pixels = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{cls}_{k:03d}.JPEG")
    return root


def write_config(src: Path, dest_dir: Path, **overrides) -> Path:
    """Copy a config with ``results`` (and other top-level keys) overridden."""
    import yaml

    cfg = yaml.safe_load(src.read_text())
    cfg["results"] = str(dest_dir / "results")
    cfg.update(overrides)
    dest = dest_dir / src.name
    dest.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def training_config(**keys) -> dict:
    """A ``training`` block as a validated config holds it: ``keys`` (nested blocks such as
    ``optim`` may be partial) and every other key at its schema default. The one way tests build a
    training dict by hand, so that a new trainer option needs no edit to them."""
    import copy

    from kdflow.config import _validator, effective_schema

    schema = effective_schema()
    training = copy.deepcopy(keys)
    _validator({"$defs": schema["$defs"], "$ref": "#/$defs/training"}).validate(training)
    return training


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    return write_config(REPO / "tests" / "data" / "tiny_config.yaml", tmp_path)


def network_with_bn_statistics(arch: str):
    """A seeded random kdflow Network (eval mode) whose BatchNorm layers hold non-trivial running
    statistics and affine parameters, so a conversion that drops, resets or misplaces a BN tensor
    shows in the outputs."""
    import torch
    from torch import nn

    from kdflow.models.network import Network

    torch.manual_seed(0)
    net = Network(arch, num_classes=10)
    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return net.eval()


def save_student(path, arch: str, sd: dict, input_spec: dict | None = None) -> str:
    """``sd`` written as a kdflow student file of ``arch`` (timm names, input spec in the metadata)."""
    from kdflow.models.checkpoints import save_weights
    from kdflow.models.network import InputSpec

    metadata = {"kind": "student", "arch": arch, "naming": "timm", "input": input_spec or InputSpec().as_dict(),
                "channel_order": "RGB", "config_hash": "0" * 64}
    save_weights(path, sd, metadata)
    return str(path)


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    """``students(arch)`` -> (network with BatchNorm statistics, path of its student.safetensors),
    made once per arch and module."""
    made = {}

    def get(arch: str):
        if arch not in made:
            net = network_with_bn_statistics(arch)
            path = tmp_path_factory.mktemp(arch) / "student.safetensors"
            made[arch] = net, save_student(path, arch, net.backbone_state_dict())
        return made[arch]

    return get


def stop_with_sigterm(cmd: list[str], env: dict, log: Path, ready, timeout: float = 300) -> str:
    """Start the job ``cmd`` with its output in ``log``, send it SIGTERM once ``ready(log text)`` is
    true, and return the log after it exited (non-zero: it stopped rather than finished)."""
    import signal
    import subprocess
    import time

    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while not ready(log.read_text()) and time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=timeout) != 0, log.read_text()[-3000:]
    return log.read_text()


class PicklePayload:
    """Unpickling this creates the file ``marker``: what a malicious pickle could do instead (the
    tests check that kdflow refuses such files without running their payload)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mknod, (self.marker,))
