"""FKD: training by replaying pre-generated multi-crop soft labels (methods.md 2.4).

Per visit of an image, ``crops_per_visit`` (default 4) of its stored crops are drawn without
replacement; the image is decoded once and all of them are cut from that decode, resized to the
student's input size, flipped as stored, and trained against the recovered teacher distribution
with soft cross-entropy. No teacher runs during training.

Epoch accounting follows FKD: a pass that shows every image ``n`` crops counts as ``n`` epochs and
takes as many optimizer steps as ``n`` plain epochs (a step holds ``batch_size`` crops from
``batch_size / n`` images), and the last ``single_crop_epochs`` epochs are plain single-crop
passes. 300 epochs with 4 crops: 74 four-crop passes + 4 single-crop passes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from kdflow.data.imagefolder import ManifestDataset
from kdflow.data.multicrop import cut_crops, to_unit_float
from kdflow.distill.base import ManifestBatches, Method, register_method
from kdflow.distill.softlabels import LABEL_FIELDS, SoftLabelStore, record_tensors

# The run's `fkd:` block.
DECLARATION = {
    "name": "fkd",
    "student": "trained",
    "artefacts": ["soft_labels"],
    "head": True,
    "options": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "properties": {
            "soft_labels": {"x-role": "identity", "type": "string", "description": "name of a soft_labels entry"},
            "crops_per_visit": {"x-role": "identity", "type": "integer", "minimum": 1, "default": 4},
            "single_crop_epochs": {
                "x-role": "identity", "type": "integer", "minimum": 0,
                "description": "final epochs run as single-crop passes (default = crops_per_visit, as FKD)"},
            "temperature": {"x-role": "identity", "type": "number", "exclusiveMinimum": 0, "default": 1.0,
                            "description": "on the student logits"},
            "size": {"x-role": "identity", "type": "integer", "minimum": 8, "default": 224,
                     "description": "student input size"},
            "interpolation": {"x-role": "identity", "$ref": "#/$defs/interpolation", "default": "bilinear"},
            "mixup": {
                "x-role": "identity",
                "type": "object",
                "additionalProperties": False,
                "default": {},
                "properties": {
                    "enabled": {"x-role": "identity", "type": "boolean", "default": False},
                    "mixup_alpha": {"x-role": "identity", "type": "number", "exclusiveMinimum": 0, "default": 0.8},
                    "cutmix_alpha": {"x-role": "identity", "type": "number", "exclusiveMinimum": 0, "default": 1.0},
                    "cutmix_prob": {"x-role": "identity", "type": "number", "minimum": 0, "maximum": 1,
                                    "default": 0.5},
                },
            },
        },
    },
}


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """-(1/B) sum_b sum_c q_bc log softmax(z_b / T)_c; T acts on the student only (the teacher's
    temperature was applied when the labels were generated)."""
    return -(target * F.log_softmax(logits.float() / temperature, dim=1)).sum(1).mean()


def fkd_passes(epochs: int, crops_per_visit: int, single_crop_epochs: int) -> list[int]:
    """Nominal epochs per data pass: multi-crop passes, then the single-crop tail."""
    multi = max(epochs - single_crop_epochs, 0) // crops_per_visit
    return [crops_per_visit] * multi + [1] * (epochs - multi * crops_per_visit)


class ReplayDataset:
    """One item per image visit: ``n`` stored crops cut from one decode, and their records."""

    def __init__(self, images: ManifestDataset, store: SoftLabelStore, crops_per_visit: int, size: int,
                 interpolation: str, seed: int, pass_index: int):
        self.images, self.store = images, store
        self.n, self.size, self.interpolation = crops_per_visit, size, interpolation
        self.seed, self.pass_index = seed, pass_index

    def __len__(self) -> int:
        return len(self.images)

    def choose(self, i: int) -> np.ndarray:
        """Which stored crops this visit replays: seeded by (seed, pass, image), so the choice
        does not depend on workers, ranks or resumption."""
        rng = np.random.default_rng([self.seed, self.pass_index, i])
        return np.sort(rng.choice(self.store.crops_per_image, size=self.n, replace=False))

    def __getitem__(self, i: int) -> dict:
        image = self.images.load(i)
        rows = self.choose(i)
        records = self.store.records(i)
        path = str(self.images.manifest.root / self.images.manifest.samples[i].path)
        plan = self.store.plan(i, image.width, image.height, records, path).take(rows)
        crops = cut_crops(image, plan, self.size, self.interpolation)
        label = self.images.manifest.samples[i].index
        labels = {k: v for k, v in record_tensors(records[rows]).items() if k in LABEL_FIELDS}
        return {"image": crops, "label": torch.full((self.n,), label, dtype=torch.long), **labels}


@register_method(DECLARATION)
class FKD(Method):
    def __init__(self, context):
        super().__init__(context)
        opts = context.options
        self.store = SoftLabelStore(context.artefacts["soft_labels"], verify=context.rank == 0)
        self.store.check_images([s.path for s in context.data.samples], "the run's data manifest")
        self.codec = self.store.codec
        self.n = opts["crops_per_visit"]
        if self.n > self.store.crops_per_image:
            raise ValueError(f"fkd.crops_per_visit = {self.n} but the soft labels hold only "
                             f"{self.store.crops_per_image} crops per image")
        tail = opts.get("single_crop_epochs")
        self.tail = self.n if tail is None else tail
        self._passes: list[int] = []
        self.temperature = opts["temperature"]
        self.mixup = opts["mixup"]

    @classmethod
    def head_classes(cls, data, artefacts, teacher, options) -> int:
        return SoftLabelStore(artefacts["soft_labels"], verify=False).codec.num_classes

    def passes(self, epochs: int) -> list[int]:
        self._passes = fkd_passes(epochs, self.n, self.tail)
        return self._passes

    def loader(self, pass_index: int):
        n = self._passes[pass_index]
        batch = self.ctx.training["batch_size"]
        if batch % n:
            raise ValueError(f"training.batch_size {batch} (crops per step) is not divisible by "
                             f"fkd.crops_per_visit {n}")
        opts = self.ctx.options
        dataset = ReplayDataset(ManifestDataset(self.ctx.data), self.store, n, opts["size"], opts["interpolation"],
                                self.ctx.seed, pass_index)
        return ManifestBatches(self.ctx, dataset, pass_index, batch_size=batch // n)

    def prepare(self, batch: dict) -> dict:
        """(images, crops, ...) -> (images * crops, ...) on the device; soft targets recovered there."""
        device = self.ctx.device
        flat = {k: v.flatten(0, 1).to(device, non_blocking=True) for k, v in batch.items()}
        target = self.codec.decode({k: flat.pop(k) for k in LABEL_FIELDS if k in flat})
        out = {"image": to_unit_float(flat["image"]), "label": flat["label"], "target": target}
        if self.mixup["enabled"]:
            out = mix_batch(out, self.mixup)
        return out

    def loss(self, student, batch):
        logits = student(batch["image"], output="logits")
        loss = soft_cross_entropy(logits, batch["target"], self.temperature)
        with torch.no_grad():
            agree = (logits.argmax(1) == batch["target"].argmax(1)).float().mean()
        return loss, {"soft_ce": loss.detach(), "teacher_agree": agree * 100}


def mix_batch(batch: dict, opts: dict) -> dict:
    """FKD's optional mixup/CutMix on crops and their soft labels (one lambda per step, partner =
    the reversed batch). Draws from torch's global RNG, which the trainer re-seeds every pass."""
    images, target = batch["image"], batch["target"]
    if torch.rand(()) < opts["cutmix_prob"]:
        lam = float(torch.distributions.Beta(opts["cutmix_alpha"], opts["cutmix_alpha"]).sample())
        h, w = images.shape[-2:]
        cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        images = images.clone()
        images[..., y0:y1, x0:x1] = images.flip(0)[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually kept
    else:
        lam = float(torch.distributions.Beta(opts["mixup_alpha"], opts["mixup_alpha"]).sample())
        images = lam * images + (1 - lam) * images.flip(0)
    return {**batch, "image": images, "target": lam * target + (1 - lam) * target.flip(0)}
