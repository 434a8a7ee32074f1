"""LoSA adapters beside a frozen backbone: the tap pass (`frozen`) and the adapters (`losa`)."""

from e2etal.adapters.frozen import (
    FrozenBackbone,
    FrozenPassConfig,
    frozen_taps,
    pool_tokens,
    tap_layout,
)
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
    "FrozenPassConfig",
    "GatedFusion",
    "LoSAAdapters",
    "LoSAConfig",
    "LongRangeAdapter",
    "ShortRangeAdapter",
    "TemporalAttentionBlock",
    "frozen_taps",
    "pool_tokens",
    "tap_layout",
]
