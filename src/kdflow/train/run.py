"""One call that trains a network with a named method: builds the method context and the trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

from kdflow.data.imagefolder import Manifest
from kdflow.distill.base import MethodContext, get_method
from kdflow.train import distributed
from kdflow.train.trainer import Trainer


def train(method: str, model: nn.Module, data: Manifest, training: dict, *, seed: int,
          run_dir: str | Path, state_dir: str | Path, config_hash: str, dist: distributed.DistInfo,
          teacher: nn.Module | None = None, options: dict | None = None, artefacts: dict | None = None,
          evaluate: Callable[[nn.Module], dict] | None = None, desc: str = "train") -> dict:
    ctx = MethodContext(
        data=data, training=training, device=dist.device, seed=seed, rank=dist.rank,
        world_size=dist.world_size, teacher=teacher.to(dist.device) if teacher is not None else None,
        options=options or {}, artefacts=artefacts or {},
    )
    trainer = Trainer(model, get_method(method)(ctx), training, run_dir, state_dir, config_hash,
                      evaluate=evaluate, desc=desc)
    return trainer.fit()
