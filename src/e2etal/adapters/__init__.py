"""LoSA adapters beside a frozen backbone: the tap pass (`frozen`) and the adapters (`losa`)."""

from e2etal.adapters.frozen import FrozenBackbone, frozen_taps, pool_tokens
from e2etal.adapters.losa import (
    DilatedConvBlock,
    GatedFusion,
    LoSAAdapters,
    LoSAConfig,
    LongRangeAdapter,
    ShortRangeAdapter,
    TemporalAttentionBlock,
)

__all__ = [
    "DilatedConvBlock",
    "FrozenBackbone",
    "GatedFusion",
    "LoSAAdapters",
    "LoSAConfig",
    "LongRangeAdapter",
    "ShortRangeAdapter",
    "TemporalAttentionBlock",
    "frozen_taps",
    "pool_tokens",
]
