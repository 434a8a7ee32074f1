"""The features pipeline: the head on pre-extracted `[T, C]` feature files (`data:`)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from e2etal.data.annotations import Annotations, ClassMap, VideoAnnotation
from e2etal.data.features import (
    FeatureDataConfig,
    FeatureDataset,
    FeatureItem,
    collate_features,
    feature_grid,
    load_feature_file,
    resize_features,
)
from e2etal.detector import FeatureDetector, VideoDetections
from e2etal.heads import build_head

if TYPE_CHECKING:
    from e2etal.experiment import ExperimentConfig


class FeaturePipeline:
    name = "features"
    reads_video = False

    def data(self, cfg: ExperimentConfig) -> FeatureDataConfig:
        return cfg.data

    def build_detector(self, cfg: ExperimentConfig) -> FeatureDetector:
        return FeatureDetector(build_head(cfg.model))

    def build_datasets(self, cfg: ExperimentConfig, annotations: Annotations, classes: ClassMap, detector,
                       device: torch.device, splits: list[tuple[str, bool]]) -> list[FeatureDataset]:
        sets = [FeatureDataset(cfg.data, annotations, s, classes, training=t, seed=cfg.train.seed) for s, t in splits]
        for ds in sets:
            if cfg.model.input_dim != ds.feature_dim:
                raise ValueError(f"model.input_dim is {cfg.model.input_dim} but the features in {cfg.data.feature_dir} "
                                 f"have {ds.feature_dim} channels")
        return sets

    def collate(self, cfg: ExperimentConfig, training: bool):
        pad_to = cfg.data.max_seq_len if training else None
        return partial(collate_features, pad_multiple=cfg.model.max_stride, pad_to=pad_to)

    def batch_sampler(self, cfg: ExperimentConfig, train_set) -> None:
        return None

    def shard_units(self, cfg: ExperimentConfig, detector) -> None:
        return None

    def detect_file(self, detector: FeatureDetector, cfg: ExperimentConfig, path: Path, video_id: str,
                    fps: float | None, duration_s: float | None) -> list[VideoDetections]:
        """Candidates of one video's feature file, in seconds, not yet suppressed. The time
        grid comes from `cfg.data`: `fps` is needed when it takes fps from the annotations,
        `duration_s` when it resizes features."""
        feats = load_feature_file(path, video_id, cfg.model.input_dim)
        grid = feature_grid(cfg.data, VideoAnnotation(video_id, "", duration_s, fps), str(path))
        x = torch.from_numpy(np.ascontiguousarray(feats.T))  # [C, T]
        if cfg.data.resize_length is not None:
            x = resize_features(x, cfg.data.resize_length)
        item = FeatureItem(video_id, x, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), grid, duration_s)
        batch = collate_features([item], pad_multiple=cfg.model.max_stride)
        return detector.detect(batch.to(next(detector.parameters()).device))
