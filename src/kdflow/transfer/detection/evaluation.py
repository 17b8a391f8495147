"""Box evaluation: COCO's AP with pycocotools, and PASCAL VOC 2007's 11-point AP.

Both read the ground truth from a kdflow detection manifest (kdflow.data.detection.to_coco) and
detections as COCO results (``image_id``, ``category_id`` 1..K, ``bbox`` [x, y, w, h], ``score``).

- COCO: AP (IoU 0.50:0.95), AP50, AP75, APs/m/l and the AP of each class, in percent; crowd and
  VOC-difficult boxes are ignore regions (``iscrowd``).
- VOC07 (as detectron2's PascalVOCDetectionEvaluator computes it): per class, detections by
  decreasing score are matched greedily to unmatched boxes of IoU > t; a match to a difficult box
  counts neither way; AP is the 11-point interpolated precision (recall 0, 0.1, ..., 1). Reported:
  ``voc07_AP50`` (VOC's metric), ``voc07_AP75`` and ``voc07_AP`` (mean over t = 0.50:0.05:0.95).
  Boxes are continuous pixel boxes here; kdflow's VOC conversion (x = xmin - 1, w = xmax - xmin +
  1) makes their IoU VOC's "+1" IoU of the inclusive pixel boxes.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_metrics(gt: dict, detections: list[dict], classes: list[str]) -> dict[str, float]:
    """COCO box metrics of ``detections`` against the COCO dict ``gt``, in percent, with
    ``AP/<class>`` per class (NaN for a class with no ground truth)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections:  # loadRes refuses an empty list; nothing detected scores 0 everywhere
        return {**{m: 0.0 for m in COCO_METRICS}, **{f"AP/{c}": 0.0 for c in classes}}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        coco_gt = COCO()
        coco_gt.dataset = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    print(printed.getvalue(), end="", flush=True)  # COCO's own summary table, into the job's log
    out = {name: _percent(v) for name, v in zip(COCO_METRICS, evaluator.stats[:6])}
    precision = evaluator.eval["precision"]  # [IoU, recall, class, area, max dets]
    for k, name in enumerate(classes):
        p = precision[:, :, k, 0, -1]
        out[f"AP/{name}"] = _percent(p[p > -1].mean()) if (p > -1).any() else float("nan")
    return out


def _percent(value: float) -> float:
    value = float(value)
    return round(100.0 * value, 4) if value >= 0 else float("nan")  # COCO's -1: no ground truth


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [x, y, w, h] box with each of ``boxes``."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y2 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter)


def voc07_ap(gt: dict, detections: list[dict], category: int, iou: float) -> float:
    """VOC 2007 11-point AP of one category (id) at one IoU threshold, as a fraction."""
    objects: dict[int, dict] = {}
    positives = 0
    for ann in gt["annotations"]:
        if ann["category_id"] != category:
            continue
        entry = objects.setdefault(ann["image_id"], {"boxes": [], "difficult": []})
        entry["boxes"].append(ann["bbox"])
        entry["difficult"].append(bool(ann.get("difficult", 0)))
        positives += not ann.get("difficult", 0)
    for entry in objects.values():
        entry["boxes"] = np.asarray(entry["boxes"], dtype=np.float64).reshape(-1, 4)
        entry["difficult"] = np.asarray(entry["difficult"])
        entry["taken"] = np.zeros(len(entry["boxes"]), dtype=bool)
    mine = sorted((d for d in detections if d["category_id"] == category), key=lambda d: -d["score"])
    tp, fp = np.zeros(len(mine)), np.zeros(len(mine))
    for i, det in enumerate(mine):
        entry = objects.get(det["image_id"])
        if entry is None or not len(entry["boxes"]):
            fp[i] = 1
            continue
        overlaps = _iou(np.asarray(det["bbox"], dtype=np.float64), entry["boxes"])
        best = int(overlaps.argmax())
        if overlaps[best] <= iou:  # detectron2's voc_eval: a hit needs IoU > t
            fp[i] = 1
        elif entry["difficult"][best]:
            continue  # neither a hit nor a miss
        elif not entry["taken"][best]:
            tp[i], entry["taken"][best] = 1, True
        else:
            fp[i] = 1
    if positives == 0:
        return float("nan")
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                          for t in np.arange(0.0, 1.1, 0.1)]))


def voc07_metrics(gt: dict, detections: list[dict]) -> dict[str, float]:
    """``voc07_AP``, ``voc07_AP50`` and ``voc07_AP75`` in percent (means over the classes)."""
    categories = [c["id"] for c in gt["categories"]]
    by_threshold = {}
    for t in range(50, 100, 5):
        aps = [voc07_ap(gt, detections, c, t / 100) for c in categories]
        by_threshold[t] = float(np.nanmean(aps)) if not all(np.isnan(aps)) else 0.0
    return {"voc07_AP": round(100 * float(np.mean(list(by_threshold.values()))), 4),
            "voc07_AP50": round(100 * by_threshold[50], 4), "voc07_AP75": round(100 * by_threshold[75], 4)}


def summarise(rows: list[dict]) -> list[dict]:
    """Every test metric at the best evaluation (by AP) and at the final one (either engine's
    evaluation rows: ``test_<metric>`` values, with the ``epoch`` and, where kept, ``iteration``)."""
    evaluated = [row for row in rows if "test_AP" in row]
    if not evaluated:
        raise RuntimeError("fine-tuning ended without an evaluation of the test split")
    best = max(evaluated, key=lambda r: r["test_AP"])
    out = []
    for which, row in (("best", best), ("final", evaluated[-1])):
        at = {key: row[key] for key in ("epoch", "iteration") if key in row}
        for key, value in row.items():
            if key.startswith("test_") and value == value:  # NaN: a class without ground truth
                out.append({"metric": key[len("test_"):], "value": value, "checkpoint": which, **at})
    return out
