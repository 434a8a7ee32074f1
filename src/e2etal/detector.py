"""Detectors: a TAL head with what feeds it, turning batches into losses and into
candidate detections in seconds. Every detector has the same two methods, which is all
the training engine relies on:

    losses(batch) -> {"loss": total, ...}
    detect(batch) -> list[VideoDetections]   one entry per window, not yet suppressed

Decoding and suppression are separate steps, as in ActionFormer: a window's candidates
are decoded by the head in feature steps and mapped to seconds here; `suppress` pools the
candidates of all windows of a video and runs one post-processing pass per video.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from e2etal import distributed
from e2etal.adapters.frozen import FrozenBackbone
from e2etal.adapters.losa import LoSAAdapters
from e2etal.data.annotations import ClassMap
from e2etal.data.features import FeatureBatch, FeatureGrid
from e2etal.data.predictions import Detections
from e2etal.data.snippets import SnippetBatch
from e2etal.data.windows import VideoBatch
from e2etal.heads import ActionFormerHead
from e2etal.postprocess import PostprocessConfig, postprocess_videos


@dataclass
class VideoDetections:
    """Scored segments of a video in seconds: a window's candidates, or a video's final
    detections after `suppress`."""

    video_id: str
    segments_s: np.ndarray  # [K, 2] float64
    scores: np.ndarray  # [K]
    labels: np.ndarray  # [K] class index
    duration_s: float | None = None  # of the whole video; segments are clipped to it by `suppress`


def to_seconds(
    candidates: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],  # per window, feature steps
    video_ids: list[str],
    grids: list[FeatureGrid],
    durations_s: list[float | None],
) -> list[VideoDetections]:
    """Decoded candidates of each window, from its feature grid to seconds (not clipped:
    that is part of post-processing)."""
    out = []
    for (segments, scores, labels), vid, grid, duration in zip(candidates, video_ids, grids, durations_s):
        seconds = grid.to_seconds(segments.double().cpu().numpy()).reshape(-1, 2)
        out.append(VideoDetections(vid, seconds, scores.cpu().numpy(), labels.cpu().numpy(), duration))
    return out


def suppress(windows: list[VideoDetections], cfg: PostprocessConfig) -> list[VideoDetections]:
    """One entry per video, in order of first appearance: the candidates of all of a
    video's windows pooled and post-processed once (`e2etal.postprocess`, in seconds,
    clipped to the video's duration)."""
    by_video: dict[str, list[VideoDetections]] = {}
    for w in windows:
        by_video.setdefault(w.video_id, []).append(w)
    pooled, durations = [], []
    for parts in by_video.values():
        pooled.append((
            torch.from_numpy(np.concatenate([p.segments_s for p in parts]).reshape(-1, 2)),
            torch.from_numpy(np.concatenate([p.scores for p in parts])),
            torch.from_numpy(np.concatenate([p.labels for p in parts]).astype(np.int64)),
        ))
        durations.append(parts[0].duration_s)
    results = postprocess_videos(pooled, cfg, durations)
    return [
        VideoDetections(vid, s.numpy(), p.numpy(), c.numpy(), duration)
        for vid, (s, p, c), duration in zip(by_video, results, durations)
    ]


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
        return to_seconds(self.head.decode(out), batch.video_ids, batch.grids, batch.durations_s)


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
        return to_seconds(self.head.decode(out), batch.video_ids, batch.grids, batch.durations_s)


class LoFiDetector(nn.Module):
    """End to end through a trainable encoder (LoFi's stage 2): every snippet
    `[3, F, H, W]` of a video is a clip the encoder turns into one feature
    (`clip_features`), and the head reads a video's snippets as its sequence.

    `micro_batch` snippets go through the encoder at a time (None: all of a batch's
    at once); with activation checkpointing in the encoder, what is kept for backward is
    then about one micro-batch of block inputs per block. The encoder's weights are part of
    the checkpoint: they are what stage 2 trains.
    """

    def __init__(self, encoder: nn.Module, head: ActionFormerHead, micro_batch: int | None = None,
                 even_calls: bool = False):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.micro_batch = micro_batch
        # Sharded training (FSDP2) communicates in the backward of every encoder call, so
        # every rank must make as many calls a step, whatever the size of its part: its
        # part is then cut into the largest number of micro-batches any rank needs.
        self.even_calls = even_calls

    def features(self, batch: SnippetBatch) -> torch.Tensor:  # [B, C, T]
        b, length = batch.clips.shape[:2]
        clips = batch.clips.flatten(0, 1)  # [B * L, 3, F, H, W]
        step = self.micro_batch or clips.shape[0]
        parts = clips.split(step)
        if self.even_calls and torch.is_grad_enabled():
            parts = clips.tensor_split(distributed.max_over_ranks(len(parts)))
        feats = torch.cat([self.encoder.clip_features(part) for part in parts])  # [B * L, C]
        feats = feats.view(b, length, -1).transpose(1, 2)  # [B, C, L]
        return nn.functional.pad(feats, (0, batch.mask.shape[1] - length))  # [B, C, T], zero padding

    def losses(self, batch: SnippetBatch) -> dict[str, torch.Tensor]:
        out = self.head(self.features(batch), batch.mask)
        return self.head.loss(out, batch.segments, batch.labels)

    @torch.no_grad()
    def detect(self, batch: SnippetBatch) -> list[VideoDetections]:
        out = self.head(self.features(batch), batch.mask)
        return to_seconds(self.head.decode(out), batch.video_ids, batch.grids, batch.durations_s)
