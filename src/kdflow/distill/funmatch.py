"""FunMatch: function matching by a patient and consistent teacher (Beyer et al., CVPR 2022;
methods.md 4.1, the big_vision recipe).

Every step, teacher and student see the *identical* input: an inception crop (5-100 % of the image
area, aspect ratio 3/4-4/3) at the run's ``training.augment.size``, flipped at random, then mixed
with its batch neighbour,

    c   = max(u, 1 - u),  u ~ U(0, 1)        # one coefficient per step, >= 0.5 (Dirichlet(1, 1), sorted)
    x~i = c * x_i + (1 - c) * x_{i-1}        # the batch rolled by one (image 0 mixes with the last)
    L   = T^2 * (1/B) * sum_b KL( softmax(z_t,b / T) || softmax(z_s,b / T) )

with no labels (they only evaluate the student's head, which has the teacher's classes). The
crop and flip are the method's own, the recipe's: the run's ``training.augment`` gives the size
only (its scale, colour jitter and lighting are KDEP's and do not apply).

``teacher_view: independent`` is the paper's consistency ablation ("independent noise"): the
teacher sees its own crop and flip of each image, drawn independently of the student's; mixup,
when on, mixes both views with the same coefficient and partners, so only the views differ.

Under DDP the coefficient is drawn from torch's global generator, which the trainer seeds alike on
every rank at every pass (and restores mid-pass on resume), so it is shared by all ranks; each
rank's partners come from its own shard of the global batch (image i of a rank's shard mixes with
image i-1 of the same shard), as big_vision mixes within each device's batch.
"""

from __future__ import annotations

import torch

from kdflow.data.imagefolder import ManifestDataset
from kdflow.data.transforms import train_transform
from kdflow.distill.base import ManifestBatches, Method, register_method
from kdflow.distill.kd import hinton_kl, teacher_classes

# The run's `funmatch:` block.
DECLARATION = {
    "name": "funmatch",
    "student": "trained",
    "teacher": "logits",
    "head": True,
    "options": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "properties": {
            "temperature": {"x-role": "identity", "type": "number", "exclusiveMinimum": 0, "default": 1.0,
                            "description": "T of both softmaxes (big_vision ImageNet: 1)"},
            "crop_scale": {
                "x-role": "identity", "type": "array", "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "minItems": 2, "maxItems": 2, "default": [0.05, 1.0],
                "description": "inception crop's range of image area"},
            "mixup": {"x-role": "identity", "type": "boolean", "default": True,
                      "description": "false: consistent teaching without mixup"},
            "teacher_view": {"x-role": "identity", "enum": ["same", "independent"], "default": "same",
                             "description": "independent: the consistency ablation (the teacher's own crop)"},
        },
    },
}


def mix_with_neighbour(images: torch.Tensor, coefficient: float) -> torch.Tensor:
    """``c * x_i + (1 - c) * x_{i-1}`` for every i (image 0 with the last)."""
    return coefficient * images + (1 - coefficient) * images.roll(1, dims=0)


def draw_coefficient() -> float:
    """One mixup coefficient >= 0.5 from torch's global generator (see the module doc for DDP)."""
    u = float(torch.rand(()))
    return max(u, 1.0 - u)


def recipe_view(size: int, crop_scale) -> dict:
    """The augment block of FunMatch's view: inception crop and flip, nothing else."""
    return {"size": size, "scale": list(crop_scale), "hflip": True, "color_jitter": 0.0, "lighting": 0.0}


class TwoViews(torch.utils.data.Dataset):
    """``{"image", "teacher_image", "label"}``: two independent draws of the view of one decode."""

    def __init__(self, images: ManifestDataset, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def path(self, i: int) -> str:
        return self.images.path(i)

    def __getitem__(self, i: int) -> dict:
        image = self.images.load(i)
        return {"image": self.transform(image), "teacher_image": self.transform(image),
                "label": self.images.manifest.samples[i].index}


@register_method(DECLARATION)
class FunMatch(Method):
    def __init__(self, context):
        super().__init__(context)
        opts = context.options
        self.temperature, self.mixup = opts["temperature"], opts["mixup"]
        self.independent = opts["teacher_view"] == "independent"
        self.transform = train_transform(recipe_view(context.training["augment"]["size"], opts["crop_scale"]))
        teacher_classes(context.teacher, self.name)

    @classmethod
    def head_classes(cls, data, artefacts, teacher, options) -> int:
        return teacher_classes(teacher, cls.name)

    def loader(self, pass_index: int):
        if self.independent:
            dataset = TwoViews(ManifestDataset(self.ctx.data), self.transform)
        else:
            dataset = ManifestDataset(self.ctx.data, self.transform)
        return ManifestBatches(self.ctx, dataset, pass_index)

    def prepare(self, batch: dict) -> dict:
        """The student's input ``image`` and the teacher's ``teacher_image`` (the same tensor
        unless the views are independent), mixed with one coefficient per step."""
        batch = super().prepare(batch)
        student, teacher = batch["image"], batch.get("teacher_image", batch["image"])
        if self.mixup:
            c = draw_coefficient()
            student = mix_with_neighbour(student, c)
            teacher = student if teacher is batch["image"] else mix_with_neighbour(teacher, c)
            batch["mix_coefficient"] = c
        return {**batch, "image": student, "teacher_image": teacher}

    def loss(self, student, batch):
        with torch.no_grad():
            teacher_logits = self.ctx.teacher(batch["teacher_image"], output="logits")
        logits = student(batch["image"], output="logits")
        kl = hinton_kl(logits, teacher_logits, self.temperature)
        with torch.no_grad():
            agree = (logits.argmax(1) == teacher_logits.argmax(1)).float().mean()
        return kl, {"kl": kl.detach(), "teacher_agree": agree * 100}
