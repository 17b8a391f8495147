"""The detectron2 engine: KDEP's detection protocol with detectron2's model, data path and trainer.

KDEP fine-tunes its students with detectron2 (methods.md 1.8). Here the detectron2 config is built
in code from the protocol (written to the job folder as ``detectron2_config.yaml``), merged with
the config values the student's detectron2 export dictates (its ``config.yaml``: pixel mean/std
and channel order of the student's input spec, ResNet depth, stride placement, res2 width), so
the weights and the input always agree. Heads:

- ``fpn`` (default): Faster R-CNN + FPN; detectron2's ResNet-FPN for a ResNet student, kdflow's
  ``build_kdflow_timm_fpn_backbone`` (kdflow.transfer.detection.detectron2_backbone) for any other,
  MobileNetV2 among them.
- ``c4``: KDEP's R-C4 variant (ResNets only): stem to res4 as the backbone, res5 inside
  ``Res5ROIHeads``. That res5 is always built of Bottleneck blocks, so a ResNet-50 student's res5
  loads into it, a ResNet-18/34 student's (BasicBlocks) cannot: the load report and provenance
  count the res5 tensors that were loaded, so a C4 number never hides a head that started random.

Weights are loaded by kdflow, not by detectron2's name-matching heuristics (which skip whatever
does not match, silently): every tensor of the bottom-up (FPN) or backbone (C4) must come from the
``.pkl`` with its shape, and every tensor of the ``.pkl`` must land (a ResNet-18/34's res5 on C4
excepted, and counted); otherwise the job fails, naming the keys. Normalisation is one choice per
protocol, for every run of it: trained BatchNorm, or SyncBN across the job's GPUs (``sync_bn``;
plain BatchNorm in one process or on CPU, where SyncBN cannot run); never detectron2's FrozenBN,
which would freeze a scratch backbone's random statistics. Nothing is frozen (``FREEZE_AT 0``).

Training is detectron2's ``SimpleTrainer`` (``AMPTrainer`` in bf16 on CUDA), its solver
(``build_optimizer``: SGD; ``WarmupMultiStepLR`` / ``WarmupCosineLR``), its ``DatasetMapper`` with
multi-scale short-side resizing and flips, its hooks (timer, lr, periodic checkpoints, evaluation,
metric writers), and its checkpointer, so that an interrupted job resumes from its last saved
iteration: one checkpoint per epoch of iterations, and one at a stop signal (SIGTERM/SIGURG,
kdflow.train.preemption) before the job exits. Iterations come from the protocol's epochs
(iterations per epoch = trainable images / batch, rounded up; milestones and warm-up likewise),
or exactly from its ``solver`` block (``max_iter``, ``steps``, ``warmup_iters``: KDEP's 90k / 18k).

The test split goes through detectron2's ``inference_on_dataset`` with a detectron2
``DatasetEvaluator`` whose scoring is kdflow's pycocotools evaluation
(kdflow.transfer.detection.evaluation: AP, AP50, AP75, APs/m/l, every class's AP, and VOC 2007's
11-point AP for a VOC dataset), the function the torchvision engine scores with, so the two
engines' numbers are computed alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from kdflow.data.detection import CROWD, DetManifest, to_coco
from kdflow.io import append_csv_row, keep_csv_rows_through, write_json, write_text, write_with
from kdflow.models.checkpoints import CheckpointError, check_engine_state, load_strict
from kdflow.train import distributed
from kdflow.transfer.detection.evaluation import coco_metrics, voc07_metrics

BUILD_INSTRUCTIONS = (
    "detectron2 is not on PyPI; build it from source against this environment's torch (about 12 minutes on 2 "
    "cores, longer with CUDA): git clone https://github.com/facebookresearch/detectron2 && "
    ".venv/bin/pip install --no-build-isolation -e detectron2 (on a GPU node, with the CUDA toolkit matching "
    "torch.version.cuda on PATH). Or set engine: torchvision in the protocol (kdflow never switches engine on "
    "its own)")
LOG_FIELDS = ["iteration", "epoch", "phase", "lr", "total_loss", "loss_cls", "loss_box_reg", "loss_rpn_cls",
              "loss_rpn_loc", "test_AP", "test_AP50", "test_AP75"]
FPN_FEATURES = ["res2", "res3", "res4", "res5"]


class EngineUnavailable(RuntimeError):
    """The protocol's engine cannot run in this environment."""


def require_detectron2() -> None:
    """Fail at once, with build instructions, where detectron2 (with its compiled ops) is absent."""
    try:
        import detectron2.modeling  # noqa: F401
        from detectron2 import _C  # noqa: F401  (the compiled extension a source build makes)
    except ImportError as exc:
        raise EngineUnavailable(f"engine detectron2: cannot import detectron2 ({exc}). {BUILD_INSTRUCTIONS}") from exc


# ----------------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class Solver:
    """The protocol's schedule in iterations."""
    max_iter: int
    steps: tuple[int, ...]
    warmup_iters: int
    iters_per_epoch: int

    @property
    def checkpoint_period(self) -> int:
        return min(self.iters_per_epoch, self.max_iter)


def solver_for(protocol: dict, trainable_images: int) -> Solver:
    """Iterations of ``protocol`` for a training set of ``trainable_images`` images with boxes."""
    training, schedule = protocol["training"], protocol["training"]["schedule"]
    per_epoch = max(1, math.ceil(trainable_images / training["batch_size"]))
    explicit = protocol.get("solver")
    if explicit:
        max_iter, steps, warmup = explicit["max_iter"], explicit.get("steps", []), explicit.get("warmup_iters", 0)
    else:
        max_iter = training["epochs"] * per_epoch
        if schedule["name"] == "multistep":
            steps = [round(m * per_epoch) for m in schedule["milestones"]]
        elif schedule["name"] == "step":
            every = schedule["step_epochs"] * per_epoch
            steps = [round(every * k) for k in range(1, int(max_iter // every) + 1)]
        else:  # constant, cosine: no steps
            steps = []
        warmup = round(schedule["warmup_epochs"] * per_epoch)
    return Solver(max_iter=int(max_iter), steps=tuple(int(s) for s in steps if 0 < s < max_iter),
                  warmup_iters=int(warmup), iters_per_epoch=per_epoch)


# ----------------------------------------------------------------------------------- config
def build_config(*, arch: str, weights_config: dict, num_classes: int, protocol: dict, solver: Solver, seed: int,
                 output_dir: str | Path, device: str, sync_bn: bool):
    """detectron2's config for one job: detectron2's defaults, the export's values, the protocol's."""
    from detectron2.config import CfgNode, get_cfg

    from kdflow.transfer.detection.detectron2_backbone import BACKBONE_NAME, add_kdflow_config

    model, training, roi, rpn = protocol["model"], protocol["training"], protocol["model"]["roi"], protocol["model"]["rpn"]
    optim = training["optim"]
    name = protocol["name"]
    kdflow_backbone = weights_config["MODEL"].get("BACKBONE", {}).get("NAME") == BACKBONE_NAME
    if model["head"] == "c4" and kdflow_backbone:
        raise ValueError(f"protocol {name!r}: head c4 is detectron2's ResNet C4 (Res5ROIHeads); student arch "
                         f"{arch!r} has only the FPN head (head: fpn)")
    if optim["name"] != "sgd":
        raise ValueError(f"protocol {name!r}: engine detectron2 trains with SGD (detectron2's build_optimizer); "
                         f"training.optim.name is {optim['name']!r}")
    cfg = add_kdflow_config(get_cfg())
    cfg.merge_from_other_cfg(CfgNode(weights_config))
    m = cfg.MODEL
    m.META_ARCHITECTURE, m.DEVICE, m.WEIGHTS, m.MASK_ON = "GeneralizedRCNN", device, "", False
    m.BACKBONE.FREEZE_AT = 0  # every layer trained, scratch included
    m.RESNETS.NORM = "SyncBN" if sync_bn else "BN"  # never FrozenBN (see the module docstring)
    sizes = [float(s) for s in model["anchor_sizes"]]
    m.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    if model["head"] == "fpn":
        if not kdflow_backbone:
            m.BACKBONE.NAME = "build_resnet_fpn_backbone"
        m.RESNETS.OUT_FEATURES = FPN_FEATURES
        m.FPN.IN_FEATURES, m.FPN.OUT_CHANNELS = FPN_FEATURES, model["fpn_channels"]
        m.ANCHOR_GENERATOR.SIZES = [[s] for s in sizes]  # one size per level, p2..p6
        m.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
        m.ROI_HEADS.NAME, m.ROI_HEADS.IN_FEATURES = "StandardROIHeads", ["p2", "p3", "p4", "p5"]
        m.ROI_BOX_HEAD.NAME, m.ROI_BOX_HEAD.NUM_FC, m.ROI_BOX_HEAD.POOLER_RESOLUTION = "FastRCNNConvFCHead", 2, 7
        m.ROI_BOX_HEAD.FC_DIM = roi["head_width"]
    else:
        m.BACKBONE.NAME, m.RESNETS.OUT_FEATURES = "build_resnet_backbone", ["res4"]
        m.ANCHOR_GENERATOR.SIZES = [sizes]  # every size on the one stride-16 map
        m.RPN.IN_FEATURES = ["res4"]
        m.ROI_HEADS.NAME, m.ROI_HEADS.IN_FEATURES = "Res5ROIHeads", ["res4"]
    m.RPN.BATCH_SIZE_PER_IMAGE = rpn["batch_per_image"]
    m.RPN.PRE_NMS_TOPK_TRAIN, m.RPN.PRE_NMS_TOPK_TEST = rpn["pre_nms_train"], rpn["pre_nms_test"]
    m.RPN.POST_NMS_TOPK_TRAIN, m.RPN.POST_NMS_TOPK_TEST = rpn["post_nms_train"], rpn["post_nms_test"]
    m.ROI_HEADS.NUM_CLASSES, m.ROI_HEADS.BATCH_SIZE_PER_IMAGE = num_classes, roi["batch_per_image"]
    m.ROI_HEADS.SCORE_THRESH_TEST = roi["score_thresh"]
    cfg.TEST.DETECTIONS_PER_IMAGE = roi["detections_per_image"]
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = tuple(model["train_sizes"]), "choice"
    cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TEST = model["max_size"], model["max_size"]
    cfg.INPUT.MIN_SIZE_TEST = model["test_size"]
    cfg.INPUT.RANDOM_FLIP = "horizontal" if protocol["augment"]["flip"] > 0 else "none"
    s = cfg.SOLVER
    s.IMS_PER_BATCH, s.BASE_LR, s.MOMENTUM, s.NESTEROV = (training["batch_size"], optim["lr"], optim["momentum"],
                                                          optim["nesterov"])
    s.WEIGHT_DECAY = optim["weight_decay"]
    # kdflow's decay_norm_and_bias: true decays every parameter; false none of the norms and biases
    s.WEIGHT_DECAY_NORM = s.WEIGHT_DECAY_BIAS = optim["weight_decay"] if optim["decay_norm_and_bias"] else 0.0
    if optim["clip_grad_norm"] is not None:
        s.CLIP_GRADIENTS.ENABLED, s.CLIP_GRADIENTS.CLIP_TYPE = True, "full_model"
        s.CLIP_GRADIENTS.CLIP_VALUE, s.CLIP_GRADIENTS.NORM_TYPE = optim["clip_grad_norm"], 2.0
    schedule = training["schedule"]
    s.LR_SCHEDULER_NAME = "WarmupCosineLR" if schedule["name"] == "cosine" else "WarmupMultiStepLR"
    s.BASE_LR_END = schedule["min_lr"]
    s.MAX_ITER, s.STEPS, s.GAMMA = solver.max_iter, solver.steps, schedule["gamma"]
    s.WARMUP_ITERS, s.WARMUP_FACTOR, s.WARMUP_METHOD = solver.warmup_iters, 0.001, "linear"
    s.CHECKPOINT_PERIOD = solver.checkpoint_period
    cfg.TEST.EVAL_PERIOD = training["eval_every"] * solver.iters_per_epoch
    cfg.DATALOADER.NUM_WORKERS, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = training["workers"], True
    cfg.SEED, cfg.OUTPUT_DIR, cfg.CUDNN_BENCHMARK = seed, str(output_dir), False
    cfg.freeze()
    return cfg


# ----------------------------------------------------------------------------------- data
def dataset_dicts(manifest: DetManifest, indices: list[int] | None = None) -> list[dict]:
    """detectron2's dataset dicts of the manifest's images (boxes XYWH_ABS, classes 0..K-1; crowd
    regions marked ``iscrowd``, which detectron2's mapper leaves out of the training targets)."""
    from detectron2.structures import BoxMode

    dicts = []
    for i in range(len(manifest)) if indices is None else indices:
        sample = manifest.samples[i]
        dicts.append({
            "file_name": str(manifest.path(sample)), "height": sample.height, "width": sample.width,
            "image_id": sample.image_id,
            "annotations": [{"bbox": [float(x), float(y), float(w), float(h)], "bbox_mode": BoxMode.XYWH_ABS,
                             "category_id": int(cls), "iscrowd": int(flag == CROWD)}
                            for x, y, w, h, cls, flag in sample.boxes]})
    return dicts


def _evaluator_class():
    from detectron2.evaluation import DatasetEvaluator
    from detectron2.utils import comm

    class KdflowBoxEvaluator(DatasetEvaluator):
        """detectron2's evaluator interface, scored by kdflow's pycocotools evaluation; every rank
        gets the same numbers (the detections are gathered on all ranks)."""

        def __init__(self, manifest: DetManifest, voc07: bool):
            self.gt, self.classes, self.voc07 = to_coco(manifest), list(manifest.classes), voc07
            self._detections: list[dict] = []

        def reset(self) -> None:
            self._detections = []

        def process(self, inputs, outputs) -> None:
            for item, output in zip(inputs, outputs):
                found = output["instances"].to("cpu")
                boxes = found.pred_boxes.tensor.float().clone()
                boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
                for box, cls, score in zip(boxes.tolist(), found.pred_classes.tolist(), found.scores.tolist()):
                    self._detections.append({"image_id": item["image_id"], "category_id": int(cls) + 1,
                                             "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)})

        def evaluate(self) -> dict:
            detections = [d for part in comm.all_gather(self._detections) for d in part]
            metrics = coco_metrics(self.gt, detections, self.classes)
            if self.voc07:
                metrics.update(voc07_metrics(self.gt, detections))
            return {"bbox": metrics}

    return KdflowBoxEvaluator


# ----------------------------------------------------------------------------------- weights
def read_export(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a detectron2 ``.pkl`` written by kdflow's export (numpy arrays only: the
    file is read with an unpickler that refuses any other object)."""
    from kdflow.export.detectron2 import read_detectron2_pkl

    return {name: torch.from_numpy(array.copy()) for name, array in read_detectron2_pkl(path)["model"].items()}


def load_export(model, weights: dict[str, torch.Tensor], head: str, source: str) -> dict:
    """Load the export into ``model`` strictly (see the module docstring); returns the report."""
    if head == "fpn":
        report = load_strict(model.backbone.bottom_up, weights, source=source)
        return {**report, "into": "backbone.bottom_up"}
    res5 = {k[len("res5."):]: v for k, v in weights.items() if k.startswith("res5.")}
    report = load_strict(model.backbone, {k: v for k, v in weights.items() if not k.startswith("res5.")},
                         source=source)
    in_head = model.roi_heads.res5.state_dict()
    fits = {k: v for k, v in res5.items() if k in in_head and tuple(in_head[k].shape) == tuple(v.shape)}
    bottleneck_student = any(k.endswith("conv3.weight") for k in res5)
    if bottleneck_student and len(fits) != len(in_head):
        missing = sorted(set(in_head) - set(fits))
        raise CheckpointError(f"{source}: res5 of the C4 head does not match the student's res5 strictly: "
                              f"{len(missing)} tensor(s) not loaded: " + ", ".join(f"res5.{k}" for k in missing))
    model.roi_heads.res5.load_state_dict(fits, strict=False)
    note = ("every res5 tensor loaded" if len(fits) == len(in_head) else
            f"the student's res5 is BasicBlocks, detectron2's C4 head builds Bottleneck blocks: {len(fits)} of "
            f"{len(in_head)} res5 tensors coincide in name and shape and were loaded, the rest start from their init")
    return {**report, "into": "backbone (stem-res4) + roi_heads.res5",
            "res5": {"loaded": len(fits), "in_head": len(in_head), "in_student": len(res5), "note": note}}


# ----------------------------------------------------------------------------------- hooks
def _job_hook_class():
    from detectron2.engine import HookBase

    class KdflowJobHook(HookBase):
        """What a kdflow job needs around detectron2's loop: evaluations kept in the checkpoint (so
        best and final survive an interruption), ``log.csv`` rows, and a stop on a signal that
        saves a checkpoint first. Its name keys its state in detectron2's checkpoints."""

        def __init__(self, checkpointer, log_csv: Path, log_every: int, iters_per_epoch: int, world_size: int,
                     rank: int):
            self.checkpointer, self.log_csv, self.log_every = checkpointer, log_csv, max(1, log_every)
            self.iters_per_epoch, self.world_size, self.rank = iters_per_epoch, world_size, rank
            self.evaluations: list[dict] = []
            self.stop = None

        def state_dict(self) -> dict:
            return {"evaluations": [dict(row) for row in self.evaluations]}

        def load_state_dict(self, state: dict) -> None:
            self.evaluations = [dict(row) for row in state.get("evaluations", [])]
            if self.rank == 0:  # rows after the resumed iteration are re-made by the resumed run
                keep_csv_rows_through(self.log_csv, LOG_FIELDS, self.trainer.iter + 1)

        def row(self, iteration: int, phase: str, values: dict) -> dict:
            return {"iteration": iteration, "epoch": round(iteration / self.iters_per_epoch, 4), "phase": phase,
                    **values}

        def record_evaluation(self, iteration: int, metrics: dict) -> None:
            row = self.row(iteration, "eval", {f"test_{k}": v for k, v in metrics.items()})
            self.evaluations.append(row)
            if self.rank == 0:
                append_csv_row(self.log_csv, LOG_FIELDS, row)

        def before_train(self) -> None:
            from kdflow.train.preemption import StopRequests

            self.stop = StopRequests(self.world_size).__enter__()

        def after_train(self) -> None:
            if self.stop is not None:
                self.stop.__exit__(None, None, None)

        def after_step(self) -> None:
            done = self.trainer.iter + 1
            if self.rank == 0 and (done % self.log_every == 0 or done == self.trainer.max_iter):
                latest = self.trainer.storage.latest()
                append_csv_row(self.log_csv, LOG_FIELDS, self.row(done, "train", {
                    k: round(float(v), 6) for k, (v, _) in latest.items() if k == "lr" or "loss" in k}))
            if self.stop is not None and self.stop.requested():
                from kdflow.train.preemption import Interrupted

                name = f"model_{self.trainer.iter:07d}"
                self.checkpointer.save(name)  # detectron2's trainer state: its iteration, optimizer, hooks
                self.stop.__exit__(None, None, None)
                raise Interrupted(f"stopped by {self.stop.signal_name} after iteration {done}; state saved to "
                                  f"{self.checkpointer.save_dir}/{name}.pth; re-run the job to resume")

    return KdflowJobHook


# ----------------------------------------------------------------------------------- job
def finetune(*, arch: str, weights_config: dict, export_path: str | Path | None, train_set: DetManifest,
             test_set: DetManifest, protocol: dict, seed: int, out_dir: str | Path, state_dir: str | Path,
             dist: distributed.DistInfo, voc07: bool) -> dict:
    """Fine-tune and evaluate in every rank (rank 0 writes the files); returns the evaluations,
    the load report (None for scratch), the iterations and the detector's path."""
    require_detectron2()
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader
    from detectron2.data import transforms as T
    from detectron2.data.samplers import TrainingSampler
    from detectron2.engine import AMPTrainer, SimpleTrainer, hooks
    from detectron2.evaluation import inference_on_dataset
    from detectron2.modeling import build_model
    from detectron2.solver import build_lr_scheduler, build_optimizer
    from detectron2.utils.events import CommonMetricPrinter, JSONWriter
    from detectron2.utils.logger import setup_logger

    import kdflow.transfer.detection.detectron2_backbone  # noqa: F401  (registers kdflow's backbone)
    from kdflow.transfer.detection.torchvision_engine import trainable_indices

    out_dir, state_dir = Path(out_dir), Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    setup_logger(output=str(state_dir / "log.txt"), distributed_rank=dist.rank, name="detectron2", abbrev_name="d2")
    cuda = dist.device.type == "cuda"
    train_dicts = dataset_dicts(train_set, trainable_indices(train_set))
    solver = solver_for(protocol, len(train_dicts))
    cfg = build_config(arch=arch, weights_config=weights_config, num_classes=train_set.num_classes,
                       protocol=protocol, solver=solver, seed=seed, output_dir=state_dir,
                       device="cuda" if cuda else "cpu",
                       sync_bn=protocol["model"]["norm"] == "sync_bn" and dist.world_size > 1 and cuda)
    if dist.rank == 0:
        write_text(out_dir / "detectron2_config.yaml", cfg.dump())
    if protocol["training"]["batch_size"] % dist.world_size:
        raise ValueError(f"protocol {protocol['name']!r}: batch_size {protocol['training']['batch_size']} is not "
                         f"divisible by the job's {dist.world_size} processes")

    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    inner = model
    if dist.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(  # device_ids only for a CUDA module (gloo: CPU)
            model, device_ids=[dist.local_rank] if cuda else None, broadcast_buffers=False)
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, "choice")
    flip = protocol["augment"]["flip"]
    augmentations = [resize] + ([T.RandomFlip(prob=flip, horizontal=True)] if flip > 0 else [])
    train_loader = build_detection_train_loader(
        train_dicts, mapper=DatasetMapper(cfg, True, augmentations=augmentations),
        sampler=TrainingSampler(len(train_dicts), shuffle=True, seed=seed),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH, num_workers=cfg.DATALOADER.NUM_WORKERS)
    test_loader = build_detection_test_loader(dataset_dicts(test_set), mapper=DatasetMapper(cfg, False),
                                              batch_size=protocol["eval"]["batch_size"],
                                              num_workers=cfg.DATALOADER.NUM_WORKERS)
    amp = cuda and protocol["training"]["amp"]
    trainer = (AMPTrainer(model, train_loader, optimizer, precision=torch.bfloat16) if amp
               else SimpleTrainer(model, train_loader, optimizer))
    scheduler = build_lr_scheduler(cfg, optimizer)
    checkpointer = DetectionCheckpointer(inner, str(state_dir), trainer=trainer)
    job = _job_hook_class()(checkpointer, out_dir / "log.csv", protocol["log_every"], solver.iters_per_epoch,
                            dist.world_size, dist.rank)
    evaluator = _evaluator_class()(test_set, voc07)

    def evaluate() -> dict:
        done = min(trainer.iter + 1, solver.max_iter)
        if job.evaluations and job.evaluations[-1]["iteration"] == done:
            return {}  # resumed after its final evaluation: nothing new to score
        metrics = inference_on_dataset(model, test_loader, evaluator)["bbox"]
        job.record_evaluation(done, metrics)
        return {"bbox": {k: metrics[k] for k in ("AP", "AP50", "AP75")}}

    writers = [CommonMetricPrinter(solver.max_iter), JSONWriter(str(state_dir / "metrics.json"))] if dist.rank == 0 else []
    # evaluation before the periodic checkpoint: a checkpoint at an evaluated iteration carries it
    trainer.register_hooks([
        hooks.IterationTimer(), hooks.LRScheduler(optimizer, scheduler),
        hooks.EvalHook(cfg.TEST.EVAL_PERIOD, evaluate),
        hooks.PeriodicCheckpointer(checkpointer, solver.checkpoint_period, max_iter=solver.max_iter, max_to_keep=2),
        job, hooks.PeriodicWriter(writers, period=protocol["log_every"])])

    load_report_path = state_dir / "backbone_load.json"
    if checkpointer.has_checkpoint():
        check_engine_state(checkpointer.get_checkpoint_file(), "detectron2")
        checkpointer.resume_or_load("", resume=True)  # detectron2's state: iteration, optimizer, hooks
        start_iter = trainer.iter + 1
    else:
        start_iter = 0
        if export_path is not None:
            report = load_export(inner, read_export(export_path), protocol["model"]["head"], str(export_path))
            if dist.rank == 0:
                write_json(load_report_path, report)
    trainer.train(start_iter, solver.max_iter)
    model_path = out_dir / "model_final.pth"
    if dist.rank == 0:
        state = {k: v.detach().cpu() for k, v in inner.state_dict().items()}
        write_with(model_path, lambda tmp: torch.save({"model": state, "__author__": "kdflow"}, tmp))
        if (state_dir / "log.txt").exists():
            write_text(out_dir / "detectron2.log", (state_dir / "log.txt").read_text(encoding="utf-8"))
    distributed.barrier()
    load = None
    if export_path is not None:
        from kdflow.io import read_json

        if not load_report_path.is_file():
            raise RuntimeError(f"{load_report_path}: the backbone load left no report; was the export loaded?")
        load = read_json(load_report_path)
    return {"evaluations": list(job.evaluations), "load": load, "iterations": solver.max_iter,
            "solver": solver.__dict__, "model": str(model_path), "config": "detectron2_config.yaml"}


def read_export_config(path: str | Path) -> dict:
    """An export's ``config.yaml``: the detectron2 values its weights dictate."""
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
