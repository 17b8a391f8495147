"""Replaying a multi-crop store of teacher outputs: what FKD (soft labels) and teacher-free KDEP
(teacher features) share.

Per visit of an image, ``crops_per_visit`` of its stored crops are drawn without replacement;
the image is decoded once and all of them are cut from that decode, resized to the student's
input size and flipped as stored. A pass that shows every image ``n`` crops counts as ``n``
epochs and takes as many optimizer steps as ``n`` plain epochs (a step holds ``batch_size``
crops from ``batch_size / n`` images); the last ``single_crop_epochs`` epochs are single-crop
passes (FKD: 300 epochs with 4 crops = 74 four-crop passes + 4 single-crop passes).
"""

from __future__ import annotations

import numpy as np
import torch

from kdflow.data.imagefolder import ManifestDataset
from kdflow.data.multicrop import Photometric, cut_crops, to_unit_float
from kdflow.distill.base import ManifestBatches, Method, MethodContext
from kdflow.distill.softlabels import SoftLabelStore, record_tensors


def replay_passes(epochs: int, crops_per_visit: int, single_crop_epochs: int) -> list[int]:
    """Nominal epochs per data pass: multi-crop passes, then the single-crop tail."""
    multi = max(epochs - single_crop_epochs, 0) // crops_per_visit
    return [crops_per_visit] * multi + [1] * (epochs - multi * crops_per_visit)


class ReplayDataset:
    """One item per image visit: ``n`` stored crops cut from one decode, and their records (the
    store codec's fields: soft-label indices and sums, or a feature vector)."""

    def __init__(self, images: ManifestDataset, store: SoftLabelStore, crops_per_visit: int, size: int,
                 interpolation: str, seed: int, pass_index: int):
        self.images, self.store = images, store
        self.n, self.size, self.interpolation = crops_per_visit, size, interpolation
        self.seed, self.pass_index = seed, pass_index
        self.photometric = Photometric(**store.meta.get("photometric", {}))

    def __len__(self) -> int:
        return len(self.images)

    def choose(self, i: int) -> np.ndarray:
        """Which stored crops this visit replays: seeded by (seed, pass, image), so the choice
        does not depend on workers, ranks or resumption."""
        rng = np.random.default_rng([self.seed, self.pass_index, i])
        return np.sort(rng.choice(self.store.crops_per_image, size=self.n, replace=False))

    def path(self, i: int) -> str:
        return self.images.path(i)

    def __getitem__(self, i: int) -> dict:
        image = self.images.load(i)
        rows = self.choose(i)
        records = self.store.records(i)
        plan = self.store.plan(i, image.width, image.height, records, self.path(i)).take(rows)
        crops = cut_crops(image, plan, self.size, self.interpolation)
        label = self.images.manifest.samples[i].index
        stored = {k: v for k, v in record_tensors(records[rows]).items() if k in self.store.codec.fields}
        if self.photometric.enabled:  # the colour parameters the teacher's crops had, applied on the device
            stored["photometric"] = torch.from_numpy(
                self.photometric.params(int(self.store.seeds[i]), self.store.crops_per_image)[rows])
        return {"image": crops, "label": torch.full((self.n,), label, dtype=torch.long), **stored}


class Replay:
    """A method's replay plan: passes, their loaders, and the flattening of a batch of visits.

    ``option`` names the method's option block in messages (``fkd``, ``kdep_replay``).
    """

    def __init__(self, ctx: MethodContext, store: SoftLabelStore, option: str):
        opts = ctx.options
        self.ctx, self.store, self.option = ctx, store, option
        self.n = opts["crops_per_visit"]
        if self.n > store.crops_per_image:
            raise ValueError(f"{option}.crops_per_visit = {self.n} but {store.folder} holds only "
                             f"{store.crops_per_image} crops per image")
        tail = opts.get("single_crop_epochs")
        self.tail = self.n if tail is None else tail
        self._passes: list[int] = []
        self.photometric = Photometric(**store.meta.get("photometric", {}))

    def passes(self, epochs: int) -> list[int]:
        self._passes = replay_passes(epochs, self.n, self.tail)
        return self._passes

    def loader(self, pass_index: int) -> ManifestBatches:
        n = self._passes[pass_index]
        batch = self.ctx.training["batch_size"]
        if batch % n:
            raise ValueError(f"training.batch_size {batch} (crops per step) is not divisible by "
                             f"{self.option}.crops_per_visit {n}")
        opts = self.ctx.options
        dataset = ReplayDataset(ManifestDataset(self.ctx.data), self.store, n, opts["size"], opts["interpolation"],
                                self.ctx.seed, pass_index)
        return ManifestBatches(self.ctx, dataset, pass_index, batch_size=batch // n)

    def flatten(self, batch: dict) -> dict:
        """(images, crops, ...) -> (images * crops, ...) on the device; uint8 crops -> [0, 1],
        with the stored crops' colour augmentation where the store has one."""
        flat = {k: v.flatten(0, 1).to(self.ctx.device, non_blocking=True) for k, v in batch.items()}
        flat["image"] = to_unit_float(flat["image"])
        if "photometric" in flat:
            flat["image"] = self.photometric.apply(flat["image"], flat.pop("photometric"))
        return flat


class ReplayingMethod(Method):
    """A method trained from a store: its passes and loaders are its ``Replay``'s (set ``self.replay``)."""

    replay: Replay

    def passes(self, epochs: int) -> list[int]:
        return self.replay.passes(epochs)

    def loader(self, pass_index: int) -> ManifestBatches:
        return self.replay.loader(pass_index)
