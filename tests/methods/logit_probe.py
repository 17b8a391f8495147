"""A test-only method, plugged in through the config's ``method_modules`` (tests/test_workflow.py):
the student's pooled feature goes through a method-owned linear probe to the teacher's classes and
is trained with Hinton's KL against the teacher's logits. It proves that a method which reads a
teacher's logits and owns a trainable module runs through the whole workflow without any change
outside this file and its test."""

import torch
from torch import nn
from torch.nn import functional as F

from kdflow.distill.base import Method, register_method

DECLARATION = {
    "name": "logit_probe",
    "student": "trained",
    "teacher": "logits",
    "options": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "properties": {"temperature": {"x-role": "identity", "type": "number", "exclusiveMinimum": 0,
                                       "default": 2.0}},
    },
}


@register_method(DECLARATION)
class LogitProbe(Method):
    def __init__(self, context):
        super().__init__(context)
        classes = context.teacher.net.num_classes
        self.probe = nn.Linear(context.artefacts["student_width"], classes).to(context.device)
        self.temperature = context.options["temperature"]

    def trainable_modules(self):
        return {"probe": self.probe}

    def loss(self, student, batch):
        images, t = batch["image"], self.temperature
        with torch.no_grad():
            target = F.softmax(self.ctx.teacher(images, output="logits").float() / t, dim=1)
        logits = self.probe(student(images, output="features").float())
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), target, reduction="batchmean") * t * t
        return kl, {"kl": kl.detach()}
