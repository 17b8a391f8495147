"""KDEP: feature distillation with SVD dimension alignment and power temperature scaling.

For a teacher feature x (pooled pre-ReLU last stage, width D) and a student of width d <= D:

    z = (x - mu)^T V[:, :d]                       # top-d principal coordinates, no whitening
    t = sign(z) * |z / tau|^(1 / p)               # PTS, elementwise (KDEP: tau = 0.1, p = 3)
    L = w * mean_{b, j} (s_bj - t_bj)^2           # MSE against the student's pooled pre-ReLU s

Teacher and student see the same augmented tensor; the teacher is frozen and in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kdflow.distill.base import Method, register_method
from kdflow.distill.svd import SVDError, load_svd

# The run's `kdep:` block: KDEP's defaults (tau 0.1, power 3, loss weight 3).
DECLARATION = {
    "name": "kdep",
    "student": "trained",
    "teacher": "features",
    "artefacts": ["svd"],
    "options": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "properties": {
            "tau": {"x-role": "identity", "type": "number", "exclusiveMinimum": 0, "default": 0.1},
            "power": {"x-role": "identity", "type": "number", "exclusiveMinimum": 0, "default": 3},
            "loss_weight": {"x-role": "identity", "type": "number", "exclusiveMinimum": 0, "default": 3.0},
            "svd_subset": {"x-role": "identity", "type": "string",
                           "description": "subset the SVD is computed on (default: the run's data)"},
        },
    },
}


def power_temperature_scaling(z: torch.Tensor, tau: float, power: float) -> torch.Tensor:
    return torch.sign(z) * (z.abs() / tau).pow(1.0 / power)


class SVDAlignment(nn.Module):
    """Fixed (non-trainable) projection of teacher features onto the top-d principal directions."""

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("basis", basis.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) @ self.basis


def kdep_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, align: SVDAlignment,
              tau: float, power: float, weight: float) -> torch.Tensor:
    target = power_temperature_scaling(align(teacher_feat), tau, power)
    return weight * F.mse_loss(student_feat.float(), target)


@register_method(DECLARATION)
class KDEP(Method):
    def __init__(self, context):
        super().__init__(context)
        if context.teacher is None:
            raise ValueError("KDEP needs a teacher")
        opts = context.options
        self.tau, self.power, self.weight = opts["tau"], opts["power"], opts["loss_weight"]
        svd = load_svd(context.artefacts["svd"])
        if svd.dim != context.teacher.num_features:
            raise SVDError(f"{svd.source}: an SVD of {svd.dim}-dimensional features, but the teacher gives "
                           f"{context.teacher.num_features}: it was made for another teacher; delete it to re-make it")
        mean, basis = svd.projection(context.artefacts["student_width"])
        self.align = SVDAlignment(mean, basis).to(context.device)

    def loss(self, student, batch):
        images = batch["image"]
        with torch.no_grad():
            teacher_feat = self.ctx.teacher(images, output="features")
        student_feat = student(images, output="features")
        loss = kdep_loss(student_feat, teacher_feat, self.align, self.tau, self.power, self.weight)
        return loss, {"feat_mse": loss.detach() / self.weight}
