"""SyncBatchNorm conversion keeps what timm's norm+activation layers carry.

MobileNetV2 and EfficientNet normalise with timm's BatchNormAct2d (BatchNorm, then its activation),
and kdflow's pre-activation feature tap is that activation (``net.bn2.act``). The trainer's
converter must keep both, so a converted network computes what it computed before (eval mode:
running statistics, no synchronisation, hence runnable on CPU without a process group: torch's
SyncBatchNorm only refuses CPU tensors when it would synchronise, in training mode under DDP).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import network_with_bn_statistics
from kdflow.models.network import Network, PreActTap
from kdflow.train.trainer import convert_sync_bn


def _network_with_statistics() -> Network:
    """A MobileNetV2 with non-trivial BatchNorm statistics (see conftest)."""
    return network_with_bn_statistics("mobilenetv2_100")


@torch.no_grad()
def _outputs(net: Network, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    net.tap.pre = None  # no feature left over from an earlier forward
    return net(images, output="both")


def _keeps_outputs_and_tap(convert) -> bool:
    net = _network_with_statistics()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    logits, features = _outputs(net, images)
    converted = convert(copy.deepcopy(net)).eval()
    assert any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())  # it did convert
    if getattr(converted.net.bn2, "act", None) is not converted.tap:
        return False
    try:
        logits2, features2 = _outputs(converted, images)
    except AttributeError:  # the tap never ran: no feature to pool
        return False
    return bool((logits - logits2).abs().max() <= 1e-6 and (features - features2).abs().max() <= 1e-6)


def test_trainer_conversion_keeps_activations_and_feature_tap():
    assert _keeps_outputs_and_tap(convert_sync_bn)
    converted = convert_sync_bn(_network_with_statistics())
    assert isinstance(converted.net.bn2.act, PreActTap) and converted.net.bn2.act is converted.tap
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())


def test_torch_conversion_would_strip_them():
    """What the trainer used before: BatchNormAct2d -> plain SyncBatchNorm. The activation (the tap)
    stays attached as a child module, but SyncBatchNorm's forward never calls it."""
    assert not _keeps_outputs_and_tap(nn.SyncBatchNorm.convert_sync_batchnorm)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(_network_with_statistics())
    assert type(converted.net.bn2) is nn.SyncBatchNorm
    converted.tap.pre = None
    with torch.no_grad():
        converted(torch.rand(1, 3, 64, 64), output="logits")
    assert converted.tap.pre is None  # the tap never ran: no activation, no feature
    with pytest.raises(AttributeError):
        _outputs(converted, torch.rand(1, 3, 64, 64))
