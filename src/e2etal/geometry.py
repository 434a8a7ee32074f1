"""Temporal segment geometry: pure tensor functions, no state, no I/O.

A segment is a row `(start, end)` with `start <= end`, in any one unit (seconds,
feature steps); the functions never mix units. They run on whatever device and
floating dtype the inputs have.

Degenerate segments. Two segments whose union has zero length (two points at the same
instant) have tIoU 0 here, not the 0/0 of the ActivityNet reference: in post-processing
a point must neither suppress nor vote for anything. `metrics.segment_tiou` keeps the
reference's quirk because it has to reproduce the published numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pairwise_tiou(a: Tensor, b: Tensor) -> Tensor:
    """Temporal IoU of every segment of `a` [N, 2] against every segment of `b` [M, 2] -> [N, M]."""
    inter = (torch.minimum(a[:, None, 1], b[None, :, 1]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp(min=0)  # [N, M]
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter  # [N, M]
    return _safe_ratio(inter, union)


def paired_tiou(a: Tensor, b: Tensor) -> Tensor:
    """Temporal IoU of `a[i]` with `b[i]`: a [N, 2], b [N, 2] -> [N].

    The diagonal of `pairwise_tiou`, in O(N) memory, for loops that compare each
    detection with one chosen reference segment."""
    inter = (torch.minimum(a[:, 1], b[:, 1]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)  # [N]
    union = (a[:, 1] - a[:, 0]) + (b[:, 1] - b[:, 0]) - inter  # [N]
    return _safe_ratio(inter, union)


def clip_segments(segments: Tensor, duration_s: float) -> Tensor:
    """Segments [N, 2] clipped to the video's extent [0, duration_s] -> [N, 2].

    A segment entirely outside the video becomes a zero-length one at the border;
    callers drop those by length."""
    return segments.clamp(min=0.0, max=float(duration_s))


def segment_lengths(segments: Tensor) -> Tensor:
    """end - start of each segment: [N, 2] -> [N]."""
    return segments[:, 1] - segments[:, 0]


def _safe_ratio(inter: Tensor, union: Tensor) -> Tensor:
    # Dividing by a masked union keeps 0/0 out of the result (and out of gradients).
    positive = union > 0
    return torch.where(positive, inter / torch.where(positive, union, torch.ones_like(union)), torch.zeros_like(inter))
