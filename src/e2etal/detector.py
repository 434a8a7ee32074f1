"""Detectors: a TAL head with what feeds it, turning batches into losses and into
detections in seconds. Every detector has the same two methods, which is all the
training engine relies on:

    losses(batch) -> {"loss": total, ...}
    detect(batch) -> list[VideoDetections]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from e2etal.data.annotations import ClassMap
from e2etal.data.features import FeatureBatch, FeatureGrid
from e2etal.data.predictions import Detections
from e2etal.heads import ActionFormerHead


@dataclass
class VideoDetections:
    video_id: str
    segments_s: np.ndarray  # [K, 2]
    scores: np.ndarray  # [K]
    labels: np.ndarray  # [K] class index


def to_seconds(
    predictions: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    video_ids: list[str],
    grids: list[FeatureGrid],
    durations_s: list[float | None],
) -> list[VideoDetections]:
    """Head predictions in feature coordinates -> seconds, clipped to [0, duration]."""
    out = []
    for (segments, scores, labels), vid, grid, duration in zip(predictions, video_ids, grids, durations_s):
        seconds = grid.to_seconds(segments.double().cpu().numpy()).reshape(-1, 2)
        seconds = np.clip(seconds, 0.0, duration if duration is not None else None)
        keep = seconds[:, 1] > seconds[:, 0]
        out.append(VideoDetections(vid, seconds[keep], scores.cpu().numpy()[keep], labels.cpu().numpy()[keep]))
    return out


def as_detections(videos: list[VideoDetections], classes: ClassMap) -> Detections:
    """Column-wise detections with class names, for evaluation and results files."""
    records = [
        (v.video_id, float(s), float(e), classes.names[int(c)], float(p))
        for v in videos
        for (s, e), p, c in zip(v.segments_s, v.scores, v.labels)
    ]
    return Detections.from_records(records)


class FeatureDetector(nn.Module):
    """The head on pre-extracted features (head-only training)."""

    def __init__(self, head: ActionFormerHead):
        super().__init__()
        self.head = head

    def losses(self, batch: FeatureBatch) -> dict[str, torch.Tensor]:
        out = self.head(batch.features, batch.mask)
        return self.head.loss(out, batch.segments, batch.labels)

    @torch.no_grad()
    def detect(self, batch: FeatureBatch) -> list[VideoDetections]:
        out = self.head(batch.features, batch.mask)
        return to_seconds(self.head.predict(out), batch.video_ids, batch.grids, batch.durations_s)
