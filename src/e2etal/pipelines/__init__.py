"""Pipelines: what feeds the head, one module per input kind.

Every way to train shares the head, the engine, post-processing and evaluation, and
differs only in what feeds the head. A pipeline owns, for its input kind, the detector it
builds from a config, its datasets and their collate, and the config section that says
where its data is:

    features    pre-extracted `[T, C]` files (`data:`)               pipelines/features.py
    losa        raw video beside a frozen backbone, LoSA adapters     pipelines/video.py
    head_only   raw video beside a frozen backbone, no adapters      pipelines/video.py
    lofi        raw video through a trainable encoder, snippets at   pipelines/lofi.py
                reduced fidelity (LoFi's stage 2)

`pipeline(cfg)` is the one place that reads `cfg.method`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

import torch
from torch import nn

from e2etal.data.annotations import Annotations, ClassMap

if TYPE_CHECKING:
    from e2etal.experiment import ExperimentConfig


class DataSection(Protocol):
    """What every pipeline's data section says: where the ground truth is and which of its
    subsets train and validate."""

    annotations: str
    train_subset: str
    val_subset: str


class Pipeline(Protocol):
    name: str  # the `method` it serves
    reads_video: bool  # raw video files (True) or pre-extracted features (False)

    def data(self, cfg: ExperimentConfig) -> DataSection: ...

    def build_detector(self, cfg: ExperimentConfig) -> nn.Module: ...

    def build_datasets(self, cfg: ExperimentConfig, annotations: Annotations, classes: ClassMap, detector: nn.Module,
                       device: torch.device, splits: list[tuple[str, bool]]) -> list[torch.utils.data.Dataset]: ...

    def collate(self, cfg: ExperimentConfig, training: bool) -> Callable: ...

    def batch_sampler(self, cfg: ExperimentConfig, train_set: torch.utils.data.Dataset) -> Callable | None:
        """`(epoch, generator) -> Sampler` of the training batches, or None for the
        engine's own (`train.batch_size` items at random)."""

    def shard_units(self, cfg: ExperimentConfig, detector: nn.Module) -> list[nn.Module] | None:
        """The modules FSDP2 shards one group each when more than one process trains
        (`e2etal.engine.sharding`), or None for DDP."""


from e2etal.pipelines.features import FeaturePipeline  # noqa: E402 (they implement the protocols above)
from e2etal.pipelines.lofi import LoFiPipeline  # noqa: E402
from e2etal.pipelines.video import VideoPipeline  # noqa: E402

PIPELINES: dict[str, Pipeline] = {
    "features": FeaturePipeline(),
    "losa": VideoPipeline("losa", adapters=True),
    "head_only": VideoPipeline("head_only", adapters=False),
    "lofi": LoFiPipeline(),
}
METHODS = tuple(PIPELINES)


def pipeline(cfg: ExperimentConfig) -> Pipeline:
    """The pipeline of `cfg.method`."""
    return PIPELINES[cfg.method]
