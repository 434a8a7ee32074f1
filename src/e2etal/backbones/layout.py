"""What every video backbone tells the code that runs it, whatever its family.

Each backbone (`VisionTransformer`, `TSMResNet`) has the same five things:

    tap_layout()                      -> TapLayout: its tappable layers and their widths
    forward_taps(clips, taps, tap_fn) -> (last layer's tokens [B, T', h, w, D],
                                          {layer: tap_fn(tokens of that layer)})
    clip_features(clips)              -> one feature per clip [B, D]
    pixel_mean, pixel_std             -> the normalisation of [0, 1] RGB it was trained
                                         with (None: none)
    shard_units()                     -> the modules FSDP2 shards one group each
                                         (`e2etal.engine.sharding`): its blocks, each
                                         run through its own forward

so the frozen pass (`e2etal.adapters.frozen`) and feature extraction (`e2etal.extract`)
never ask which family they run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

TapFn = Callable[[Tensor], Tensor]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TapLayout:
    """A backbone's tappable layers."""

    widths: tuple[int, ...]  # channels of layers 1..depth
    frames_per_position: int  # input frames per temporal position of the output
    default_taps: tuple[int, ...]  # the layers LoSA reads when the config names none
    unit: str  # what a layer is ("block", "stage"), for messages

    @property
    def depth(self) -> int:
        return len(self.widths)

    @property
    def width(self) -> int:
        """D: the last layer's channels, and those of the pooled-tap tensor."""
        return self.widths[-1]

    def check_taps(self, taps: Sequence[int]) -> None:
        bad = sorted(layer for layer in taps if not 1 <= layer <= self.depth)
        if bad:
            raise ValueError(
                f"tap layers {bad} out of range; expected 1-based {self.unit} numbers in 1..{self.depth}"
            )
