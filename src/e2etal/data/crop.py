"""Random training windows, shared by feature sequences and raw-video windows.

Pure functions on segments `[N, 2]` given in the same units as the window (feature steps
or frames); the randomness comes from a generator seeded by (seed, epoch, index) only, so
a crop is reproducible and a resumed run draws the crops the uninterrupted run drew.
"""

from __future__ import annotations

import torch
from torch import Tensor


def epoch_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash((seed, epoch, index)) & 0x7FFFFFFF)


def crop_segments(segments: Tensor, start: float, end: float, keep_ratio: float) -> tuple[Tensor, Tensor]:
    """Segments clipped to [start, end] (same coordinates) and which of them keep at least
    `keep_ratio` of their length inside."""
    inside = segments.clamp(start, end)  # [N, 2]
    full = (segments[:, 1] - segments[:, 0]).clamp(min=1e-6)
    return inside, (inside[:, 1] - inside[:, 0]) / full >= keep_ratio


def random_window_start(candidates: Tensor, window: float, segments: Tensor, keep_ratio: float,
                        generator: torch.Generator, tries: int = 10) -> int:
    """A start drawn from `candidates` such that, where possible (`tries` draws), some
    segment keeps `keep_ratio` of its length inside [start, start + window]."""
    for _ in range(tries):
        start = int(candidates[torch.randint(len(candidates), (1,), generator=generator)])
        if len(segments) == 0 or crop_segments(segments, start, start + window, keep_ratio)[1].any():
            break
    return start
