"""The video pipeline: end to end on raw video beside a frozen backbone (`video:`,
`backbone:`, `frozen:`), with LoSA's adapters (`losa:`) or without them (head-only
transfer on the last layer). Both read the same frozen pass, so they share a tap cache."""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from e2etal import distributed
from e2etal.adapters.frozen import FrozenBackbone, _compute_dtype
from e2etal.adapters.losa import LoSAAdapters
from e2etal.adapters.tap_cache import TapCache
from e2etal.data.annotations import Annotations, ClassMap, VideoAnnotation
from e2etal.data.video import probe_video
from e2etal.data.windows import VideoDataConfig, VideoWindows, collate_windows
from e2etal.detector import VideoDetector
from e2etal.backbones.factory import build_backbone, module_sha256
from e2etal.heads import build_head

if TYPE_CHECKING:
    from e2etal.experiment import ExperimentConfig


class VideoPipeline:
    reads_video = True

    def __init__(self, name: str, adapters: bool):
        self.name = name
        self.adapters = adapters

    def data(self, cfg: ExperimentConfig) -> VideoDataConfig:
        return cfg.video

    def build_detector(self, cfg: ExperimentConfig) -> VideoDetector:
        """The frozen backbone (a ViT or a TSM-ResNet, weights from `backbone.checkpoint`),
        the adapters when this is LoSA, and the head."""
        backbone = build_backbone(cfg.backbone.name, cfg.backbone.checkpoint, **cfg.backbone.kwargs)
        f = cfg.frozen
        frozen = FrozenBackbone(backbone.module, taps=f.taps, grid=f.grid, micro_batch=f.micro_batch,
                                dtype=f.torch_dtype(), weights_sha256=backbone.checkpoint_sha256)
        if cfg.model.input_dim != frozen.width:
            raise ValueError(f"model.input_dim is {cfg.model.input_dim} but backbone {cfg.backbone.name} has width {frozen.width}")
        positions = cfg.video.frames_per_window // frozen.frames_per_position
        if cfg.model.max_seq_len < positions:
            raise ValueError(f"model.max_seq_len {cfg.model.max_seq_len} is shorter than the {positions} positions of a window")
        adapters = None
        if self.adapters:
            adapters = LoSAAdapters(frozen.width, len(frozen.taps), cfg.losa, frozen.tap_widths, grid=frozen.grid)
        return VideoDetector(frozen, build_head(cfg.model), adapters)

    def video_config(self, cfg: ExperimentConfig, detector: VideoDetector) -> VideoDataConfig:
        """`cfg.video` with the pixel normalisation resolved: where it names none, the
        backbone's own (none for a VideoMAE ViT, ImageNet's for a TSM-ResNet)."""
        video = cfg.video
        if video.mean is None and video.std is None:
            module = detector.backbone.backbone
            video = dataclasses.replace(video, mean=module.pixel_mean, std=module.pixel_std)
        return video

    def tap_cache(self, video: VideoDataConfig, cfg: ExperimentConfig, detector: VideoDetector,
                  device: torch.device) -> TapCache | None:
        """The tap cache, when `video.tap_cache` is set (augmentation must be off)."""
        if not video.tap_cache:
            return None
        frozen = detector.backbone
        compute = _compute_dtype(device, frozen.dtype)
        settings = {
            "backbone": cfg.backbone.name, "kwargs": cfg.backbone.kwargs,
            "weights_sha256": frozen.weights_sha256 or module_sha256(frozen.backbone),
            "taps": list(frozen.taps), "grid": frozen.grid, "fps": video.fps, "size": video.size,
            "clip_frames": video.clip_frames, "resize_frames": video.resize_frames, "dtype": str(compute),
            "mean": None if video.mean is None else list(video.mean), "std": None if video.std is None else list(video.std),
        }
        return TapCache(video.tap_cache, settings, store_dtype=compute)

    def build_datasets(self, cfg: ExperimentConfig, annotations: Annotations, classes: ClassMap,
                       detector: VideoDetector, device: torch.device,
                       splits: list[tuple[str, bool]]) -> list[VideoWindows]:
        """One `VideoWindows` per split; with a tap cache, it is set up once and filled for
        every split first."""
        video = self.video_config(cfg, detector)
        frames_per_position = detector.backbone.frames_per_position
        cache = self.tap_cache(video, cfg, detector, device)
        sets = [VideoWindows(video, annotations, s, classes, training=t, frames_per_position=frames_per_position,
                             seed=cfg.train.seed, tap_cache=cache) for s, t in splits]
        if cache is not None:
            detector.backbone.to(device)
            for ds in sets:
                cache.fill(ds, detector.backbone, progress=cfg.train.progress and distributed.is_main(),
                           videos=distributed.shard(sorted(ds.videos)))
            distributed.barrier()  # every rank's share is written before any rank reads
        return sets

    def collate(self, cfg: ExperimentConfig, training: bool):
        return partial(collate_windows, pad_multiple=cfg.model.max_stride)

    def batch_sampler(self, cfg: ExperimentConfig, train_set) -> None:
        return None

    def shard_units(self, cfg: ExperimentConfig, detector) -> None:
        return None

    def video_file_dataset(self, detector: VideoDetector, cfg: ExperimentConfig, path: Path, video_id: str,
                           classes: ClassMap) -> VideoWindows:
        """The evaluation windows of one video file, outside any dataset."""
        info = probe_video(path)
        annotations = Annotations(str(path), {video_id: VideoAnnotation(video_id, "all", info.duration_s, info.fps)}, classes)
        video_cfg = dataclasses.replace(self.video_config(cfg, detector), video_dir=str(path.parent),
                                        file_template=path.name, tap_cache=None)
        return VideoWindows(video_cfg, annotations, "all", classes, training=False,
                            frames_per_position=detector.backbone.frames_per_position)

