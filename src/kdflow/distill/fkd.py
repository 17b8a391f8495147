"""FKD: training by replaying pre-generated multi-crop soft labels (methods.md 2.4).

Per visit of an image, ``crops_per_visit`` (default 4) of its stored crops are replayed
(kdflow.distill.replay: one decode, FKD's epoch accounting) and trained against the recovered
teacher distribution with soft cross-entropy. No teacher runs during training.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from kdflow.distill.base import register_method
from kdflow.distill.replay import Replay, ReplayingMethod
from kdflow.distill.softlabels import FEATURE_TYPES, SoftLabelError, SoftLabelStore, differences

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


@register_method(DECLARATION)
class FKD(ReplayingMethod):
    def __init__(self, context):
        super().__init__(context)
        opts = context.options
        self.store = SoftLabelStore(context.artefacts["soft_labels"], verify=context.rank == 0)
        if self.store.codec.type in FEATURE_TYPES:
            raise SoftLabelError(f"{self.store.folder} holds teacher features ({self.store.codec.type}), "
                                 "not soft labels: it is made for method kdep_replay")
        self.store.check_images([s.path for s in context.data.samples], "the run's data manifest")
        wanted = context.artefacts.get("specs", {}).get("soft_labels")
        made = self.store.meta.get("identity")
        if wanted is not None and made is not None and differences(made, wanted):
            raise SoftLabelError(f"{self.store.folder / 'store.json'} was made with another config than the run "
                                 f"asks for: {'; '.join(differences(made, wanted))}; re-make the store")
        self.codec = self.store.codec
        self.replay = Replay(context, self.store, "fkd")
        self.temperature = opts["temperature"]
        self.mixup = opts["mixup"]

    @classmethod
    def head_classes(cls, data, artefacts, teacher, options) -> int:
        return SoftLabelStore(artefacts["soft_labels"], verify=False).codec.num_classes

    @classmethod
    def head_class_names(cls, data, artefacts, teacher, options) -> list[str] | None:
        return SoftLabelStore(artefacts["soft_labels"], verify=False).meta.get("classes")

    def prepare(self, batch: dict) -> dict:
        """Visits flattened to crops on the device; soft targets recovered there."""
        flat = self.replay.flatten(batch)
        target = self.codec.decode({k: flat.pop(k) for k in self.codec.fields})
        out = {"image": flat["image"], "label": flat["label"], "target": target}
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
