"""``imported``: a student pre-trained elsewhere (e.g. KDEP's released ResNet-18 / MobileNetV2 in
robustness format, a timm or torchvision file), converted strictly from the run's ``checkpoint:``
and then used like a student kdflow trained (kdflow.jobs.pretrain.import_student)."""

DECLARATION = {"name": "imported", "student": "checkpoint"}
