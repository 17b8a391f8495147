"""KD: Hinton's logit distillation from an online teacher (methods.md 1.5, 5).

Teacher and student see the same augmented tensor; the teacher is frozen and in eval mode. With
temperature T, teacher logits z_t and student logits z_s,

    L_kd = T^2 * (1/B) * sum_b KL( softmax(z_t,b / T) || softmax(z_s,b / T) )
    L    = kd_weight * L_kd + label_weight * CE(z_s, y)

The T^2 factor keeps the gradient's scale independent of T (Hinton et al. 2015). The label term is
off by default: the student learns from the teacher's signal only, as KDEP's KD baseline
(KD_a = 1, KD_c = 0, T = 4). The student's head has the teacher's classes; a label term needs the
run's data to use the teacher's class indices (e.g. an ImageNet subset for an ImageNet teacher).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kdflow.distill.base import Method, register_method

# The run's `kd:` block.
DECLARATION = {
    "name": "kd",
    "student": "trained",
    "teacher": "logits",
    "head": True,
    "options": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "properties": {
            "temperature": {"x-role": "identity", "type": "number", "exclusiveMinimum": 0, "default": 4.0,
                            "description": "T of both softmaxes (KDEP's KD term: 4)"},
            "kd_weight": {"x-role": "identity", "type": "number", "minimum": 0, "default": 1.0},
            "label_weight": {"x-role": "identity", "type": "number", "minimum": 0, "default": 0.0,
                             "description": "weight of cross-entropy with the labels (0: teacher only)"},
        },
    },
}


def hinton_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), summed over classes, averaged over the batch;
    in float32 whatever the autocast dtype (the softmax of bf16 logits loses the small classes)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def teacher_classes(teacher: nn.Module | None, method: str) -> int:
    """The teacher's classes, which size a logit-matching student's head."""
    classes = getattr(getattr(teacher, "net", None), "num_classes", 0) if teacher is not None else 0
    if not classes:
        raise ValueError(f"method {method!r} matches the teacher's logits, but the teacher has no "
                         "classification head (num_classes = 0)")
    return int(classes)


def check_label_space(data, classes: int, method: str) -> None:
    """Cross-entropy with the run's labels is only meaningful in the teacher's class space."""
    if data.num_classes != classes:
        raise ValueError(f"{method}: a label term needs the run's data in the teacher's classes, but the data "
                         f"has {data.num_classes} classes and the teacher {classes}; set its label weight to 0")


@register_method(DECLARATION)
class KD(Method):
    def __init__(self, context):
        super().__init__(context)
        opts = context.options
        self.temperature, self.kd_weight, self.label_weight = opts["temperature"], opts["kd_weight"], opts["label_weight"]
        self.classes = teacher_classes(context.teacher, self.name)
        if self.label_weight > 0:
            check_label_space(context.data, self.classes, self.name)

    @classmethod
    def head_classes(cls, data, artefacts, teacher, options) -> int:
        return teacher_classes(teacher, cls.name)

    def loss(self, student, batch):
        images = batch["image"]
        with torch.no_grad():
            teacher_logits = self.ctx.teacher(images, output="logits")
        logits = student(images, output="logits")
        kl = hinton_kl(logits, teacher_logits, self.temperature)
        loss = self.kd_weight * kl
        logs = {"kl": kl.detach()}
        if self.label_weight > 0:
            ce = F.cross_entropy(logits.float(), batch["label"])
            loss = loss + self.label_weight * ce
            logs["ce"] = ce.detach()
        with torch.no_grad():
            logs["teacher_agree"] = (logits.argmax(1) == teacher_logits.argmax(1)).float().mean() * 100
        return loss, logs
