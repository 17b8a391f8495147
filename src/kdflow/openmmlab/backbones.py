"""kdflow's backbone variants in mmsegmentation's ``MODELS`` registry.

``KdflowMobileNetV2``: mmseg's MobileNetV2 plus the 1x1 head convolution (320 -> 1280, BN,
ReLU6) that timm's ``mobilenetv2_100`` (``conv_head``/``bn2``) and torchvision's last ``features``
block have. KDEP distils the teacher's feature into that 1280-wide map and its segmentation
protocol puts the PSP head on it (methods.md 1.8), but stock mmseg MobileNetV2 ends at the
320-channel ``layer7``: a student exported into it would lose its distilled layer.

Imported by kdflow.openmmlab.modules, i.e. only after compat.import_mmseg() made mmseg importable.
"""

from __future__ import annotations

from mmcv.cnn import ConvModule
from mmseg.models.backbones import MobileNetV2
from mmseg.models.utils import make_divisible
from mmseg.registry import MODELS

HEAD_INDEX = 7  # the out index of the head conv: one past the stock stages 0..6
HEAD_CHANNELS = 1280


@MODELS.register_module()
class KdflowMobileNetV2(MobileNetV2):
    """Stock MobileNetV2 (``conv1``, ``layer1``..``layer7``, same arguments) plus ``conv_head``.

    ``out_indices``: stock stage indices 0..6 (outputs of ``layer1``..``layer7``) and ``7`` for the
    head conv's output. The head is 1x1 without stride, so ``strides``/``dilations`` keep their
    stock meaning and the head runs at ``layer7``'s resolution. Its width follows timm and
    torchvision: 1280, widened (never narrowed) with ``widen_factor``.

    Unlike stock MobileNetV2, the outputs are always a tuple, even for one index: decode heads
    pick their input with ``inputs[in_index]``, which on a bare tensor would index the batch.
    """

    def __init__(self, out_indices=(1, 2, 4, HEAD_INDEX), **kwargs):
        out_indices = tuple(out_indices)
        bad = [i for i in out_indices if i not in range(0, HEAD_INDEX + 1)]
        if bad:
            raise ValueError(f"KdflowMobileNetV2: out_indices must lie in 0..{HEAD_INDEX} "
                             f"({HEAD_INDEX} = conv_head); got {bad}")
        # the stock check allows 0..6 only; it validates the stock part
        super().__init__(out_indices=tuple(i for i in out_indices if i != HEAD_INDEX), **kwargs)
        self.out_indices = out_indices
        self.conv_head = ConvModule(
            in_channels=self.in_channels,  # layer7's width, left there by make_layer
            out_channels=make_divisible(HEAD_CHANNELS * max(1.0, self.widen_factor), 8),
            kernel_size=1,
            conv_cfg=self.conv_cfg,
            norm_cfg=self.norm_cfg,
            act_cfg=self.act_cfg)

    def forward(self, x):
        x = self.conv1(x)
        outs = []
        for i, layer_name in enumerate(self.layers):
            x = getattr(self, layer_name)(x)
            if i in self.out_indices:
                outs.append(x)
        if HEAD_INDEX in self.out_indices:
            outs.append(self.conv_head(x))
        return tuple(outs)
