"""Plain supervised training with labels (the ``supervised`` pre-training baseline, and the
fine-tuning step of classification transfer)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from kdflow.distill.base import Method, register_method

DECLARATION = {"name": "supervised", "student": "trained", "head": True}


@register_method(DECLARATION)
class Supervised(Method):
    @classmethod
    def head_classes(cls, data, artefacts, teacher, options) -> int:
        return data.num_classes

    def loss(self, student, batch):
        logits = student(batch["image"], output="logits")
        loss = F.cross_entropy(logits, batch["label"])
        with torch.no_grad():
            acc = (logits.argmax(1) == batch["label"]).float().mean()
        return loss, {"ce": loss.detach(), "train_top1": acc * 100}
