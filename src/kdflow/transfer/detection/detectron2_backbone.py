"""kdflow's backbone in detectron2's registry: a timm student under detectron2's FPN.

detectron2 ships ResNets only. For every other student (MobileNetV2 in KDEP's grid) kdflow
registers ``build_kdflow_timm_fpn_backbone``: the student's timm ``features_only`` body at strides
4-32 (kdflow.transfer.detection.features, the same body the torchvision engine reads) as the
bottom-up, its maps named ``res2``-``res5`` after their strides so that detectron2's FPN config
(``MODEL.FPN.IN_FEATURES``) reads as it does for a ResNet, and detectron2's own FPN with a
max-pooled sixth level on top. The arch is ``cfg.KDFLOW.ARCH`` (a key kdflow adds to detectron2's
config, written by the detectron2 export into its ``config.yaml``); ``MODEL.RESNETS.NORM: SyncBN``
synchronises the body's BatchNorm as it does a ResNet's. Importing this module registers it.
"""

from __future__ import annotations

import math

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from torch import nn

from kdflow.transfer.detection.features import FEATURE_STRIDES, feature_body, feature_layout

BACKBONE_NAME = "build_kdflow_timm_fpn_backbone"
FEATURE_NAMES = tuple(f"res{int(math.log2(s))}" for s in FEATURE_STRIDES)  # res2 (stride 4) .. res5 (32)


def add_kdflow_config(cfg: CfgNode) -> CfgNode:
    """Add kdflow's keys to a detectron2 config (before merging a kdflow export's config.yaml)."""
    if "KDFLOW" not in cfg:
        cfg.KDFLOW = CfgNode({"ARCH": ""})
    return cfg


class TimmBottomUp(Backbone):
    """The student's feature maps at strides 4-32 as ``res2``-``res5``; tensor names ``body.*``
    (the student's own timm names under ``body.``)."""

    def __init__(self, arch: str, sync_bn: bool = False):
        super().__init__()
        body = feature_body(arch)
        self.body = nn.SyncBatchNorm.convert_sync_batchnorm(body) if sync_bn else body
        channels = feature_layout(arch)[1]
        self._out_features = list(FEATURE_NAMES)
        self._out_feature_channels = dict(zip(FEATURE_NAMES, channels))
        self._out_feature_strides = dict(zip(FEATURE_NAMES, FEATURE_STRIDES))

    def forward(self, x):
        return dict(zip(FEATURE_NAMES, self.body(x)))

    def output_shape(self):
        return {name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
                for name in self._out_features}


@BACKBONE_REGISTRY.register()
def build_kdflow_timm_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    arch = cfg.KDFLOW.ARCH
    if not arch:
        raise ValueError(f"MODEL.BACKBONE.NAME {BACKBONE_NAME} needs KDFLOW.ARCH (the student's timm arch), "
                         "written by kdflow's detectron2 export into its config.yaml")
    if input_shape.channels != 3:
        raise ValueError(f"{BACKBONE_NAME}: a student takes 3-channel images, not {input_shape.channels}")
    bottom_up = TimmBottomUp(arch, sync_bn=cfg.MODEL.RESNETS.NORM == "SyncBN")
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
               norm=cfg.MODEL.FPN.NORM, top_block=LastLevelMaxPool(), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)
