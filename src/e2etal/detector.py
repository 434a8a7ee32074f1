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

from e2etal.adapters.frozen import FrozenBackbone
from e2etal.adapters.losa import LoSAAdapters
from e2etal.data.annotations import ClassMap
from e2etal.data.features import FeatureBatch, FeatureGrid
from e2etal.data.predictions import Detections
from e2etal.data.windows import VideoBatch
from e2etal.heads import ActionFormerHead
from e2etal.postprocess import PostprocessConfig, postprocess


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


def merge_windows(videos: list[VideoDetections], cfg: PostprocessConfig) -> list[VideoDetections]:
    """One entry per video: detections of overlapping windows of a video are pooled and
    suppressed again (the same post-processing as within a window)."""
    by_video: dict[str, list[VideoDetections]] = {}
    for v in videos:
        by_video.setdefault(v.video_id, []).append(v)
    out = []
    for vid, parts in by_video.items():
        if len(parts) == 1:
            out.append(parts[0])
            continue
        segments = torch.from_numpy(np.concatenate([p.segments_s for p in parts]))
        scores = torch.from_numpy(np.concatenate([p.scores for p in parts]))
        labels = torch.from_numpy(np.concatenate([p.labels for p in parts]).astype(np.int64))
        s, p, c = postprocess(segments, scores, labels, cfg)
        out.append(VideoDetections(vid, s.numpy(), p.numpy(), c.numpy()))
    return out


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


class VideoDetector(nn.Module):
    """End to end from raw video beside a frozen backbone: LoSA, or head-only transfer.

    The frozen backbone yields pooled taps `[T', L, g*g, D]` and last-layer tokens
    `[T', g*g, D]` per window (or they come from the tap cache); with `adapters` (LoSA)
    the fused features feed the head, without them (head-only transfer) the last layer's
    spatially pooled features do. Only adapters and head train; the backbone's weights
    are left out of checkpoints (`frozen_prefixes`) and loaded from its own file.
    """

    frozen_prefixes = ("backbone.",)

    def __init__(self, backbone: FrozenBackbone, head: ActionFormerHead, adapters: LoSAAdapters | None = None):
        super().__init__()
        self.backbone = backbone
        self.adapters = adapters
        self.head = head

    def features(self, batch: VideoBatch) -> torch.Tensor:  # [B, D, T']
        length = batch.mask.shape[1]
        tapped, last = [], []
        for clips, cached in zip(batch.clips, batch.taps):
            t, lst = cached if cached is not None else self.backbone(clips)
            t, lst = t.to(batch.mask.device), lst.to(batch.mask.device)
            pad = length - t.shape[0]
            tapped.append(nn.functional.pad(t, (0, 0, 0, 0, 0, 0, 0, pad)))  # [T', L, g*g, D]
            last.append(nn.functional.pad(lst, (0, 0, 0, 0, 0, pad)))  # [T', g*g, D]
        tapped_b, last_b = torch.stack(tapped), torch.stack(last)  # [B, T', L, g*g, D], [B, T', g*g, D]
        if self.adapters is None:
            fused = last_b.mean(dim=2)  # [B, T', D]
        else:
            fused = self.adapters(tapped_b, last_b, batch.mask)  # [B, T', D]
        return fused.transpose(1, 2) * batch.mask[:, None, :]

    def losses(self, batch: VideoBatch) -> dict[str, torch.Tensor]:
        out = self.head(self.features(batch), batch.mask)
        return self.head.loss(out, batch.segments, batch.labels)

    @torch.no_grad()
    def detect(self, batch: VideoBatch) -> list[VideoDetections]:
        out = self.head(self.features(batch), batch.mask)
        return to_seconds(self.head.predict(out), batch.video_ids, batch.grids, batch.durations_s)
