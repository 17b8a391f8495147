"""Teacher-free KDEP: replaying teacher features generated once (kdflow's own extension of KDEP).

Online KDEP runs the frozen teacher on every crop of every epoch. Here a generation stage
(rules/kdep_targets.smk) runs it once over ``num_crops`` stored RandomResizedCrop crops per image
(boxes from a per-image seed, as FKD's soft labels) and stores per crop, in float16, either

* ``targets``: the KDEP target t = PTS(SVD(x)) itself, at the student's width, or
* ``features``: the teacher's pooled feature x, projected here at replay (one store then
  serves several students, SVD files and PTS settings).

Training replays ``crops_per_visit`` stored crops per image visit (kdflow.distill.replay: one
decode, FKD's epoch accounting) with KDEP's loss, L = w * mean (s - t)^2 (kdflow.distill.kdep).
The teacher is never loaded: the job checks only that the store was made from the run's teacher
file, SVD file and crop config, and refuses it naming what differs.
"""

from __future__ import annotations

import torch

from kdflow.distill.base import register_method
from kdflow.distill.kdep import SVDAlignment, power_temperature_scaling
from kdflow.distill.replay import Replay, ReplayingMethod
from kdflow.distill.softlabels import SoftLabelError, SoftLabelStore, differences
from kdflow.distill.svd import load_svd
from kdflow.io import sha256_file

# The run's `kdep_replay:` block: KDEP's options, and replay's.
DECLARATION = {
    "name": "kdep_replay",
    "student": "trained",
    "teacher": "features",
    "loads_teacher": False,
    "artefacts": ["svd", "kdep_targets"],
    "options": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "properties": {
            "targets": {"x-role": "identity", "type": "string", "description": "name of a kdep_targets entry"},
            "tau": {"x-role": "identity", "type": "number", "exclusiveMinimum": 0, "default": 0.1},
            "power": {"x-role": "identity", "type": "number", "exclusiveMinimum": 0, "default": 3},
            "loss_weight": {"x-role": "identity", "type": "number", "exclusiveMinimum": 0, "default": 3.0},
            "svd_subset": {"x-role": "identity", "type": "string",
                           "description": "subset the SVD is computed on (default: the run's data)"},
            "crops_per_visit": {"x-role": "identity", "type": "integer", "minimum": 1, "default": 1,
                                "description": "stored crops replayed per image visit"},
            "single_crop_epochs": {
                "x-role": "identity", "type": "integer", "minimum": 0,
                "description": "final epochs run as single-crop passes (default = crops_per_visit)"},
            "size": {"x-role": "identity", "type": "integer", "minimum": 8, "default": 224,
                     "description": "student input size (the store's crop size replays the teacher's pixels)"},
            "interpolation": {"x-role": "identity", "$ref": "#/$defs/interpolation", "default": "bilinear"},
        },
    },
}

STORE_TYPES = {"targets": "kdep_targets", "features": "teacher_features"}


def check_store(store: SoftLabelStore, artefacts: dict, options: dict, width: int) -> None:
    """The store must hold what this run's KDEP would compute: made with the run's teacher file,
    crop config and images, and (a targets store) its SVD file, width and PTS setting."""
    meta, where = store.meta, store.folder / "store.json"
    if store.codec.type not in STORE_TYPES.values():
        raise SoftLabelError(f"{where} holds {store.codec.type!r} records, not KDEP teacher features")
    wanted = artefacts.get("specs", {}).get("kdep_targets")
    if wanted is not None:
        made = {k: v for k, v in meta.get("identity", {}).items() if k != "projection"}
        wanted = {k: v for k, v in wanted.items() if k != "projection"}
        diff = differences(made, wanted)
        if diff:
            raise SoftLabelError(f"{where} was made with another config than the run asks for: {'; '.join(diff)}")
    teacher_file = artefacts.get("teacher_file")
    if teacher_file is not None and meta["teacher"]["sha256"] != sha256_file(teacher_file):
        raise SoftLabelError(f"{where} was made with another teacher file than {teacher_file} "
                             f"(teacher {meta['teacher']['name']!r}, sha256 {meta['teacher']['sha256'][:12]})")
    if store.codec.type != "kdep_targets":
        return
    made = meta["projection"]
    wanted = {"svd_sha256": sha256_file(artefacts["svd"]), "width": width,
              "tau": options["tau"], "power": options["power"]}
    diff = differences({k: made[k] for k in wanted}, wanted)
    if diff:
        raise SoftLabelError(f"{where} holds KDEP targets for another projection than the run's "
                             f"(SVD {artefacts['svd']}): {'; '.join(diff)}")


@register_method(DECLARATION)
class KDEPReplay(ReplayingMethod):
    def __init__(self, context):
        super().__init__(context)
        opts = context.options
        self.tau, self.power, self.weight = opts["tau"], opts["power"], opts["loss_weight"]
        width = context.artefacts["student_width"]
        self.store = SoftLabelStore(context.artefacts["kdep_targets"], verify=context.rank == 0)
        check_store(self.store, context.artefacts, opts, width)
        self.store.check_images([s.path for s in context.data.samples], "the run's data manifest")
        self.align = None
        if self.store.codec.type == "teacher_features":  # projected here, as online KDEP does
            mean, basis = load_svd(context.artefacts["svd"]).projection(width)
            self.align = SVDAlignment(mean, basis).to(context.device)
        self.replay = Replay(context, self.store, "kdep_replay")

    def prepare(self, batch: dict) -> dict:
        flat = self.replay.flatten(batch)
        return {"image": flat["image"], "label": flat["label"], "stored": flat["feat"]}

    def target(self, stored: torch.Tensor) -> torch.Tensor:
        """What the student's pooled feature is regressed onto."""
        if self.align is None:
            return stored.float()
        return power_temperature_scaling(self.align(stored), self.tau, self.power)

    def loss(self, student, batch):
        """KDEP's loss (kdflow.distill.kdep.kdep_loss) against the replayed target."""
        student_feat = student(batch["image"], output="features")
        loss = self.weight * torch.nn.functional.mse_loss(student_feat.float(), self.target(batch["stored"]))
        return loss, {"feat_mse": loss.detach() / self.weight}

