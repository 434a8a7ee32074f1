"""Experiments from a config: the factory (detector, datasets, tap cache) and the Python
API behind `e2etal train`, `e2etal eval --checkpoint` and `e2etal detect`, for the three
methods: the head on pre-extracted features, LoSA and head-only transfer on raw video.

    from e2etal.experiment import ExperimentConfig, train, evaluate_checkpoint
    cfg = load_config(ExperimentConfig, "configs/thumos14_i3d.yaml", ["train.epochs=10"])
    result = train(cfg)
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from e2etal.adapters.frozen import FrozenBackbone, _compute_dtype
from e2etal.adapters.losa import LoSAAdapters, LoSAConfig
from e2etal.adapters.tap_cache import TapCache
from e2etal.config import apply_overrides, from_dict, load_config, to_dict
from e2etal.data.annotations import Annotations, ClassMap, VideoAnnotation, load_annotations
from e2etal.data.features import (
    FeatureDataConfig,
    FeatureDataset,
    FeatureItem,
    collate_features,
    feature_grid,
    load_feature_file,
    resize_features,
)
from e2etal.data.predictions import Detections
from e2etal.data.video import probe_video
from e2etal.data.windows import VideoDataConfig, VideoWindows, collate_windows
from e2etal.detector import FeatureDetector, VideoDetections, VideoDetector, as_detections, merge_windows
from e2etal.extract import build_backbone, module_sha256
from e2etal.engine import Trainer, TrainConfig, TrainResult, load_checkpoint
from e2etal.engine.checkpoint import load_weights
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
class BackboneConfig:
    name: str = "vit-b"  # a preset of e2etal.extract.BACKBONES: a ViT (vit-*) or a TSM-ResNet (tsm-r18, tsm-r50)
    # Official VideoMAE/VideoMAEv2 (or HF) weights for a ViT, torchvision / official TSM
    # weights for a TSM-ResNet (read weights-only); None = random.
    checkpoint: str | None = None
    kwargs: dict = field(default_factory=dict)  # constructor overrides, e.g. a small ViT's depth
    micro_batch: int = 8  # clips per frozen forward
    dtype: str = "auto"  # frozen pass: "auto" = bf16 on CUDA, fp32 on CPU; or "bf16", "fp32"

    def torch_dtype(self) -> torch.dtype | None:
        return {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32}[self.dtype]

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ValueError(f"backbone.dtype: expected auto, bf16 or fp32, got {self.dtype!r}")


METHODS = ("features", "losa", "frozen")


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    out_dir: str = "runs/experiment"
    # "features": the head on pre-extracted features (`data`); "losa": LoSA adapters beside
    # a frozen backbone on raw video (`video`, `backbone`, `losa`); "frozen": head-only
    # transfer on the frozen backbone's last layer, same pipeline without adapters.
    method: str = "features"
    data: FeatureDataConfig = field(default_factory=FeatureDataConfig)
    video: VideoDataConfig = field(default_factory=VideoDataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    losa: LoSAConfig = field(default_factory=LoSAConfig)
    model: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")

    @property
    def annotations(self) -> str:
        return self.video.annotations if self.method != "features" else self.data.annotations

    @property
    def train_subset(self) -> str:
        return self.video.train_subset if self.method != "features" else self.data.train_subset

    @property
    def val_subset(self) -> str:
        return self.video.val_subset if self.method != "features" else self.data.val_subset


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
        raise ValueError(f"model.num_classes is {cfg.model.num_classes} but {cfg.annotations} has {len(classes)} classes")


def build_detector(cfg: ExperimentConfig):
    """The detector a config describes; for video methods the frozen backbone (a ViT or a
    TSM-ResNet) is built and its weights loaded from `backbone.checkpoint`."""
    if cfg.method == "features":
        return FeatureDetector(build_head(cfg.model))
    module = build_backbone(cfg.backbone.name, cfg.backbone.checkpoint, **cfg.backbone.kwargs).module
    # Head-only transfer reads only the last layer, but taps the same layers as LoSA so
    # that both methods share one tap cache.
    frozen = FrozenBackbone(module, taps=cfg.losa.taps, grid=cfg.losa.grid, micro_batch=cfg.backbone.micro_batch,
                            dtype=cfg.backbone.torch_dtype())
    if cfg.model.input_dim != frozen.width:
        raise ValueError(f"model.input_dim is {cfg.model.input_dim} but backbone {cfg.backbone.name} has width {frozen.width}")
    positions = cfg.video.frames_per_window // frozen.frames_per_position
    if cfg.model.max_seq_len < positions:
        raise ValueError(f"model.max_seq_len {cfg.model.max_seq_len} is shorter than the {positions} positions of a window")
    adapters = None
    if cfg.method == "losa":
        adapters = LoSAAdapters(frozen.width, len(frozen.taps), cfg.losa, frozen.tap_widths)
    return VideoDetector(frozen, build_head(cfg.model), adapters)


def _collate(cfg: ExperimentConfig, training: bool):
    if cfg.method != "features":
        return partial(collate_windows, pad_multiple=cfg.model.max_stride)
    pad_to = cfg.data.max_seq_len if training else None
    return partial(collate_features, pad_multiple=cfg.model.max_stride, pad_to=pad_to)


def tap_cache_for(cfg: ExperimentConfig, detector: VideoDetector, device: torch.device) -> TapCache | None:
    """The tap cache of a video experiment, when `video.tap_cache` is set and augmentation is off."""
    if cfg.method == "features" or not cfg.video.tap_cache:
        return None
    frozen = detector.backbone
    compute = _compute_dtype(device, frozen.dtype)
    settings = {
        "backbone": cfg.backbone.name, "kwargs": cfg.backbone.kwargs, "weights_sha256": module_sha256(frozen.backbone),
        "taps": list(frozen.taps), "grid": frozen.grid, "fps": cfg.video.fps, "size": cfg.video.size,
        "clip_frames": cfg.video.clip_frames, "resize_frames": cfg.video.resize_frames, "dtype": str(compute),
        "mean": cfg.video.mean, "std": cfg.video.std,
    }
    return TapCache(cfg.video.tap_cache, settings, store_dtype=compute)


def build_datasets(cfg: ExperimentConfig, annotations, classes, detector, device, splits: list[tuple[str, bool]]):
    """One dataset per `(subset, training)` split for the config's method; for raw video
    with a tap cache, the cache is set up once and filled for every split first."""
    if cfg.method == "features":
        return [FeatureDataset(cfg.data, annotations, s, classes, training=t, seed=cfg.train.seed) for s, t in splits]
    frames_per_position = detector.backbone.frames_per_position
    cache = tap_cache_for(cfg, detector, device)
    sets = [VideoWindows(cfg.video, annotations, s, classes, training=t, frames_per_position=frames_per_position,
                         seed=cfg.train.seed, tap_cache=cache) for s, t in splits]
    if cache is not None:
        detector.backbone.to(device)
        for ds in sets:
            cache.fill(ds, detector.backbone, progress=cfg.train.progress)
    return sets


@torch.no_grad()
def run_detection(detector, dataset, collate, batch_size: int, device: torch.device, progress: bool = True) -> list[VideoDetections]:
    """Detections for every video of `dataset`, in seconds (windows of a video merged)."""
    detector.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    out: list[VideoDetections] = []
    for batch in tqdm(loader, desc="detect", leave=False, disable=not progress, unit="batch"):
        out.extend(detector.detect(batch.to(device)))
    return merge_windows(out, detector.head.cfg.postprocess)


def _evaluator(cfg: ExperimentConfig, val_set, annotations, device):
    ground_truth = annotations.subset(cfg.val_subset)
    collate = _collate(cfg, training=False)

    def evaluate(model) -> dict:
        videos = run_detection(model, val_set, collate, cfg.eval.batch_size, device, cfg.train.progress)
        result = evaluate_detections(ground_truth, as_detections(videos, val_set.classes), cfg.eval.tiou, cfg.eval.keep_duplicates)
        metrics = {"average_mAP": result.average_mAP}
        metrics.update({f"mAP@{t:.2f}": float(m) for t, m in zip(result.tiou, result.mAP)})
        return metrics

    return evaluate


def train(cfg: ExperimentConfig, resume: str | Path | None = None) -> TrainResult:
    """Train the config's detector; checkpoints, metrics.csv and logs go to `cfg.out_dir`."""
    torch.manual_seed(cfg.train.seed)
    annotations = load_annotations(cfg.annotations)
    classes = annotations.classes
    device = resolve_device(cfg.train.device)
    detector = build_detector(cfg)
    train_set, val_set = build_datasets(cfg, annotations, classes, detector, device,
                                        [(cfg.train_subset, True), (cfg.val_subset, False)])
    _check_model_fits_data(cfg, getattr(train_set, "feature_dim", cfg.model.input_dim), classes)
    log.info("%d training and %d validation videos, %d classes", len(train_set), len(val_set), len(classes))
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


def load_detector(checkpoint: str | Path, device: str = "auto") -> tuple[FeatureDetector | VideoDetector, ExperimentConfig, ClassMap]:
    """A trained detector (EMA weights when present) with its config and class map."""
    ckpt = load_checkpoint(checkpoint, with_state=False)
    cfg = from_dict(ExperimentConfig, ckpt.config, str(ckpt.path / "config.yaml"))
    detector = build_detector(cfg)
    load_weights(detector, ckpt.inference_weights, ckpt.path)
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
    annotations = load_annotations(cfg.annotations)
    subset = subset or cfg.val_subset
    device_ = next(detector.parameters()).device
    (dataset,) = build_datasets(cfg, annotations, classes, detector, device_, [(subset, False)])
    videos = run_detection(detector, dataset, _collate(ckpt_cfg, training=False), cfg.eval.batch_size, device_, progress)
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
    grid = feature_grid(cfg.data, video, str(path))
    x = torch.from_numpy(np.ascontiguousarray(feats.T))  # [C, T]
    if cfg.data.resize_length is not None:
        x = resize_features(x, cfg.data.resize_length)
    item = FeatureItem(video_id, x, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), grid, duration_s)
    batch = collate_features([item], pad_multiple=cfg.model.max_stride)
    videos = detector.detect(batch.to(next(detector.parameters()).device))
    return as_detections(videos, classes)


def detect_video(
    video_path: str | Path,
    checkpoint: str | Path,
    video_id: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> Detections:
    """Detections for one video file, in seconds: decode, frozen backbone, adapters, head.

    Needs a checkpoint of a raw-video method (`losa` or `frozen`). A checkpoint trained
    on pre-extracted features cannot see the video: extract its features with the same
    backbone (`e2etal extract`) and use `detect_features`."""
    detector, cfg, classes = load_detector(checkpoint, device)
    if cfg.method == "features":
        raise ValueError(
            f"{checkpoint}: this checkpoint was trained on pre-extracted features; extract the video's features "
            "with the same backbone (e2etal extract) and run `e2etal detect --features FILE.npy`"
        )
    path = Path(video_path)
    video_id = video_id or path.stem
    info = probe_video(path)
    annotations = Annotations(str(path), {video_id: VideoAnnotation(video_id, "all", info.duration_s, info.fps)}, classes)
    video_cfg = dataclasses.replace(cfg.video, video_dir=str(path.parent), file_template=path.name, tap_cache=None)
    dataset = VideoWindows(video_cfg, annotations, "all", classes, training=False,
                           frames_per_position=detector.backbone.frames_per_position)
    videos = run_detection(detector, dataset, _collate(cfg, training=False), 1, next(detector.parameters()).device, progress)
    return as_detections(videos, classes)
