"""The method interface: what the generic trainer calls, without asking which method it runs.

A method may
  (a) own sampling, batching and epoch accounting: ``passes`` says how many nominal epochs each
      data pass counts for (FKD replays several stored crops per image visit, so one pass counts
      as several epochs) and ``loader`` yields the batches of a pass;
  (b) transform the input before teacher and student see it: ``prepare`` (FunMatch's mixup);
  (c) own trainable modules (VkD's projection): ``trainable_modules`` are optimised and saved in
      the resumable state, but never exported with the student;
  (d) read teacher logits or features through ``context.teacher`` (a frozen ``Network``);
  (e) compute the loss: ``loss(student, batch) -> (loss, {name: value})``.

Adding a method = one module with a ``DECLARATION`` (kdflow.distill.registry: what it needs, its
option block's schema) and a ``Method`` subclass decorated with ``@register_method(DECLARATION)``,
plus tests of its math. Config validation, the Snakefile and the pretrain job read the declaration.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from kdflow.data.imagefolder import Manifest, ManifestDataset
from kdflow.data.transforms import train_transform
from kdflow.distill.registry import declarations

METHODS: dict[str, type["Method"]] = {}


def register_method(declaration: dict | str):
    """Class decorator: the ``Method`` that trains the method its module's ``DECLARATION`` names
    (a bare name registers an in-process method without a declaration, e.g. in a test)."""
    declaration = {"name": declaration} if isinstance(declaration, str) else declaration
    name = declaration["name"]

    def decorate(cls: type["Method"]) -> type["Method"]:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method {name!r} registered twice ({METHODS[name].__name__}, {cls.__name__})")
        cls.name = name
        cls.declaration = declaration
        METHODS[name] = cls
        return cls

    return decorate


def get_method(name: str, module: str | Path | None = None) -> type["Method"]:
    """The registered ``Method`` of ``name``; its module is imported first: ``module`` (a file
    listed under the config's ``method_modules``) or the built-in module declaring ``name``."""
    if name not in METHODS:
        if module is not None:
            _import_file(Path(module))
        else:
            decl = declarations().get(name)
            if decl is not None and decl.trains:
                importlib.import_module(f"kdflow.distill.{Path(decl.module).stem}")
    if name not in METHODS:
        raise KeyError(f"no trainable method {name!r} is registered (known: {', '.join(sorted(METHODS)) or 'none'})")
    return METHODS[name]


def _import_file(path: Path) -> None:
    spec = importlib.util.spec_from_file_location(f"kdflow_method_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import method module {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


@dataclass
class MethodContext:
    """Everything a method may need; built by the pre-training/transfer entry points."""

    data: Manifest
    training: dict
    device: torch.device
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    teacher: nn.Module | None = None
    options: dict = field(default_factory=dict)  # the method's own config block
    artefacts: dict[str, Any] = field(default_factory=dict)  # e.g. {"svd": path}


def derived_seed(*keys: int) -> int:
    """A 63-bit seed determined by ``keys`` alone (a hash, not a sequence of draws)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> 1)


def pass_seed(seed: int, pass_index: int, stream: int = 0) -> int:
    """A seed for one data pass: reproducible, and independent of how a run was resumed."""
    return derived_seed(seed, pass_index, stream)


class Method:
    name: ClassVar[str] = "base"
    declaration: ClassVar[dict] = {}

    def __init__(self, context: MethodContext):
        self.ctx = context

    @classmethod
    def head_classes(cls, data: Manifest, artefacts: dict, teacher: nn.Module | None, options: dict) -> int:
        """Classes of the student's head (0: a head-less feature student, as KDEP's); called with
        the loaded teacher and the run's option block, so a method may size the head from the
        teacher, or give the student a head only when an option's loss term reads it. Only a
        method declared with ``head: True`` may return more than 0."""
        return 0

    @classmethod
    def head_class_names(cls, data: Manifest, artefacts: dict, teacher: nn.Module | None,
                         options: dict) -> list[str] | None:
        """Names of the head's classes, in index order, when they are not the run's data classes
        (FKD's 1000 ImageNet classes on a 100-class subset): the student's evaluation maps the
        data's classes onto them by name. None: the head's classes are the data's."""
        return None

    # (c) -------------------------------------------------------------------------------------
    def trainable_modules(self) -> dict[str, nn.Module]:
        return {}

    # (a) -------------------------------------------------------------------------------------
    def passes(self, epochs: int) -> list[int]:
        """Nominal epochs covered by each data pass; by default one pass per epoch."""
        return [1] * epochs

    def loader(self, pass_index: int) -> Iterable[dict]:
        """Batches of one pass: shuffled by a seed derived from (seed, pass), sharded by rank."""
        return ManifestBatches(self.ctx, ManifestDataset(self.ctx.data, train_transform(self.ctx.training["augment"])),
                               pass_index)

    # (b) -------------------------------------------------------------------------------------
    def prepare(self, batch: dict) -> dict:
        return {k: v.to(self.ctx.device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in batch.items()}

    def batch_size(self, batch: dict) -> int:
        """Samples in a prepared batch (the weight of its loss in the logged averages); a method
        whose batches are not one image tensor (detection: lists of images) says how to count."""
        return int(batch["image"].shape[0])

    # (d, e) ----------------------------------------------------------------------------------
    def loss(self, student: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


class SeededItems(torch.utils.data.Dataset):
    """Item ``i`` draws its random augmentation from its own seed (pass seed, ``i``), so an
    augmented batch is the same whatever the number of ranks or loader workers, and wherever a
    pass was resumed. The process's global generator is left as it was."""

    def __init__(self, dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also (lazily) reseed every CUDA
            # device, which fork_rng(devices=[]) does not restore, and queueing that costs ~3 ms
            torch.random.default_generator.manual_seed(derived_seed(self.seed, i))
            return self.dataset[i]


class ManifestBatches:
    """A sized iterable of batches for one pass over a manifest dataset: ``{"image", "label"}``
    from ``(image, label)`` items, or the collated dict of dict items.

    The order is a permutation seeded by ``(seed, pass)``; each rank takes every
    ``world_size``-th index, and the per-rank batch is the global batch divided by the world size,
    so the global batch follows the config whatever the number of processes (with per-item seeds,
    the same images with the same augmentation). ``batch_size`` (default: the training config's)
    counts dataset items, e.g. images for FKD's multi-crop items; ``collate_fn`` batches items
    that are not tensors of one shape (detection's images and targets). ``skip(n)`` starts the pass at
    step ``n`` without loading the steps before it (a resumed pass).
    """

    def __init__(self, ctx: MethodContext, dataset, pass_index: int, batch_size: int | None = None,
                 collate_fn=None):
        self.ctx = ctx
        self.collate_fn = collate_fn  # None: the DataLoader's default
        self.dataset = SeededItems(dataset, pass_seed(ctx.seed, pass_index, stream=3))
        self.pass_index = pass_index
        global_batch = batch_size or ctx.training["batch_size"]
        if global_batch % ctx.world_size:
            raise ValueError(f"a global batch of {global_batch} is not divisible by {ctx.world_size} processes")
        self.batch = global_batch // ctx.world_size
        order = np.random.default_rng(pass_seed(ctx.seed, pass_index)).permutation(len(dataset))
        usable = len(order) - len(order) % ctx.world_size
        self.indices = order[:usable][ctx.rank::ctx.world_size].tolist()
        self.drop_last = len(self.indices) > self.batch
        self.start = 0

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch if self.drop_last else -(-n // self.batch)

    def paths(self, step: int) -> list[str]:
        """The image files of this rank's batch at ``step`` (a non-finite loss names them); empty
        when the dataset does not say where its items come from."""
        path = getattr(self.dataset.dataset, "path", None)
        if path is None:
            return []
        return [path(j) for j in self.indices[step * self.batch:(step + 1) * self.batch]]

    def skip(self, steps: int) -> None:
        if not 0 <= steps <= len(self):
            raise ValueError(f"cannot start pass {self.pass_index} at step {steps} of {len(self)}")
        self.start = steps

    def __iter__(self) -> Iterator[dict]:
        generator = torch.Generator().manual_seed(pass_seed(self.ctx.seed, self.pass_index, stream=1))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.dataset, self.indices[self.start * self.batch:]),
            batch_size=self.batch,
            shuffle=False,
            drop_last=self.drop_last,
            num_workers=self.ctx.training["workers"],
            generator=generator,
            pin_memory=self.ctx.device.type == "cuda",
            collate_fn=self.collate_fn,
        )
        for item in loader:
            yield item if isinstance(item, dict) else {"image": item[0], "label": item[1]}
