"""Pooled-feature widths of common timm architectures, so that config validation can check a KDEP
student against its teacher's SVD basis without importing torch and timm (about 3 s on every
``snakemake`` call, dry runs included). ``tests/test_config.py`` checks every entry against timm;
an architecture not listed here is measured with timm (on the meta device: no weights allocated)."""

from __future__ import annotations

from functools import lru_cache

KNOWN_WIDTHS = {
    "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
    "resnet50d": 2048, "wide_resnet50_2": 2048,
    "mobilenetv2_100": 1280, "efficientnet_b0": 1280, "tf_efficientnet_l2": 5504,
    "deit_tiny_patch16_224": 192, "deit_small_patch16_224": 384, "deit_base_patch16_224": 768,
    "vit_small_patch16_224": 384, "vit_base_patch16_224": 768, "convnext_tiny": 768,
    # timm's small test models (kdflow's tests and examples)
    "test_efficientnet": 256, "test_resnet": 96, "test_vit": 64, "test_convnext": 64,
}


@lru_cache(maxsize=None)
def feature_width(arch: str) -> int:
    """Width of ``arch``'s pooled feature; a pretrained tag (``name.tag``) does not change it."""
    base = arch.split(".", 1)[0]
    if base in KNOWN_WIDTHS:
        return KNOWN_WIDTHS[base]
    from kdflow.models.network import num_features_of

    return num_features_of(arch)
