"""VkD: feature distillation through an orthogonal projection (Miles et al., CVPR 2024; methods.md 3).

For the student's pooled feature s (width d_s) and the teacher's pooled feature t (width d_t):

    P      = a bias-free Linear(d_s -> d_t), kept orthogonal by
             torch.nn.utils.parametrizations.orthogonal (PyTorch's default map)
    LN(t)  = (t - mean_j t_j) / sqrt(var_j t_j + 1e-5)     # the teacher side only, no affine
    L_feat = SmoothL1_{beta=1}(P s, LN(t))                   # mean over batch and d_t
    L      = feat_weight * L_feat + label_weight * CE(z_s, y) + kd_weight * T^2 KL(z_t || z_s)

P's weight W is d_t x d_s. For d_s <= d_t (the usual case, DeiT-Ti 192 -> RegNetY-160 3024) its
columns are orthonormal, W^T W = I: the student's feature space is embedded isometrically in the
teacher's. A student wider than its teacher is supported too: then W's rows are orthonormal,
W W^T = I, and P is an orthogonal projection onto a d_t-dimensional subspace of the student's.

P is a method-owned trainable module: optimised with the student, kept identical on every rank
under DDP and saved in the resumable state by the trainer, never exported with the student.

Features are kdflow's pooled features (kdflow.models.network): a CNN's pooled last stage (before
its final activation, as KDEP), a ViT/DeiT's mean of patch tokens (as VkD with DeiT). The recipe's
CE and logit-KD terms (label_weight = kd_weight = 1, T = 1) are available; both default to 0, and
then the student is feature-only (no head). The recipe's DeiT-III augmentation and mixup/CutMix
are not part of this method: the run's ``training.augment`` applies.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import orthogonal

from kdflow.distill.base import Method, register_method
from kdflow.distill.kd import check_label_space, hinton_kl, teacher_classes

# The run's `vkd:` block.
DECLARATION = {
    "name": "vkd",
    "student": "trained",
    "teacher": "features",
    "head": True,
    "options": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "properties": {
            "feat_weight": {"x-role": "identity", "type": "number", "exclusiveMinimum": 0, "default": 1.0,
                            "description": "alpha: weight of the Smooth-L1 feature term"},
            "label_weight": {"x-role": "identity", "type": "number", "minimum": 0, "default": 0.0,
                             "description": "weight of cross-entropy with the labels (the recipe: 1)"},
            "kd_weight": {"x-role": "identity", "type": "number", "minimum": 0, "default": 0.0,
                          "description": "gamma: weight of the logit KL term (the recipe: 1)"},
            "temperature": {"x-role": "identity", "type": "number", "exclusiveMinimum": 0, "default": 1.0,
                            "description": "T of the logit KL term"},
            "orthogonal_map": {
                "x-role": "identity", "enum": [None, "matrix_exp", "cayley", "householder"], "default": None,
                "description": "the parametrisation's map; null: PyTorch's default, as VkD (matrix_exp for a "
                               "square W, householder otherwise)"},
        },
    },
}

LN_EPS = 1e-5


def orthogonal_projection(in_features: int, out_features: int, orthogonal_map: str | None = None) -> nn.Linear:
    """A bias-free Linear(in -> out) whose weight stays orthogonal (orthonormal columns when
    in <= out, rows otherwise), initialised from the Linear's random init (the generator's state).
    Every map keeps W orthogonal; they differ in cost: for a 512 x 512 W on one CPU core a
    forward+backward took 0.85 s with matrix_exp, 0.44 s householder, 0.06 s cayley."""
    return orthogonal(nn.Linear(in_features, out_features, bias=False), orthogonal_map=orthogonal_map)


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Standardisation along the feature dimension, without affine parameters (VkD's LayerNorm
    on the teacher side)."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=LN_EPS)


def vkd_feature_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, projection: nn.Module) -> torch.Tensor:
    """Smooth-L1 (beta 1, mean) between the projected student feature and the standardised teacher's,
    in float32 (under autocast the projection would otherwise run in bf16)."""
    with torch.autocast(student_feat.device.type, enabled=False):
        return F.smooth_l1_loss(projection(student_feat.float()), standardise(teacher_feat), beta=1.0)


@register_method(DECLARATION)
class VkD(Method):
    def __init__(self, context):
        super().__init__(context)
        if context.teacher is None:
            raise ValueError("VkD needs a teacher")
        opts = context.options
        self.feat_weight, self.label_weight = opts["feat_weight"], opts["label_weight"]
        self.kd_weight, self.temperature = opts["kd_weight"], opts["temperature"]
        if self.label_weight > 0:
            check_label_space(context.data, self.head_classes(context.data, context.artefacts, context.teacher, opts),
                              self.name)
        width = context.artefacts["student_width"]
        self.projection = orthogonal_projection(width, context.teacher.num_features,
                                                opts["orthogonal_map"]).to(context.device)

    @classmethod
    def head_classes(cls, data, artefacts, teacher, options) -> int:
        """The teacher's classes when a logit term is on (KL needs them; CE then needs the data in
        them), else no head: a feature-only student, as KDEP's."""
        if options["kd_weight"] > 0:
            return teacher_classes(teacher, cls.name)
        return data.num_classes if options["label_weight"] > 0 else 0

    def trainable_modules(self):
        return {"projection": self.projection}

    def loss(self, student, batch):
        images = batch["image"]
        uses_logits = self.kd_weight > 0 or self.label_weight > 0
        with torch.no_grad():
            if self.kd_weight > 0:
                teacher_logits, teacher_feat = self.ctx.teacher(images, output="both")
            else:
                teacher_feat = self.ctx.teacher(images, output="features")
        if uses_logits:
            logits, student_feat = student(images, output="both")
        else:
            student_feat = student(images, output="features")
        feat = vkd_feature_loss(student_feat, teacher_feat, self.projection)
        loss, logs = self.feat_weight * feat, {"smooth_l1": feat.detach()}
        if self.label_weight > 0:
            ce = F.cross_entropy(logits.float(), batch["label"])
            loss, logs["ce"] = loss + self.label_weight * ce, ce.detach()
        if self.kd_weight > 0:
            kl = hinton_kl(logits, teacher_logits, self.temperature)
            loss, logs["kl"] = loss + self.kd_weight * kl, kl.detach()
        return loss, logs
