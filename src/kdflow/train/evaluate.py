"""Top-1 evaluation over a manifest (deterministic order, eval transform).

Under DDP (an initialised process group of more than one rank) ``top1`` is a collective: every
rank evaluates every ``world_size``-th image of the manifest, starting at its rank, and the
correct/total counts are summed over the ranks. Each image is counted exactly once whatever the
manifest's length, and every rank returns the same accuracy, that of one process on the whole
manifest (eval mode: an image's prediction does not depend on the other images of its batch).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from kdflow.data.imagefolder import Manifest, ManifestDataset
from kdflow.data.transforms import eval_transform
from kdflow.train.distributed import initialised_world


def _shard(dataset, rank: int, world: int):
    """This rank's images: every ``world``-th from ``rank`` (an uneven split is fine: counts are summed)."""
    if world == 1:
        return dataset
    return torch.utils.data.Subset(dataset, range(rank, len(dataset), world))


def _counts_over_ranks(correct: int, total: int, device: torch.device, world: int) -> tuple[int, int]:
    if world == 1:
        return correct, total
    # on the model's device: NCCL reduces CUDA tensors only
    counts = torch.tensor([correct, total], dtype=torch.int64, device=device)
    dist.all_reduce(counts)
    return int(counts[0]), int(counts[1])


@torch.no_grad()
def top1(model, manifest: Manifest, eval_spec: dict, device: torch.device, batch_size: int = 256,
         workers: int = 0, class_map: list[int] | None = None) -> float:
    """Top-1 accuracy in percent of ``model`` (a ``Network``) on every image of ``manifest``; a
    collective under DDP (every rank must call it; see the module docstring). ``class_map[c]``:
    the logit of the manifest's class ``c`` when the head has other classes (the prediction is
    the best of the manifest's classes)."""
    columns = torch.tensor(class_map, device=device) if class_map is not None else None
    world = initialised_world()
    rank = dist.get_rank() if world > 1 else 0
    dataset = _shard(ManifestDataset(manifest, eval_transform(eval_spec)), rank, world)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels in loader:
        logits = model(images.to(device), output="logits")
        if columns is not None:
            logits = logits.index_select(1, columns)
        correct += int((logits.argmax(1).cpu() == labels).sum())
        total += int(labels.numel())
    model.train(was_training)
    correct, total = _counts_over_ranks(correct, total, device, world)
    return 100.0 * correct / max(total, 1)


def val_top1(manifest: Manifest, training: dict, device: torch.device, class_map: list[int] | None = None):
    """The trainer's ``evaluate`` callback: ``{"val_top1": ...}`` with the run's eval transform."""

    def evaluate(model) -> dict:
        return {"val_top1": round(top1(model, manifest, training["eval"], device, workers=training["workers"],
                                       class_map=class_map), 4)}

    return evaluate
