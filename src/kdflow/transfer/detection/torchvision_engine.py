"""The torchvision detection engine: Faster R-CNN + FPN over the student's own timm backbone.

The backbone is the student architecture built by timm with ``features_only`` at strides 4, 8,
16 and 32 (ResNet's four stages; MobileNetV2's blocks of 24, 32, 96 and 320 channels, as KDEP's
MobileNetV2-FPN), under torchvision's FeaturePyramidNetwork with a max-pooled sixth level. It is
initialised from the pre-trained student by a strict load: every backbone tensor comes from the
student file; the only student tensors left out are those of layers a feature pyramid does not
read (MobileNetV2's 1280-wide head conv), named in the load report. A scratch run starts from
timm's random init under the job's seed.

Training is kdflow's generic trainer (kdflow.train.trainer) with a fine-tuning "method" whose
loss is the sum of Faster R-CNN's four losses: SGD, the protocol's warm-up and step schedule,
multi-scale short-side training (one size per step, drawn from the protocol's ``train_sizes``
with the trainer's seeded generator), horizontal flips seeded per image, resumable mid-epoch on a
stop signal, DDP across processes. BatchNorm is trained (``norm: bn``) or synchronised across the
job's GPUs (``sync_bn``) in every run of a protocol, scratch included; never frozen, which would
freeze a scratch backbone's random statistics.

The test split is evaluated every ``eval_every`` epochs and at the end with pycocotools (and VOC
2007's 11-point AP for a VOC dataset): each rank detects on its share of the images and every rank
scores the gathered detections, so every rank's log rows agree.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdflow.data.detection import CROWD, DetManifest, to_coco
from kdflow.distill.base import ManifestBatches, Method, register_method
from kdflow.models.checkpoints import load_strict
from kdflow.train import distributed
from kdflow.train.run import train
from kdflow.transfer.detection.evaluation import coco_metrics, voc07_metrics
from kdflow.transfer.detection.features import feature_body, feature_layout, unused_student_keys

METHOD = "detection_finetune"


# ----------------------------------------------------------------------------------- model
class StudentFPN(nn.Module):
    """The student's feature maps at strides 4-32 under a feature pyramid (torchvision's FPN with a
    max-pooled extra level): ``out_channels`` maps at strides 4-64, as FasterRCNN reads them."""

    def __init__(self, arch: str, out_channels: int):
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        super().__init__()
        self.body = feature_body(arch)
        channels = feature_layout(arch)[1]
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def _faster_rcnn_class():
    from torchvision.models.detection import FasterRCNN

    class StudentFasterRCNN(FasterRCNN):
        """FasterRCNN taking RGB images in [0, 1] (flipped to BGR for a BGR student before
        torchvision normalises them), resized to one of ``train_sizes`` (short side) in training
        and to ``test_size`` in evaluation."""

        def __init__(self, backbone, num_classes, *, bgr: bool, train_sizes, test_size, **kwargs):
            super().__init__(backbone, num_classes, min_size=tuple(train_sizes), **kwargs)
            self.bgr = bgr
            self.train_sizes, self.test_size = tuple(train_sizes), int(test_size)

        def forward(self, images, targets=None):
            self.transform.min_size = self.train_sizes if self.training else (self.test_size,)
            if self.bgr:
                images = [image.flip(0) for image in images]
            return super().forward(images, targets)

    return StudentFasterRCNN


def build_detector(arch: str, input_spec: dict, num_classes: int, model: dict) -> nn.Module:
    """Faster R-CNN + FPN over a fresh ``arch`` backbone (timm's init under the caller's seed), for
    ``num_classes`` object classes; ``model`` is the protocol's model block."""
    from torchvision.models.detection.faster_rcnn import TwoMLPHead, FastRCNNPredictor
    from torchvision.models.detection.rpn import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    backbone = StudentFPN(arch, model["fpn_channels"])
    anchors = AnchorGenerator(sizes=tuple((int(s),) for s in model["anchor_sizes"]),
                              aspect_ratios=((0.5, 1.0, 2.0),) * len(model["anchor_sizes"]))
    pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    width = model["roi"]["head_width"]
    head = TwoMLPHead(backbone.out_channels * 7 * 7, width)
    rpn, roi = model["rpn"], model["roi"]
    return _faster_rcnn_class()(
        backbone, None, bgr=input_spec["channel_order"] == "BGR", train_sizes=model["train_sizes"],
        test_size=model["test_size"], max_size=model["max_size"], image_mean=list(input_spec["mean"]),
        image_std=list(input_spec["std"]), rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn["pre_nms_train"], rpn_pre_nms_top_n_test=rpn["pre_nms_test"],
        rpn_post_nms_top_n_train=rpn["post_nms_train"], rpn_post_nms_top_n_test=rpn["post_nms_test"],
        rpn_batch_size_per_image=rpn["batch_per_image"], box_roi_pool=pool, box_head=head,
        box_predictor=FastRCNNPredictor(width, num_classes + 1), box_batch_size_per_image=roi["batch_per_image"],
        box_detections_per_img=roi["detections_per_image"], box_score_thresh=roi["score_thresh"])


def load_student(detector: nn.Module, arch: str, state_dict: dict, source: str) -> dict:
    """Every backbone tensor from the student file (strict); the report names what was left out."""
    unused = unused_student_keys(arch)
    report = load_strict(detector.backbone.body, state_dict, source=source, allow_unexpected=unused)
    return {**report, "into": "backbone.body", "not_read_by_the_pyramid": report["unexpected"]}


# ----------------------------------------------------------------------------------- data
class DetectionItems(torch.utils.data.Dataset):
    """``(RGB image tensor in [0, 1], target)`` per manifest image; ``flip``: probability of a
    horizontal flip (drawn from the global generator, which SeededItems seeds per item). Training
    targets hold every box but crowd regions, clipped to the image; evaluation items carry the
    image id."""

    def __init__(self, manifest: DetManifest, flip: float = 0.0, indices: list[int] | None = None):
        self.manifest = manifest
        self.flip = flip
        self.indices = list(range(len(manifest))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def path(self, i: int) -> str:
        return str(self.manifest.path(self.manifest.samples[self.indices[i]]))

    def __getitem__(self, i: int):
        from PIL import Image

        from kdflow.data.imagefolder import DatasetError, to_rgb

        sample = self.manifest.samples[self.indices[i]]
        path = self.manifest.path(sample)
        try:
            with Image.open(path) as img:
                rgb = np.asarray(to_rgb(img))
        except (OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(f"cannot decode image {path}: {exc}") from exc
        if rgb.shape[:2] != (sample.height, sample.width):
            raise DatasetError(f"image {path} is {rgb.shape[1]}x{rgb.shape[0]} but its annotations say "
                               f"{sample.width}x{sample.height}")
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255)
        boxes, labels = training_boxes(sample)
        if self.flip > 0 and float(torch.rand(())) < self.flip:
            image = image.flip(-1)
            boxes = torch.stack([sample.width - boxes[:, 2], boxes[:, 1], sample.width - boxes[:, 0], boxes[:, 3]], 1)
        return image, {"boxes": boxes, "labels": labels, "image_id": sample.image_id}


def training_boxes(sample) -> tuple[torch.Tensor, torch.Tensor]:
    """(x1, y1, x2, y2) boxes clipped to the image and their labels 1..K, crowd regions and boxes
    of no area left out (Faster R-CNN's targets; difficult VOC objects are kept, as in detectron2)."""
    kept = []
    for x, y, w, h, cls, flag in sample.boxes:
        x1, y1 = max(float(x), 0.0), max(float(y), 0.0)
        x2, y2 = min(float(x) + float(w), sample.width), min(float(y) + float(h), sample.height)
        if flag != CROWD and x2 > x1 and y2 > y1:
            kept.append((x1, y1, x2, y2, int(cls) + 1))
    table = torch.tensor(kept, dtype=torch.float32).reshape(-1, 5)
    return table[:, :4].contiguous(), table[:, 4].long()


def collate(items) -> dict:
    return {"images": [image for image, _ in items], "targets": [target for _, target in items]}


def trainable_indices(manifest: DetManifest) -> list[int]:
    """Images with at least one training box (as detectron2's FILTER_EMPTY_ANNOTATIONS)."""
    return [i for i, s in enumerate(manifest.samples) if len(training_boxes(s)[1])]


# ----------------------------------------------------------------------------------- training
@register_method(METHOD)
class DetectionFinetune(Method):
    """Faster R-CNN's losses on the manifest's images (the trainer's "method" for detection)."""

    def loader(self, pass_index: int):
        items = DetectionItems(self.ctx.data, flip=self.ctx.options["flip"],
                               indices=trainable_indices(self.ctx.data))
        return ManifestBatches(self.ctx, items, pass_index, collate_fn=collate)

    def prepare(self, batch: dict) -> dict:
        device = self.ctx.device
        return {"images": [image.to(device, non_blocking=True) for image in batch["images"]],
                "targets": [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
                            for t in batch["targets"]]}

    def batch_size(self, batch: dict) -> int:
        return len(batch["images"])

    def loss(self, detector, batch):
        losses = detector(batch["images"], batch["targets"])
        total = sum(losses.values())
        return total, {name: value.detach() for name, value in losses.items()}


def detect(detector: nn.Module, manifest: DetManifest, device: torch.device, batch_size: int, workers: int,
           rank: int = 0, world_size: int = 1) -> list[dict]:
    """COCO-style detections of this rank's share of the manifest (every ``world_size``-th image)."""
    items = DetectionItems(manifest, indices=list(range(rank, len(manifest), world_size)))
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate)
    detections = []
    detector.eval()
    with torch.no_grad():
        for batch in loader:
            outputs = detector([image.to(device) for image in batch["images"]])
            for target, out in zip(batch["targets"], outputs):
                boxes = out["boxes"].float().cpu()
                boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
                for box, label, score in zip(boxes.tolist(), out["labels"].tolist(), out["scores"].tolist()):
                    detections.append({"image_id": target["image_id"], "category_id": int(label),
                                       "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)})
    return detections


def evaluate(detector: nn.Module, manifest: DetManifest, device: torch.device, batch_size: int, workers: int,
             voc07: bool, dist: distributed.DistInfo) -> dict:
    """The test split's box metrics (``test_AP``, ``test_AP50``, ...); a collective under DDP."""
    detections = detect(detector, manifest, device, batch_size, workers, dist.rank, dist.world_size)
    if dist.world_size > 1:
        gathered: list = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, detections)
        detections = [d for part in gathered for d in part]
    gt = to_coco(manifest)
    metrics = coco_metrics(gt, detections, manifest.classes)
    if voc07:
        metrics.update(voc07_metrics(gt, detections))
    return {f"test_{name}": value for name, value in metrics.items()}


def finetune(detector: nn.Module, train_set: DetManifest, test_set: DetManifest, protocol: dict, *, seed: int,
             run_dir, state_dir, config_hash: str, dist: distributed.DistInfo, voc07: bool, desc: str) -> dict:
    """Train with the generic trainer; the test split is evaluated at the protocol's evaluations."""
    training = {**protocol["training"], "seed": seed,
                # SyncBN where it can run (several CUDA processes); plain trained BatchNorm elsewhere
                "sync_bn": protocol["model"]["norm"] == "sync_bn" and dist.world_size > 1
                and dist.device.type == "cuda"}
    ev = protocol["eval"]

    def evaluate_test(model):
        return evaluate(model, test_set, dist.device, ev["batch_size"], training["workers"], voc07, dist)

    return train(METHOD, detector, train_set, training, seed=seed, run_dir=run_dir, state_dir=state_dir,
                 config_hash=config_hash, dist=dist, options={"flip": protocol["augment"]["flip"]},
                 evaluate=evaluate_test, desc=desc)


def save_detector(path: str | Path, detector: nn.Module, metadata: dict) -> None:
    """The fine-tuned detector's weights (torchvision names), as safetensors with metadata."""
    from kdflow.models.checkpoints import save_weights

    save_weights(path, detector.state_dict(), metadata)
