"""Experiments from a config: the Python API behind `e2etal train`, `e2etal eval
--checkpoint` and `e2etal detect`, the same for every pipeline (`e2etal.pipelines`: the
head on pre-extracted features, LoSA and head-only transfer on raw video).

    from e2etal.experiment import ExperimentConfig, train, evaluate_checkpoint
    cfg = load_config(ExperimentConfig, "configs/thumos14_i3d.yaml", ["train.epochs=10"])
    result = train(cfg)
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from e2etal import distributed
from e2etal.adapters.frozen import FrozenPassConfig
from e2etal.adapters.losa import LoSAConfig
from e2etal.backbones.factory import BackboneConfig
from e2etal.config import apply_overrides, from_dict, load_config, to_dict
from e2etal.data.annotations import ClassMap, load_annotations
from e2etal.data.features import FeatureDataConfig
from e2etal.data.predictions import Detections
from e2etal.data.windows import VideoDataConfig
from e2etal.detector import VideoDetections, as_detections, suppress
from e2etal.engine import Trainer, TrainConfig, TrainResult, load_checkpoint
from e2etal.engine.checkpoint import load_weights
from e2etal.engine.trainer import resolve_device
from e2etal.heads import HeadConfig
from e2etal.lofi.config import LoFiConfig
from e2etal.io import output_dir
from e2etal.metrics import THUMOS14_TIOU, DetectionResult, evaluate_detections
from e2etal.pipelines import METHODS, Pipeline, pipeline

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
    # Which pipeline feeds the head (`e2etal.pipelines`): "features", the head on
    # pre-extracted features (`data`); "losa", LoSA adapters beside a frozen backbone on raw
    # video (`video`, `backbone`, `frozen`, `losa`); "head_only", head-only transfer on the
    # frozen backbone's last layer, the same pipeline without adapters; "lofi", the
    # encoder itself trained on raw video at reduced fidelity (`video`, `backbone`, `lofi`).
    method: str = "features"
    data: FeatureDataConfig = field(default_factory=FeatureDataConfig)
    video: VideoDataConfig = field(default_factory=VideoDataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    frozen: FrozenPassConfig = field(default_factory=FrozenPassConfig)
    losa: LoSAConfig = field(default_factory=LoSAConfig)
    lofi: LoFiConfig = field(default_factory=LoFiConfig)
    model: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {self.method!r}")

    @property
    def pipeline(self) -> Pipeline:
        return pipeline(self)

    @property
    def annotations(self) -> str:
        """The ground-truth file of this run's pipeline."""
        return self.pipeline.data(self).annotations

    @property
    def train_subset(self) -> str:
        return self.pipeline.data(self).train_subset

    @property
    def val_subset(self) -> str:
        """The subset this run evaluates on (during training and by `evaluate_checkpoint`)."""
        return self.pipeline.data(self).val_subset


def experiment_config(config_or_checkpoint: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """An experiment config from a YAML file, or the one saved in a checkpoint directory,
    with `key=value` overrides applied."""
    path = Path(config_or_checkpoint)
    if path.is_dir():
        ckpt = load_checkpoint(path, with_state=False)
        data = apply_overrides(copy.deepcopy(ckpt.config), list(overrides))
        return from_dict(ExperimentConfig, data, str(ckpt.path / "config.yaml"), list(overrides))
    return load_config(ExperimentConfig, path, overrides)


def build_detector(cfg: ExperimentConfig):
    """The detector a config describes (its pipeline's)."""
    return cfg.pipeline.build_detector(cfg)


def build_datasets(cfg: ExperimentConfig, annotations, classes, detector, device, splits: list[tuple[str, bool]]):
    """One dataset per `(subset, training)` split, built by the config's pipeline."""
    return cfg.pipeline.build_datasets(cfg, annotations, classes, detector, device, splits)


@torch.no_grad()
def run_detection(detector, dataset, collate, batch_size: int, device: torch.device, progress: bool = True) -> list[VideoDetections]:
    """Detections for every video of `dataset`, in seconds: the candidates of all windows
    of a video are pooled and post-processed once.

    In a process group, every rank runs its share of the items and the candidates of all
    are gathered before post-processing, in the dataset's order: each window counts
    once, and every rank returns the single process's detections."""
    detector.eval()
    indices = distributed.shard(list(range(len(dataset))))
    part = dataset if distributed.world_size() == 1 else torch.utils.data.Subset(dataset, indices)
    loader = torch.utils.data.DataLoader(part, batch_size=batch_size, shuffle=False, collate_fn=collate)
    windows: list[VideoDetections] = []
    bar = tqdm(loader, desc="detect", leave=False, disable=not (progress and distributed.is_main()), unit="batch")
    for batch in bar:
        windows.extend(detector.detect(batch.to(device)))
    if distributed.world_size() > 1:
        gathered = [pair for pairs in distributed.gather_objects(list(zip(indices, windows))) for pair in pairs]
        windows = [w for _, w in sorted(gathered, key=lambda iw: iw[0])]
    return suppress(windows, detector.head.cfg.postprocess)


def _evaluator(cfg: ExperimentConfig, val_set, annotations, device):
    ground_truth = annotations.subset(cfg.val_subset)
    collate = cfg.pipeline.collate(cfg, training=False)

    def evaluate(model) -> dict:
        videos = run_detection(model, val_set, collate, cfg.eval.batch_size, device, cfg.train.progress)
        result = evaluate_detections(ground_truth, as_detections(videos, val_set.classes), cfg.eval.tiou, cfg.eval.keep_duplicates)
        metrics = {"average_mAP": result.average_mAP}
        metrics.update({f"mAP@{t:.2f}": float(m) for t, m in zip(result.tiou, result.mAP)})
        return metrics

    return evaluate


def train(cfg: ExperimentConfig, resume: str | Path | None = None) -> TrainResult:
    """Train the config's detector; checkpoints, metrics.csv and logs go to `cfg.out_dir`.

    Under torchrun, data-parallel over the launched processes (`e2etal.distributed`)."""
    distributed.init(resolve_device(cfg.train.device, "train.device"))
    device = resolve_device(cfg.train.device, "train.device")
    output_dir(cfg.out_dir, "out_dir")
    torch.manual_seed(cfg.train.seed)
    annotations = load_annotations(cfg.annotations)
    classes = annotations.classes
    if cfg.model.num_classes != len(classes):
        raise ValueError(f"model.num_classes is {cfg.model.num_classes} but {cfg.annotations} has {len(classes)} classes")
    detector = build_detector(cfg)
    train_set, val_set = build_datasets(cfg, annotations, classes, detector, device,
                                        [(cfg.train_subset, True), (cfg.val_subset, False)])
    log.info("%d training and %d validation videos, %d classes", len(train_set), len(val_set), len(classes))
    trainer = Trainer(
        detector,
        train_set,
        cfg.pipeline.collate(cfg, training=True),
        cfg.train,
        cfg.out_dir,
        to_dict(cfg),
        classes,
        evaluate=_evaluator(cfg, val_set, annotations, device),
        batch_sampler=cfg.pipeline.batch_sampler(cfg, train_set),
        shard_units=cfg.pipeline.shard_units(cfg, detector),
    )
    return trainer.fit(resume=resume)


def load_detector(checkpoint: str | Path, device: str = "auto") -> tuple[torch.nn.Module, ExperimentConfig, ClassMap]:
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
    """Detect on a subset (default: the subset the run validates on) and evaluate.

    `cfg` overrides the checkpoint's own config for data locations and evaluation
    settings; the model is always the checkpoint's. Under torchrun, the items are shared
    out over the processes and the result is the single process's (`run_detection`)."""
    distributed.init(resolve_device(device))
    detector, ckpt_cfg, classes = load_detector(checkpoint, device)
    cfg = cfg or ckpt_cfg
    if cfg.method != ckpt_cfg.method:
        raise ValueError(
            f"{checkpoint}: trained with method {ckpt_cfg.method!r}, but the config given is for method "
            f"{cfg.method!r}; evaluate it with its own config (give no CONFIG) or a {ckpt_cfg.method!r} config"
        )
    annotations = load_annotations(cfg.annotations)
    subset = subset or cfg.val_subset
    device_ = next(detector.parameters()).device
    (dataset,) = build_datasets(cfg, annotations, classes, detector, device_, [(subset, False)])
    collate = ckpt_cfg.pipeline.collate(ckpt_cfg, training=False)
    videos = run_detection(detector, dataset, collate, cfg.eval.batch_size, device_, progress)
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
    if cfg.pipeline.reads_video:
        raise ValueError(f"{checkpoint}: this checkpoint was trained on raw video (method {cfg.method!r}); "
                         "run it on the video file: `e2etal detect VIDEO --checkpoint CKPT`")
    path = Path(features_path)
    windows = cfg.pipeline.detect_file(detector, cfg, path, video_id or path.stem, fps, duration_s)
    return as_detections(suppress(windows, cfg.model.postprocess), classes)


def detect_video(
    video_path: str | Path,
    checkpoint: str | Path,
    video_id: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> Detections:
    """Detections for one video file, in seconds: decode, frozen backbone, adapters, head.

    Needs a checkpoint of a raw-video method (`losa` or `head_only`). A checkpoint trained
    on pre-extracted features cannot see the video: extract its features with the same
    backbone (`e2etal extract`) and use `detect_features`."""
    detector, cfg, classes = load_detector(checkpoint, device)
    if not cfg.pipeline.reads_video:
        raise ValueError(
            f"{checkpoint}: this checkpoint was trained on pre-extracted features; extract the video's features "
            "with the same backbone (e2etal extract) and run `e2etal detect --features FILE.npy`"
        )
    path = Path(video_path)
    dataset = cfg.pipeline.video_file_dataset(detector, cfg, path, video_id or path.stem, classes)
    collate = cfg.pipeline.collate(cfg, training=False)
    videos = run_detection(detector, dataset, collate, 1, next(detector.parameters()).device, progress)
    return as_detections(videos, classes)
