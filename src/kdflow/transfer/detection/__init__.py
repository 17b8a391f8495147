"""Detection transfer: Faster R-CNN fine-tuning of a pre-trained student, by one of two engines.

- ``torchvision`` (kdflow.transfer.detection.torchvision_engine, the built-in default): Faster
  R-CNN + FPN over the student's own timm backbone, trained by kdflow's generic trainer and
  evaluated with pycocotools (kdflow.transfer.detection.evaluation). Runs everywhere.
- ``detectron2`` (kdflow.transfer.detection.detectron2_engine, KDEP's engine, where detectron2 is
  built from source): detectron2's Faster R-CNN (FPN, or KDEP's R-C4), data path, trainer and
  checkpointer, from the student's detectron2 export (kdflow.export.detectron2), with kdflow's own
  backbone for non-ResNet students (kdflow.transfer.detection.detectron2_backbone). Where
  detectron2 is not importable its jobs fail at once with build instructions; kdflow never runs a
  protocol with another engine than the one it names.

The job around an engine (provenance, metrics.json) is kdflow.jobs.transfer.
"""

ENGINES = ("torchvision", "detectron2")
