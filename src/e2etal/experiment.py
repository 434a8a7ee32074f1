"""Feature-based experiments from a config: the factory and the Python API behind
`e2etal train`, `e2etal eval CONFIG --checkpoint` and `e2etal detect --features`.

    from e2etal.experiment import ExperimentConfig, train, evaluate_checkpoint
    cfg = load_config(ExperimentConfig, "configs/thumos14_i3d.yaml", ["train.epochs=10"])
    result = train(cfg)
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from e2etal.config import apply_overrides, from_dict, load_config, to_dict
from e2etal.data.annotations import ClassMap, VideoAnnotation, load_annotations
from e2etal.data.features import (
    FeatureDataConfig,
    FeatureDataset,
    FeatureItem,
    collate_features,
    feature_grid,
    load_feature_file,
)
from e2etal.data.predictions import Detections
from e2etal.detector import FeatureDetector, VideoDetections, as_detections
from e2etal.engine import Trainer, TrainConfig, TrainResult, load_checkpoint
from e2etal.engine.trainer import resolve_device
from e2etal.heads import HeadConfig, build_head
from e2etal.metrics import THUMOS14_TIOU, DetectionResult, evaluate_detections

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    tiou: tuple[float, ...] = THUMOS14_TIOU
    keep_duplicates: bool = False
    batch_size: int = 1


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    out_dir: str = "runs/experiment"
    data: FeatureDataConfig = field(default_factory=FeatureDataConfig)
    model: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def experiment_config(config_or_checkpoint: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """An experiment config from a YAML file, or the one saved in a checkpoint directory,
    with `key=value` overrides applied."""
    path = Path(config_or_checkpoint)
    if path.is_dir():
        ckpt = load_checkpoint(path, with_state=False)
        data = apply_overrides(copy.deepcopy(ckpt.config), list(overrides))
        return from_dict(ExperimentConfig, data, str(ckpt.path / "config.yaml"))
    return load_config(ExperimentConfig, path, overrides)


def _check_model_fits_data(cfg: ExperimentConfig, feature_dim: int, classes: ClassMap) -> None:
    if cfg.model.input_dim != feature_dim:
        raise ValueError(f"model.input_dim is {cfg.model.input_dim} but the features have {feature_dim} channels")
    if cfg.model.num_classes != len(classes):
        raise ValueError(f"model.num_classes is {cfg.model.num_classes} but {cfg.data.annotations} has {len(classes)} classes")


def build_detector(cfg: ExperimentConfig) -> FeatureDetector:
    return FeatureDetector(build_head(cfg.model))


def _collate(cfg: ExperimentConfig, training: bool):
    pad_to = cfg.data.max_seq_len if training else None
    return partial(collate_features, pad_multiple=cfg.model.max_stride, pad_to=pad_to)


@torch.no_grad()
def run_detection(detector, dataset, collate, batch_size: int, device: torch.device, progress: bool = True) -> list[VideoDetections]:
    """Detections for every video of `dataset`, in seconds."""
    detector.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    out: list[VideoDetections] = []
    for batch in tqdm(loader, desc="detect", leave=False, disable=not progress, unit="batch"):
        out.extend(detector.detect(batch.to(device)))
    return out


def _evaluator(cfg: ExperimentConfig, val_set: FeatureDataset, annotations, device):
    ground_truth = annotations.subset(cfg.data.val_subset)
    collate = _collate(cfg, training=False)

    def evaluate(model) -> dict:
        videos = run_detection(model, val_set, collate, cfg.eval.batch_size, device, cfg.train.progress)
        result = evaluate_detections(ground_truth, as_detections(videos, val_set.classes), cfg.eval.tiou, cfg.eval.keep_duplicates)
        metrics = {"average_mAP": result.average_mAP}
        metrics.update({f"mAP@{t:.2f}": float(m) for t, m in zip(result.tiou, result.mAP)})
        return metrics

    return evaluate


def train(cfg: ExperimentConfig, resume: str | Path | None = None) -> TrainResult:
    """Train the head on pre-extracted features; checkpoints go to `cfg.out_dir`."""
    torch.manual_seed(cfg.train.seed)
    annotations = load_annotations(cfg.data.annotations)
    classes = annotations.classes
    train_set = FeatureDataset(cfg.data, annotations, cfg.data.train_subset, classes, training=True, seed=cfg.train.seed)
    val_set = FeatureDataset(cfg.data, annotations, cfg.data.val_subset, classes, training=False)
    _check_model_fits_data(cfg, train_set.feature_dim, classes)
    log.info("%d training and %d validation videos, %d classes", len(train_set), len(val_set), len(classes))
    detector = build_detector(cfg)
    device = resolve_device(cfg.train.device)
    trainer = Trainer(
        detector,
        train_set,
        _collate(cfg, training=True),
        cfg.train,
        cfg.out_dir,
        to_dict(cfg),
        classes,
        evaluate=_evaluator(cfg, val_set, annotations, device),
    )
    return trainer.fit(resume=resume)


def load_detector(checkpoint: str | Path, device: str = "auto") -> tuple[FeatureDetector, ExperimentConfig, ClassMap]:
    """A trained detector (EMA weights when present) with its config and class map."""
    ckpt = load_checkpoint(checkpoint, with_state=False)
    cfg = from_dict(ExperimentConfig, ckpt.config, str(ckpt.path / "config.yaml"))
    detector = build_detector(cfg)
    detector.load_state_dict(ckpt.inference_weights)
    return detector.to(resolve_device(device)).eval(), cfg, ckpt.classes


def evaluate_checkpoint(
    checkpoint: str | Path,
    cfg: ExperimentConfig | None = None,
    subset: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> tuple[DetectionResult, Detections]:
    """Detect on a subset (default: the config's validation subset) and evaluate.

    `cfg` overrides the checkpoint's own config for data locations and evaluation
    settings; the model is always the checkpoint's."""
    detector, ckpt_cfg, classes = load_detector(checkpoint, device)
    cfg = cfg or ckpt_cfg
    annotations = load_annotations(cfg.data.annotations)
    subset = subset or cfg.data.val_subset
    dataset = FeatureDataset(cfg.data, annotations, subset, classes, training=False)
    videos = run_detection(detector, dataset, _collate(ckpt_cfg, training=False), cfg.eval.batch_size,
                           next(detector.parameters()).device, progress)
    detections = as_detections(videos, classes)
    result = evaluate_detections(annotations.subset(subset), detections, cfg.eval.tiou, cfg.eval.keep_duplicates)
    return result, detections


def detect_features(
    features_path: str | Path,
    checkpoint: str | Path,
    video_id: str | None = None,
    fps: float | None = None,
    duration_s: float | None = None,
    device: str = "auto",
) -> Detections:
    """Detections for one video's `[T, C]` feature file, in seconds.

    The time grid comes from the checkpoint's data config; `fps` is needed when that
    config takes fps from the annotations, `duration_s` when it resizes features."""
    detector, cfg, classes = load_detector(checkpoint, device)
    path = Path(features_path)
    video_id = video_id or path.stem
    feats = load_feature_file(path, video_id, cfg.model.input_dim)
    video = VideoAnnotation(video_id, "", duration_s, fps)
    grid = feature_grid(cfg.data, video, feats.shape[0], str(path))
    x = torch.from_numpy(np.ascontiguousarray(feats.T))
    if cfg.data.resize_length is not None:
        x = torch.nn.functional.interpolate(x[None], size=cfg.data.resize_length, mode="linear", align_corners=False)[0]
    item = FeatureItem(video_id, x, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), grid, duration_s)
    batch = collate_features([item], pad_multiple=cfg.model.max_stride)
    videos = detector.detect(batch.to(next(detector.parameters()).device))
    return as_detections(videos, classes)
