"""Snippets of raw video for LoFi: a video (or a window of it) as L snippets, each a few
frames around its centre, decoded at the fidelity a batch asks for.

Snippet i of a span [start_s, start_s + length_s) is centred at `start_s + (i + 1/2) *
step_s`, `step_s = length_s / L`; its `snippet_frames` frames lie `frame_interval` video
frames apart around the centre (the frame shown at each of those times, sample-and-hold).
Only those frames are decoded to RGB, resized to the fidelity's size on the way
(`read_frames_at`), so a 25-snippet batch costs 25 x 8 frames, not the video. The span is
the whole video (ActivityNet's protocol), or windows of `window_s` (THUMOS-14's: one
random window per video per training epoch, windows tiled at half overlap otherwise).

Positions of the head are snippets: the time grid is `FeatureGrid(start_s + step_s / 2,
step_s)`, as for features resized to L over the video (`FeatureDataConfig.resize_length`),
so fewer snippets mean fewer, coarser positions and proportionally scaled targets.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from e2etal.data.annotations import Annotations, ClassMap, VideoAnnotation
from e2etal.data.crop import crop_segments, epoch_generator
from e2etal.data.features import FeatureGrid
from e2etal.data.video import normalize_clip, read_frames_at
from e2etal.data.windows import VideoDataConfig, probe_subset
from e2etal.lofi.config import LoFiConfig
from e2etal.lofi.fidelity import Fidelity, FidelitySchedule

log = logging.getLogger(__name__)

__all__ = ["FidelityBatches", "SnippetBatch", "SnippetDataset", "SnippetItem", "collate_snippets", "snippet_times"]


def snippet_times(start_s: float, length_s: float, snippets: int, snippet_frames: int, interval_s: float) -> np.ndarray:
    """`[snippets, snippet_frames]` times (seconds) of every snippet's frames, clamped to >= 0."""
    step = length_s / snippets
    centres = start_s + (np.arange(snippets) + 0.5) * step  # [L]
    offsets = (np.arange(snippet_frames) - (snippet_frames - 1) / 2) * interval_s  # [F]
    return np.maximum(centres[:, None] + offsets[None, :], 0.0)


@dataclass
class _Span:
    video_id: str
    start_s: float  # 0 for the whole video; training spans are drawn per epoch
    length_s: float


@dataclass
class SnippetItem:
    video_id: str
    clips: Tensor  # [L, 3, snippet_frames, size, size] float
    segments: Tensor  # [K, 2] in snippet positions
    labels: Tensor  # [K]
    grid: FeatureGrid
    duration_s: float | None


@dataclass
class SnippetBatch:
    video_ids: list[str]
    clips: Tensor  # [B, L, 3, F, H, W]
    mask: Tensor  # [B, T] bool; T >= L (padded to the head's largest stride), first L valid
    segments: list[Tensor]
    labels: list[Tensor]
    grids: list[FeatureGrid]
    durations_s: list[float | None]

    def to(self, device: torch.device) -> SnippetBatch:
        return SnippetBatch(self.video_ids, self.clips.to(device, non_blocking=True), self.mask.to(device),
                            [s.to(device) for s in self.segments], [lbl.to(device) for lbl in self.labels],
                            self.grids, self.durations_s)


def collate_snippets(items: list[SnippetItem], pad_multiple: int) -> SnippetBatch:
    snippets = {it.clips.shape[0] for it in items}
    if len(snippets) != 1:
        raise ValueError(f"a batch mixes fidelities: {sorted(snippets)} snippets")
    (length,) = snippets
    padded = math.ceil(length / pad_multiple) * pad_multiple
    mask = torch.zeros(len(items), padded, dtype=torch.bool)
    mask[:, :length] = True
    return SnippetBatch([it.video_id for it in items], torch.stack([it.clips for it in items]), mask,
                        [it.segments for it in items], [it.labels for it in items], [it.grid for it in items],
                        [it.duration_s for it in items])


class SnippetDataset(torch.utils.data.Dataset):
    """The videos of one subset as snippets (module docstring), with ground truth in
    snippet positions.

    `dataset[(index, fidelity)]` gives span `index` at that fidelity (a `Fidelity`: its
    `snippets` and `size`), `dataset[index]` at `full`. Every video is probed when the
    dataset is built: missing or unreadable files, and videos with fewer frames than
    snippets, are reported all at once (or skipped with `video.skip_missing`)."""

    def __init__(self, video: VideoDataConfig, cfg: LoFiConfig, full: Fidelity, annotations: Annotations, subset: str,
                 classes: ClassMap, training: bool, seed: int = 0):
        self.video_cfg, self.cfg, self.full = video, cfg, full
        self.classes, self.training, self.seed = classes, training, seed
        self.epoch = 0

        def too_short(path, vid: str, info) -> str | None:
            if info.num_frames >= full.snippets:
                return None
            return (f"{path}: video {vid!r} has {info.num_frames} frames, fewer than the {full.snippets} snippets of "
                    "lofi.schedule.snippets: too short")

        gt, usable = probe_subset(video, annotations, subset, training, check=too_short)
        self.source = gt.source
        self.videos: dict[str, VideoAnnotation] = {vid: ann for vid, (ann, _) in usable.items()}
        self.fps: dict[str, float] = {vid: info.fps for vid, (_, info) in usable.items()}
        self.spans = self._spans()

    def _spans(self) -> list[_Span]:
        window = self.cfg.window_s
        if window is None:
            return [_Span(v, 0.0, a.duration_s) for v, a in self.videos.items()]
        if self.training:
            return [_Span(v, 0.0, min(window, a.duration_s)) for v, a in self.videos.items()]
        spans = []
        for vid, ann in self.videos.items():
            last = max(0.0, ann.duration_s - window)
            starts = list(np.arange(0.0, last + 1e-9, window / 2)) or [0.0]
            if starts[-1] < last:
                starts.append(last)
            spans.extend(_Span(vid, float(s), min(window, ann.duration_s)) for s in starts)
        return spans

    def __len__(self) -> int:
        return len(self.spans)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _span(self, index: int) -> _Span:
        span = self.spans[index]
        duration = self.videos[span.video_id].duration_s
        if not self.training or self.cfg.window_s is None or duration <= self.cfg.window_s:
            return span
        gen = epoch_generator(self.seed, self.epoch, index)
        start = float(torch.rand((), generator=gen, dtype=torch.float64)) * (duration - self.cfg.window_s)
        return _Span(span.video_id, start, self.cfg.window_s)

    def __getitem__(self, key: int | tuple[int, Fidelity]) -> SnippetItem:
        index, fidelity = key if isinstance(key, tuple) else (key, self.full)
        return self._item(self._span(index), fidelity)

    def whole_video(self, video_id: str, fidelity: Fidelity, step_s: float | None = None) -> SnippetItem:
        """A whole video at `fidelity`, whatever the protocol: its `fidelity.snippets`
        snippets, or with `step_s` one snippet every `step_s` seconds over as much of it
        as whole steps cover (LoFi's stage 3)."""
        duration = self.videos[video_id].duration_s
        if step_s is None:
            return self._item(_Span(video_id, 0.0, duration), fidelity, crop=False)
        count = max(1, math.floor(duration / step_s + 1e-9))
        return self._item(_Span(video_id, 0.0, count * step_s), Fidelity(count, fidelity.size, fidelity.batch), crop=False)

    def _item(self, span: _Span, fidelity: Fidelity, crop: bool | None = None) -> SnippetItem:
        video = self.videos[span.video_id]
        interval_s = self.cfg.frame_interval / self.fps[span.video_id]
        times = snippet_times(span.start_s, span.length_s, fidelity.snippets, self.cfg.snippet_frames, interval_s)
        flat = times.reshape(-1)  # [L * F]
        order = np.argsort(flat, kind="stable")  # snippets may overlap: read in time order
        frames = read_frames_at(self.video_cfg.video_path(span.video_id), flat[order], size=(fidelity.size,) * 2)
        frames = frames[torch.from_numpy(np.argsort(order, kind="stable"))]  # back to [L * F] snippet order
        clips = normalize_clip(frames, self.video_cfg.mean, self.video_cfg.std)  # [L * F, 3, H, W]
        clips = clips.view(fidelity.snippets, self.cfg.snippet_frames, *clips.shape[1:]).transpose(1, 2)  # [L, 3, F, H, W]
        step = span.length_s / fidelity.snippets
        grid = FeatureGrid(offset_s=span.start_s + step / 2, step_s=step)
        seconds = torch.tensor([[i.start_s, i.end_s] for i in video.instances], dtype=torch.float64).reshape(-1, 2)
        segments = grid.to_feature(seconds).float()
        labels = torch.tensor([self.classes.index(i.label) for i in video.instances], dtype=torch.long)
        if self.training if crop is None else crop:
            inside, keep = crop_segments(segments, -0.5, fidelity.snippets - 0.5, self.cfg.crop_keep_ratio)
            segments, labels = inside[keep], labels[keep]
        return SnippetItem(span.video_id, clips.contiguous(), segments, labels, grid, video.duration_s)


class FidelityBatches(torch.utils.data.Sampler):
    """One epoch's batches: the spans in a random order, cut into batches whose size and
    fidelity the schedule gives for each step (`schedule(epoch, step)`, `step` counted
    from `first_step`, the batches of all epochs before). Each batch is a list of
    `(index, fidelity)` keys of a `SnippetDataset`; `summary` counts them per fidelity."""

    def __init__(self, size: int, schedule: FidelitySchedule, epoch: int, first_step: int, generator: torch.Generator):
        order = torch.randperm(size, generator=generator).tolist()
        self.batches: list[list[tuple[int, Fidelity]]] = []
        start, step = 0, first_step
        while start < size:
            fidelity = schedule(epoch, step)
            self.batches.append([(i, fidelity) for i in order[start : start + fidelity.batch]])
            start, step = start + fidelity.batch, step + 1
        counts: dict[Fidelity, int] = {}
        for batch in self.batches:
            counts[batch[0][1]] = counts.get(batch[0][1], 0) + 1
        self.summary = " | ".join(f"{f.snippets}x{f.size}px b{f.batch}: {n}" for f, n in counts.items())

    def __iter__(self) -> Iterator[list[tuple[int, Fidelity]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    @staticmethod
    def epoch_sizes(size: int, schedule: FidelitySchedule, epochs: int) -> list[int]:
        """Batches in each of `epochs` epochs (they depend on the sizes only, not the order)."""
        counts, step = [], 0
        for epoch in range(epochs):
            start, n = 0, 0
            while start < size:
                start += schedule(epoch, step + n).batch
                n += 1
            counts.append(n)
            step += n
        return counts
