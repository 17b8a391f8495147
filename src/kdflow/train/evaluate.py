"""Top-1 evaluation over a manifest (deterministic order, eval transform)."""

from __future__ import annotations

import torch

from kdflow.data.imagefolder import Manifest, ManifestDataset
from kdflow.data.transforms import eval_transform


@torch.no_grad()
def top1(model, manifest: Manifest, eval_spec: dict, device: torch.device, batch_size: int = 256,
         workers: int = 0) -> float:
    """Top-1 accuracy in percent of ``model`` (a ``Network``) on every image of ``manifest``."""
    loader = torch.utils.data.DataLoader(
        ManifestDataset(manifest, eval_transform(eval_spec)), batch_size=batch_size, shuffle=False,
        num_workers=workers)
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels in loader:
        logits = model(images.to(device), output="logits")
        correct += int((logits.argmax(1).cpu() == labels).sum())
        total += int(labels.numel())
    model.train(was_training)
    return 100.0 * correct / max(total, 1)


def val_top1(manifest: Manifest, training: dict, device: torch.device):
    """The trainer's ``evaluate`` callback: ``{"val_top1": ...}`` with the run's eval transform."""

    def evaluate(model) -> dict:
        return {"val_top1": round(top1(model, manifest, training["eval"], device, workers=training["workers"]), 4)}

    return evaluate
