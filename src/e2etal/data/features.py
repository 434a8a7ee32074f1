"""Pre-extracted features: one `[T, C]` array per video (ActionFormer's layout), the
feature index <-> seconds bookkeeping, and the dataset and batches the head trains on.

Time grid. Feature i of a video is centred at `offset_s + i * step_s` seconds:
* strided clips (THUMOS-14 style): `step_s = stride_frames / fps` and
  `offset_s = offset_frames / fps`, where `offset_frames` defaults to half a clip
  (`clip_frames / 2`): the clip of feature i covers frames
  `[i * stride, i * stride + clip_frames)`, and its centre is ActionFormer's
  `0.5 * num_frames` offset;
* resized to a fixed length L over the whole video (ActivityNet style):
  `step_s = duration_s / L`, `offset_s = step_s / 2`.
A time `t` maps to the (fractional) feature coordinate `(t - offset_s) / step_s`; the head
predicts in those coordinates and `FeatureGrid.to_seconds` maps back.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from e2etal.data.annotations import Annotations, ClassMap, VideoAnnotation
from e2etal.data.crop import crop_segments, epoch_generator, random_window_start

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureGrid:
    offset_s: float  # time of feature 0's centre
    step_s: float  # seconds between consecutive features

    def to_feature(self, times_s: np.ndarray | Tensor) -> np.ndarray | Tensor:
        return (times_s - self.offset_s) / self.step_s

    def to_seconds(self, coords: np.ndarray | Tensor) -> np.ndarray | Tensor:
        return coords * self.step_s + self.offset_s


@dataclass
class FeatureDataConfig:
    annotations: str = ""  # ground-truth JSON or CSV
    feature_dir: str = ""  # folder of per-video feature arrays
    file_template: str = "{video_id}.npy"  # file name of a video's [T, C] features
    train_subset: str = "training"
    val_subset: str = "validation"
    feature_dim: int | None = None  # expected C; None = whatever the first file has
    fps: float | None = None  # None = each video's `fps` from the annotations
    stride_frames: float = 4.0  # frames between consecutive features
    clip_frames: int = 16  # frames seen by one feature
    offset_frames: float | None = None  # centre of feature 0 in frames; None = clip_frames / 2
    resize_length: int | None = None  # resize every video to this many features (ActivityNet)
    max_seq_len: int = 2304  # training crops longer videos to this many features
    crop_keep_ratio: float = 0.5  # a cropped action is kept if this fraction of it stays inside
    crop_ratio: tuple[float, float] | None = None  # also crop shorter videos to this fraction of their length
    skip_missing: bool = False  # skip videos whose feature file is missing or malformed

    def __post_init__(self) -> None:
        if self.stride_frames <= 0 or self.clip_frames <= 0:
            raise ValueError("data: stride_frames and clip_frames must be positive")
        if self.resize_length is not None and self.resize_length < 2:
            raise ValueError(f"data.resize_length: expected >= 2 or null, got {self.resize_length}")
        if self.crop_ratio is not None and not 0 < self.crop_ratio[0] <= self.crop_ratio[1] <= 1:
            raise ValueError(f"data.crop_ratio: expected [low, high] with 0 < low <= high <= 1, got {self.crop_ratio}")
        if not 0 < self.crop_keep_ratio <= 1:
            raise ValueError(f"data.crop_keep_ratio: expected in (0, 1], got {self.crop_keep_ratio}")


def feature_path(cfg: FeatureDataConfig, video_id: str) -> Path:
    return Path(cfg.feature_dir) / cfg.file_template.format(video_id=video_id)


def video_fps(cfg: FeatureDataConfig, video: VideoAnnotation, source: str) -> float:
    fps = cfg.fps if cfg.fps is not None else video.fps
    if fps is None or fps <= 0:
        raise ValueError(f"{source}: video {video.video_id!r} has no 'fps'; set data.fps in the config")
    return fps


def feature_grid(cfg: FeatureDataConfig, video: VideoAnnotation, source: str = "annotations") -> FeatureGrid:
    """The time grid of a video's features (see the module docstring)."""
    if cfg.resize_length is not None:
        if video.duration_s is None:
            raise ValueError(f"{source}: video {video.video_id!r} has no 'duration', needed by data.resize_length")
        step = video.duration_s / cfg.resize_length
        return FeatureGrid(offset_s=step / 2, step_s=step)
    fps = video_fps(cfg, video, source)
    offset = cfg.offset_frames if cfg.offset_frames is not None else cfg.clip_frames / 2
    return FeatureGrid(offset_s=offset / fps, step_s=cfg.stride_frames / fps)


_CHECK_ROWS = 4096  # rows of a mapped feature file checked for NaN / infinity at a time


def load_feature_file(path: Path, video_id: str, feature_dim: int | None, mapped: bool = False) -> np.ndarray:
    """Read one `[T, C]` array (`.npy`), checking shape, dtype and that every value is
    finite. `mapped` maps the file instead of reading it into memory and checks its values
    a block of rows at a time: how a dataset checks many files before training starts."""
    try:
        feats = np.load(path, allow_pickle=False, mmap_mode="r" if mapped else None)
    except FileNotFoundError:
        raise ValueError(f"{path}: feature file of video {video_id!r} not found") from None
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: feature file of video {video_id!r} cannot be read ({e})") from None
    if feats.ndim != 2 or feats.shape[0] < 1:
        raise ValueError(f"{path}: video {video_id!r}: expected features [T, C], got shape {feats.shape}")
    if feature_dim is not None and feats.shape[1] != feature_dim:
        raise ValueError(f"{path}: video {video_id!r}: expected {feature_dim} channels (data.feature_dim), got {feats.shape[1]}")
    if not np.issubdtype(feats.dtype, np.floating):
        raise ValueError(f"{path}: video {video_id!r}: expected floating-point features, got {feats.dtype}")
    for start in range(0, feats.shape[0], _CHECK_ROWS):
        finite = np.isfinite(feats[start : start + _CHECK_ROWS]).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise ValueError(f"{path}: video {video_id!r}: features contain NaN or infinity (first at step {row})")
    if mapped:
        return feats
    return feats.astype(np.float32, copy=False)


@dataclass
class FeatureItem:
    video_id: str
    features: Tensor  # [C, T]
    segments: Tensor  # [N, 2] feature coordinates
    labels: Tensor  # [N] long
    grid: FeatureGrid  # of the (possibly cropped) features: coordinate 0 = features[:, 0]
    duration_s: float | None


@dataclass
class FeatureBatch:
    video_ids: list[str]
    features: Tensor  # [B, C, T]
    mask: Tensor  # [B, T] bool
    segments: list[Tensor]  # per video [N_i, 2] feature coordinates
    labels: list[Tensor]  # per video [N_i]
    grids: list[FeatureGrid]
    durations_s: list[float | None]

    def to(self, device: torch.device) -> FeatureBatch:
        return FeatureBatch(
            self.video_ids,
            self.features.to(device, non_blocking=True),
            self.mask.to(device, non_blocking=True),
            [s.to(device) for s in self.segments],
            [lbl.to(device) for lbl in self.labels],
            self.grids,
            self.durations_s,
        )


class FeatureDataset(torch.utils.data.Dataset):
    """Videos of one subset with their features and ground truth in feature coordinates.

    Every feature file is checked when the dataset is built (shape, dtype, and that every
    value is finite), so a missing or malformed file is reported (all of them at once)
    before training starts, not mid-epoch; with `skip_missing` such videos are left out
    with a warning instead.

    `training=True` clips ground truth to the video's duration and crops sequences longer
    than `max_seq_len` at random (reproducibly: the crop depends on the seed, the epoch
    and the index only)."""

    def __init__(self, cfg: FeatureDataConfig, annotations: Annotations, subset: str, classes: ClassMap, training: bool, seed: int = 0):
        self.cfg = cfg
        self.classes = classes
        self.training = training
        self.seed = seed
        self.epoch = 0
        gt = annotations.subset(subset)
        if training:
            gt = gt.clipped_to_duration()
        self.source = gt.source
        self.videos: list[VideoAnnotation] = []
        self.lengths: list[int] = []
        problems = []
        feature_dim = cfg.feature_dim
        for vid in sorted(gt.videos):
            path = feature_path(cfg, vid)
            try:
                feats = load_feature_file(path, vid, feature_dim, mapped=True)
            except ValueError as e:
                problems.append(str(e))
                continue
            feature_dim = feats.shape[1]
            self.lengths.append(feats.shape[0])
            self.videos.append(gt.videos[vid])
        if problems:
            listing = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
            if not cfg.skip_missing:
                raise ValueError(
                    f"{len(problems)} of {len(gt.videos)} feature files of subset {subset!r} are missing or malformed "
                    f"(set data.skip_missing=true to skip them):\n  {listing}"
                )
            log.warning("skipping %d video(s) of subset %r:\n  %s", len(problems), subset, listing)
        if not self.videos:
            raise ValueError(f"no usable video in subset {subset!r} of {self.source} (features in {cfg.feature_dir})")
        self.feature_dim = feature_dim

    def __len__(self) -> int:
        return len(self.videos)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> FeatureItem:
        cfg = self.cfg
        video = self.videos[index]
        path = feature_path(cfg, video.video_id)
        feats = torch.from_numpy(load_feature_file(path, video.video_id, self.feature_dim)).t()  # [C, T]
        grid = feature_grid(cfg, video, self.source)
        if cfg.resize_length is not None:
            feats = resize_features(feats, cfg.resize_length)
        segments = torch.tensor([[i.start_s, i.end_s] for i in video.instances], dtype=torch.float64).reshape(-1, 2)
        segments = grid.to_feature(segments).float()
        labels = torch.tensor([self.classes.index(i.label) for i in video.instances], dtype=torch.long)
        if self.training and (feats.shape[1] > cfg.max_seq_len or cfg.crop_ratio is not None):
            feats, segments, labels, grid = self._crop(index, feats, segments, labels, grid)
        return FeatureItem(video.video_id, feats, segments, labels, grid, video.duration_s)

    def _crop(self, index, feats, segments, labels, grid):
        """A random window of max_seq_len features (or, for shorter videos with
        `crop_ratio`, of a random fraction of their length) keeping, where possible, at
        least one action with `crop_keep_ratio` of its length inside."""
        cfg = self.cfg
        gen = epoch_generator(self.seed, self.epoch, index)
        length = feats.shape[1]
        window = cfg.max_seq_len
        if length <= cfg.max_seq_len:
            low, high = cfg.crop_ratio
            ratio = low + (high - low) * float(torch.rand((), generator=gen))
            window = max(1, min(length, round(length * ratio)))
        start = random_window_start(torch.arange(length - window + 1), window, segments, cfg.crop_keep_ratio, gen)
        inside, keep = crop_segments(segments, start, start + window, cfg.crop_keep_ratio)
        window_grid = FeatureGrid(grid.offset_s + start * grid.step_s, grid.step_s)
        return feats[:, start : start + window], inside[keep] - start, labels[keep], window_grid


def resize_features(feats: Tensor, length: int) -> Tensor:
    """[C, T] -> [C, length] by linear interpolation (ActivityNet-style fixed length)."""
    if feats.shape[1] == length:
        return feats
    return F.interpolate(feats[None], size=length, mode="linear", align_corners=False)[0]


def collate_features(items: list[FeatureItem], pad_multiple: int, pad_to: int | None = None) -> FeatureBatch:
    """Pad to a common length (a multiple of `pad_multiple`, at least `pad_to`) with a mask."""
    longest = max(it.features.shape[1] for it in items)
    length = max(longest, pad_to or 0)
    length = math.ceil(length / pad_multiple) * pad_multiple
    channels = items[0].features.shape[0]
    feats = torch.zeros(len(items), channels, length)
    mask = torch.zeros(len(items), length, dtype=torch.bool)
    for b, it in enumerate(items):
        t = it.features.shape[1]
        feats[b, :, :t] = it.features
        mask[b, :t] = True
    return FeatureBatch(
        [it.video_id for it in items],
        feats,
        mask,
        [it.segments for it in items],
        [it.labels for it in items],
        [it.grid for it in items],
        [it.duration_s for it in items],
    )
