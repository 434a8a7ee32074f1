"""Raw-video windows for end-to-end training (LoSA and frozen-backbone baselines).

A video is decoded at `fps` and resized to `size x size`; a window of `window_frames`
frames is cut into clips of `clip_frames` frames, and the backbone turns each clip into
`clip_frames / t` temporal positions, t = the backbone's frames per position (a ViT's
tubelet, 1 for a TSM-ResNet: `FrozenBackbone.frames_per_position`). Position j of a
window that starts at frame s covers frames [s + t*j, s + t*(j+1)), so its centre is at
`(s + t*j + t/2) / fps` seconds: the window's time grid has `step_s = t / fps` and
`offset_s = (s + t/2) / fps`.

Two layouts:
* windows (THUMOS-14 style, `window_frames` set): training takes one random window per
  video and epoch (starting on a clip boundary, keeping where possible an action with at
  least `crop_keep_ratio` of its length inside); evaluation slides windows with
  `eval_stride_frames` and merges their detections per video;
* whole video resampled (ActivityNet style, `resize_frames` set): `resize_frames` frames
  evenly spaced over the duration, one window per video.

Window starts are multiples of `clip_frames`, so a window's clips are exactly clips of the
whole video: pooled taps cached per video (`e2etal.adapters.tap_cache`) slice into the
same values a window would compute.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from e2etal.data.annotations import Annotations, ClassMap, VideoAnnotation
from e2etal.data.crop import crop_segments, epoch_generator, random_window_start
from e2etal.data.features import FeatureGrid
from e2etal.data.video import ClipSampler, VideoError, VideoInfo, iter_frames, probe_video, read_frames, to_clips

log = logging.getLogger(__name__)


@dataclass
class VideoDataConfig:
    annotations: str = ""
    video_dir: str = ""
    file_template: str = "{video_id}.mp4"
    train_subset: str = "training"
    val_subset: str = "validation"
    fps: float = 30.0  # decode rate (frames are resampled to it)
    size: int = 224  # frames are resized to size x size (no crop, as VideoMAEv2's TAD code)
    # Per-channel normalisation on the [0, 1] scale. None = the backbone's own: none for a
    # VideoMAE / VideoMAEv2 ViT (as their TAD code), ImageNet's for a TSM-ResNet.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    clip_frames: int = 16
    window_frames: int | None = 768  # THUMOS style; None = whole video resampled
    resize_frames: int | None = None  # ActivityNet style: every video sampled to this many frames
    eval_stride_frames: int | None = None  # evaluation window stride; None = window_frames / 2
    crop_keep_ratio: float = 0.5
    augment: bool = True  # training: random spatial crop (>= crop_scale of the side) and flip
    crop_scale: float = 0.8
    tap_cache: str | None = None  # folder for cached pooled taps (used only when augment is false)
    skip_missing: bool = False

    def __post_init__(self) -> None:
        if (self.window_frames is None) == (self.resize_frames is None):
            raise ValueError("video: set exactly one of window_frames (THUMOS style) and resize_frames (ActivityNet style)")
        frames = self.window_frames or self.resize_frames
        if frames % self.clip_frames:
            raise ValueError(f"video: {frames} frames per window is not a multiple of clip_frames {self.clip_frames}")
        stride = self.eval_stride_frames
        if stride is not None and (stride <= 0 or stride % self.clip_frames):
            raise ValueError(f"video.eval_stride_frames: expected a positive multiple of clip_frames, got {stride}")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"video.crop_scale: expected in (0, 1], got {self.crop_scale}")

    @property
    def frames_per_window(self) -> int:
        return self.window_frames or self.resize_frames

    def video_path(self, video_id: str) -> Path:
        return Path(self.video_dir) / self.file_template.format(video_id=video_id)


@dataclass
class Window:
    video_id: str
    start_frame: int  # first frame of the window, at cfg.fps (0 in resized layout)


@dataclass
class VideoItem:
    video_id: str
    start_frame: int
    clips: Tensor | None  # [N, 3, clip_frames, size, size] float in [0, 1]; None when taps are cached
    taps: tuple[Tensor, Tensor] | None  # cached (tapped [T', L, g*g, D], last [T', g*g, D])
    num_positions: int  # valid temporal positions of the window
    segments: Tensor  # [K, 2] in window positions
    labels: Tensor  # [K]
    grid: FeatureGrid
    duration_s: float | None


@dataclass
class VideoBatch:
    video_ids: list[str]
    start_frames: list[int]
    clips: list[Tensor | None]  # per window [N_i, 3, F, H, W]
    taps: list[tuple[Tensor, Tensor] | None]  # per window, from the tap cache
    mask: Tensor  # [B, T'] bool
    segments: list[Tensor]
    labels: list[Tensor]
    grids: list[FeatureGrid]
    durations_s: list[float | None]

    def to(self, device: torch.device) -> VideoBatch:
        return VideoBatch(
            self.video_ids,
            self.start_frames,
            self.clips,  # moved micro-batch by micro-batch by the frozen pass
            [None if t is None else (t[0].to(device), t[1].to(device)) for t in self.taps],
            self.mask.to(device),
            [s.to(device) for s in self.segments],
            [lbl.to(device) for lbl in self.labels],
            self.grids,
            self.durations_s,
        )


def collate_windows(items: list[VideoItem], pad_multiple: int) -> VideoBatch:
    length = max(it.num_positions for it in items)
    length = math.ceil(length / pad_multiple) * pad_multiple
    mask = torch.zeros(len(items), length, dtype=torch.bool)
    for b, it in enumerate(items):
        mask[b, : it.num_positions] = True
    return VideoBatch(
        [it.video_id for it in items],
        [it.start_frame for it in items],
        [it.clips for it in items],
        [it.taps for it in items],
        mask,
        [it.segments for it in items],
        [it.labels for it in items],
        [it.grid for it in items],
        [it.duration_s for it in items],
    )


def probe_subset(cfg: VideoDataConfig, annotations: Annotations, subset: str, training: bool,
                 check: Callable[[Path, str, VideoInfo], str | None] = lambda path, vid, info: None,
                 ) -> tuple[Annotations, dict[str, tuple[VideoAnnotation, VideoInfo]]]:
    """The video files of a subset, probed: the subset's ground truth (clipped to the
    durations when `training`) and, per usable video, its annotation (with the file's
    duration where the annotation has none) and `VideoInfo`. Files that cannot be read, or
    that `check(path, video_id, info)` finds a problem with, are reported all at once, or
    skipped with a warning under `cfg.skip_missing`."""
    gt = annotations.subset(subset)
    if training:
        gt = gt.clipped_to_duration()
    usable: dict[str, tuple[VideoAnnotation, VideoInfo]] = {}
    problems = []
    for vid in sorted(gt.videos):
        path = cfg.video_path(vid)
        try:
            info = probe_video(path)
        except VideoError as e:
            problems.append(str(e))
            continue
        problem = check(path, vid, info)
        if problem:
            problems.append(problem)
            continue
        video = gt.videos[vid]
        if video.duration_s is None:
            video = VideoAnnotation(vid, video.subset, info.duration_s, video.fps, video.instances)
        usable[vid] = (video, info)
    if problems:
        listing = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        if not cfg.skip_missing:
            raise ValueError(f"{len(problems)} of {len(gt.videos)} videos of subset {subset!r} cannot be used "
                             f"(set video.skip_missing=true to skip them):\n  {listing}")
        log.warning("skipping %d video(s) of subset %r:\n  %s", len(problems), subset, listing)
    if not usable:
        raise ValueError(f"no usable video in subset {subset!r} of {gt.source} (videos in {cfg.video_dir})")
    return gt, usable


def window_grid(cfg: VideoDataConfig, start_frame: int, frames_per_position: int, duration_s: float | None) -> FeatureGrid:
    t = frames_per_position
    if cfg.resize_frames is not None:
        frame_s = duration_s / cfg.resize_frames
        return FeatureGrid(offset_s=t * frame_s / 2, step_s=t * frame_s)
    return FeatureGrid(offset_s=(start_frame + t / 2) / cfg.fps, step_s=t / cfg.fps)


class VideoWindows(torch.utils.data.Dataset):
    """Windows of the videos of one subset with ground truth in window positions.

    Every video file is probed when the dataset is built: missing or unreadable files are
    reported all at once (or skipped with `skip_missing`). `training=True` draws one
    random window per video (reproducibly from seed, epoch and index), clips ground truth
    to the duration, and augments when `cfg.augment`; otherwise the windows tile each
    video. With a `tap_cache` (filled beforehand by `TapCache.fill`), items carry the
    window's slice of the cached pooled taps instead of decoded clips.
    `frames_per_position` is the backbone's (`FrozenBackbone.frames_per_position`).
    """

    def __init__(self, cfg: VideoDataConfig, annotations: Annotations, subset: str, classes: ClassMap,
                 training: bool, frames_per_position: int = 2, seed: int = 0, tap_cache=None):
        self.cfg, self.classes, self.training, self.seed = cfg, classes, training, seed
        self.frames_per_position = frames_per_position
        if tap_cache is not None and training and cfg.augment:
            raise ValueError("video.tap_cache needs video.augment=false: augmented windows differ every epoch")
        self.tap_cache = tap_cache
        # Non-overlapping clips, the last one padded by repeating the final frame.
        self.sampler = ClipSampler(clip_frames=cfg.clip_frames, stride_frames=cfg.clip_frames)
        self.epoch = 0
        gt, usable = probe_subset(cfg, annotations, subset, training)
        self.source = gt.source
        self.videos: dict[str, VideoAnnotation] = {}
        self.num_frames: dict[str, int] = {}
        for vid, (video, info) in usable.items():
            self.videos[vid] = video
            self.num_frames[vid] = max(1, int(math.floor(min(video.duration_s, info.duration_s) * cfg.fps + 1e-6)))
            if cfg.resize_frames is None and self.num_frames[vid] < cfg.clip_frames:
                log.warning("%s: video %r has %d frame(s) at %g fps, fewer than one clip of %d; its clip is padded "
                            "by repeating the last frame", cfg.video_path(vid), vid, self.num_frames[vid], cfg.fps,
                            cfg.clip_frames)
        self.windows = self._tile() if not training else [Window(v, 0) for v in self.videos]

    def _tile(self) -> list[Window]:
        cfg = self.cfg
        if cfg.resize_frames is not None:
            return [Window(v, 0) for v in self.videos]
        stride = cfg.eval_stride_frames or max(cfg.clip_frames, cfg.window_frames // 2 // cfg.clip_frames * cfg.clip_frames)
        windows = []
        for vid, n in self.num_frames.items():
            last = max(0, n - cfg.window_frames)
            starts = list(range(0, last + 1, stride))
            tail = math.ceil(last / cfg.clip_frames) * cfg.clip_frames
            if starts[-1] < last:
                starts.append(tail)
            windows.extend(Window(vid, s) for s in starts)
        return windows

    def __len__(self) -> int:
        return len(self.windows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _instances(self, video: VideoAnnotation, grid: FeatureGrid) -> tuple[Tensor, Tensor]:
        seconds = torch.tensor([[i.start_s, i.end_s] for i in video.instances], dtype=torch.float64).reshape(-1, 2)
        labels = torch.tensor([self.classes.index(i.label) for i in video.instances], dtype=torch.long)
        # Boundaries sit between positions: position j spans [j - 1/2, j + 1/2] on the grid.
        return grid.to_feature(seconds).float(), labels

    def _random_start(self, index: int, segments_s: Tensor, num_frames: int) -> int:
        """A training window start on a clip boundary, keeping an action where possible."""
        cfg = self.cfg
        last = num_frames - cfg.window_frames
        if last <= 0:
            return 0
        candidates = torch.arange(0, last + cfg.clip_frames, cfg.clip_frames)
        return random_window_start(candidates, cfg.window_frames, segments_s * cfg.fps, cfg.crop_keep_ratio,
                                   epoch_generator(self.seed, self.epoch, index))

    def __getitem__(self, index: int) -> VideoItem:
        cfg = self.cfg
        window = self.windows[index]
        video = self.videos[window.video_id]
        num_frames = self.num_frames[window.video_id]
        start = window.start_frame
        if self.training and cfg.window_frames is not None:
            seconds = torch.tensor([[i.start_s, i.end_s] for i in video.instances], dtype=torch.float64).reshape(-1, 2)
            start = self._random_start(index, seconds, num_frames)
        frames_in_window = cfg.frames_per_window if cfg.resize_frames else min(cfg.window_frames, num_frames - start)
        num_positions = math.ceil(frames_in_window / self.frames_per_position)
        grid = window_grid(cfg, start, self.frames_per_position, video.duration_s)
        segments, labels = self._instances(video, grid)
        if self.training:
            inside, keep = crop_segments(segments, -0.5, num_positions - 0.5, cfg.crop_keep_ratio)
            segments, labels = inside[keep], labels[keep]
        clips = taps = None
        if self.tap_cache is not None:
            tapped, last = self.tap_cache.load(window.video_id)
            first = start // self.frames_per_position
            taps = (tapped[first : first + num_positions], last[first : first + num_positions])
        else:
            end = start + (cfg.frames_per_window if cfg.resize_frames else frames_in_window)
            clips = to_clips(self.read_frames(window.video_id, start, end), self.sampler, cfg.mean, cfg.std)
            if self.training and cfg.augment:
                # A stream of its own (index offset), apart from the window draw's.
                clips = self._augment(clips, epoch_generator(self.seed, self.epoch, index + 7919))
        return VideoItem(window.video_id, start, clips=clips, taps=taps, num_positions=num_positions,
                         segments=segments, labels=labels, grid=grid, duration_s=video.duration_s)

    def read_frames(self, video_id: str, start: int, end: int) -> Tensor:
        """uint8 frames [end - start, size, size, 3] of a video at cfg.fps (in the resized
        layout: of its `resize_frames` evenly spaced frames)."""
        cfg = self.cfg
        path = cfg.video_path(video_id)
        size = (cfg.size, cfg.size)
        if cfg.resize_frames is not None:
            frames, _ = read_frames(path, size=size)
            idx = np.linspace(0, len(frames) - 1, cfg.resize_frames).round().astype(np.int64)
            return frames[torch.from_numpy(idx[start:end])]
        frames, _ = read_frames(path, fps=cfg.fps, size=size, start_s=start / cfg.fps, end_s=end / cfg.fps)
        frames = frames[: end - start]
        if len(frames) == 0:
            raise VideoError(path, f"no frame decoded between {start / cfg.fps:.2f} s and {end / cfg.fps:.2f} s")
        return frames

    def open_video(self, video_id: str) -> tuple[float, Iterator[Tensor]]:
        """A whole video's frames for a `ClipStream` (the tap cache's input): the frame rate
        and uint8 chunks `[K, size, size, 3]`, the frames a window reads (`read_frames`)
        for the whole video, in order."""
        cfg = self.cfg
        if cfg.resize_frames is not None:
            frames = self.read_frames(video_id, 0, cfg.resize_frames)
            return cfg.resize_frames / self.videos[video_id].duration_s, iter([frames])
        path = cfg.video_path(video_id)
        stream = iter_frames(path, fps=cfg.fps, size=(cfg.size, cfg.size), end_s=self.num_frames[video_id] / cfg.fps)
        return cfg.fps, _frame_chunks(stream)

    def _augment(self, clips: Tensor, gen: torch.Generator) -> Tensor:
        """The same random square crop (side >= crop_scale) resized back, and horizontal
        flip, for every frame of the window. clips: [N, 3, F, H, W]."""
        cfg = self.cfg
        n, c, f, size, _ = clips.shape
        side = int(round(size * (cfg.crop_scale + (1 - cfg.crop_scale) * float(torch.rand((), generator=gen)))))
        top = int(torch.randint(0, size - side + 1, (1,), generator=gen))
        left = int(torch.randint(0, size - side + 1, (1,), generator=gen))
        x = clips[..., top : top + side, left : left + side]
        if side != size:
            x = F.interpolate(x.reshape(n * c, f, side, side), size=(size, size), mode="bilinear", align_corners=False)
            x = x.reshape(n, c, f, size, size)
        if float(torch.rand((), generator=gen)) < 0.5:
            x = x.flip(-1)
        return x.contiguous()



def _frame_chunks(stream: Iterator[tuple[Tensor, np.ndarray]]) -> Iterator[Tensor]:
    """The frame chunks of an `iter_frames` stream, closing it when closed."""
    try:
        for chunk, _ in stream:
            yield chunk
    finally:
        stream.close()
