"""The LoFi pipeline (stage 2 of Xu et al., NeurIPS 2021): the video encoder itself trained
through the TAL loss, on snippets of raw video at the reduced fidelity a schedule gives
each batch (`video:` for where the videos are, `backbone:` for the encoder, `lofi:` for
the sampling, the schedule and what trains). Stages 3 (features at full fidelity) and the
comparison with the untouched encoder are `e2etal.lofi.stages`."""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from e2etal.backbones.factory import build_backbone
from e2etal.data.annotations import Annotations, ClassMap, VideoAnnotation
from e2etal.data.snippets import FidelityBatches, SnippetDataset, collate_snippets
from e2etal.data.video import probe_video
from e2etal.data.windows import VideoDataConfig
from e2etal.detector import LoFiDetector
from e2etal.heads import build_head
from e2etal.lofi.fidelity import FidelitySchedule

if TYPE_CHECKING:
    from e2etal.experiment import ExperimentConfig

log = logging.getLogger(__name__)


def own_normalisation(video: VideoDataConfig, encoder: torch.nn.Module) -> VideoDataConfig:
    """`video` with the pixel normalisation resolved: where it names none, the encoder's own."""
    if video.mean is None and video.std is None:
        return dataclasses.replace(video, mean=encoder.pixel_mean, std=encoder.pixel_std)
    return video


class LoFiPipeline:
    name = "lofi"
    reads_video = True

    def data(self, cfg: ExperimentConfig) -> VideoDataConfig:
        return cfg.video

    def schedule(self, cfg: ExperimentConfig) -> FidelitySchedule:
        """The fidelity schedule, its resolutions rounded to the encoder's patch (a ViT's)."""
        multiple = 1
        if cfg.backbone.name.startswith("vit"):
            with torch.device("meta"):
                multiple = build_backbone(cfg.backbone.name, **cfg.backbone.kwargs).module.patch_size
        return FidelitySchedule.from_config(cfg.lofi.schedule, size_multiple=multiple)

    def build_detector(self, cfg: ExperimentConfig) -> LoFiDetector:
        """The encoder (weights from `backbone.checkpoint`), trainable in whole or in its last
        `lofi.trainable_layers` layers, with the head on its snippet features."""
        encoder = build_backbone(cfg.backbone.name, cfg.backbone.checkpoint, **cfg.backbone.kwargs).module
        layout = encoder.tap_layout()
        if cfg.model.input_dim != layout.width:
            raise ValueError(f"model.input_dim is {cfg.model.input_dim} but backbone {cfg.backbone.name} has width "
                             f"{layout.width}")
        k = cfg.lofi.trainable_layers
        if k is not None:
            if k > layout.depth:
                raise ValueError(f"lofi.trainable_layers is {k} but backbone {cfg.backbone.name} has {layout.depth} "
                                 f"{layout.unit}s")
            encoder.freeze_layers(layout.depth - k)
        encoder.grad_checkpointing = cfg.lofi.checkpointing
        full = cfg.lofi.schedule.full
        if cfg.model.max_seq_len < full.snippets:
            raise ValueError(f"model.max_seq_len {cfg.model.max_seq_len} is shorter than the {full.snippets} snippets "
                             "of lofi.schedule.snippets")
        return LoFiDetector(encoder, build_head(cfg.model), cfg.lofi.micro_batch, even_calls=cfg.lofi.fsdp)

    def build_datasets(self, cfg: ExperimentConfig, annotations: Annotations, classes: ClassMap,
                       detector: LoFiDetector, device: torch.device,
                       splits: list[tuple[str, bool]]) -> list[SnippetDataset]:
        video = own_normalisation(cfg.video, detector.encoder)
        full = cfg.lofi.schedule.full  # what evaluation reads; training batches say their own
        return [SnippetDataset(video, cfg.lofi, full, annotations, s, classes, training=t, seed=cfg.train.seed)
                for s, t in splits]

    def collate(self, cfg: ExperimentConfig, training: bool):
        return partial(collate_snippets, pad_multiple=cfg.model.max_stride)

    def batch_sampler(self, cfg: ExperimentConfig, train_set: SnippetDataset) -> Callable:
        """`(epoch, generator) -> FidelityBatches`: the schedule's batches of each epoch."""
        schedule = self.schedule(cfg)
        log.info("fidelity schedule %s", schedule.describe())
        sizes = FidelityBatches.epoch_sizes(len(train_set), schedule, cfg.train.epochs)
        return lambda epoch, generator: FidelityBatches(len(train_set), schedule, epoch, sum(sizes[:epoch]), generator)

    def shard_units(self, cfg: ExperimentConfig, detector: LoFiDetector) -> list[torch.nn.Module] | None:
        """With `lofi.fsdp`, the encoder's blocks, frozen ones too (their shards save the
        same memory between steps)."""
        return detector.encoder.shard_units() if cfg.lofi.fsdp else None

    def video_file_dataset(self, detector: LoFiDetector, cfg: ExperimentConfig, path: Path, video_id: str,
                           classes: ClassMap) -> SnippetDataset:
        """The evaluation spans of one video file, outside any dataset, at full fidelity."""
        info = probe_video(path)
        annotations = Annotations(str(path), {video_id: VideoAnnotation(video_id, "all", info.duration_s, info.fps)}, classes)
        video = dataclasses.replace(own_normalisation(cfg.video, detector.encoder), video_dir=str(path.parent),
                                    file_template=path.name)
        return SnippetDataset(video, cfg.lofi, cfg.lofi.schedule.full, annotations, "all", classes, training=False)
