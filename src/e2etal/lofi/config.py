"""The `lofi:` section of an experiment config: how LoFi samples, trains and evaluates."""

from __future__ import annotations

from dataclasses import dataclass, field

from e2etal.engine.trainer import TrainConfig
from e2etal.lofi.fidelity import LoFiScheduleConfig

__all__ = ["LoFiConfig", "default_head_train"]


def default_head_train() -> TrainConfig:
    """Stage 3, the head on the encoder's full-fidelity features: ActionFormer's
    ActivityNet-1.3 recipe (configs/anet_tsp.yaml: AdamW, lr 1e-3, 5 warm-up + 10 epochs,
    batch 16, weight decay 0.05, EMA 0.999)."""
    return TrainConfig(epochs=15, warmup_epochs=5, batch_size=16, lr=1e-3, weight_decay=0.05, eval_every=5)


@dataclass
class LoFiConfig:
    """LoFi's stage 2 (the encoder trained through the TAL loss at reduced fidelity) and
    stage 3 (features at full fidelity, the head trained on them).

    A video is `schedule.snippets` snippets at full fidelity: spread evenly over the
    whole video (`window_s` null, ActivityNet's protocol), or over windows of `window_s`
    seconds (THUMOS-14's: random windows in training, tiled at half overlap otherwise). A
    snippet is `snippet_frames` frames `frame_interval` frames apart (at the video's own
    rate) around its centre, and its feature the encoder's clip feature of them (per-frame
    features averaged for a TSM-ResNet, `fc_norm` of the mean token for a ViT).
    """

    schedule: LoFiScheduleConfig = field(default_factory=LoFiScheduleConfig)
    snippet_frames: int = 8  # the paper's: 8 frames of 64
    frame_interval: int = 8
    window_s: float | None = None
    crop_keep_ratio: float = 0.5  # windows protocol: a cut action is kept if this much of it is inside
    # None: the whole encoder trains; k: only its last k layers (ViT blocks, ResNet stages),
    # the rest frozen and run under no_grad.
    trainable_layers: int | None = None
    checkpointing: bool = True  # per-block activation checkpointing of the trainable layers
    micro_batch: int | None = None  # snippets per encoder call; None: a batch's snippets at once
    # Under torchrun with more than one process: FSDP2 instead of DDP, each encoder block
    # (and the rest of the model) a group whose parameters, gradients and optimizer state
    # every rank holds one shard of between steps (e2etal.engine.sharding). A single
    # process ignores it.
    fsdp: bool = False
    head_train: TrainConfig = field(default_factory=default_head_train)  # stage 3

    def __post_init__(self) -> None:
        for name in ("snippet_frames", "frame_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"lofi.{name}: expected a positive integer, got {value!r}")
        if self.window_s is not None and not self.window_s > 0:
            raise ValueError(f"lofi.window_s: expected a positive length in seconds or null, got {self.window_s}")
        if self.trainable_layers is not None and self.trainable_layers < 1:
            raise ValueError(f"lofi.trainable_layers: expected >= 1 or null (all), got {self.trainable_layers}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ValueError(f"lofi.micro_batch: expected >= 1 or null, got {self.micro_batch}")
        if self.fsdp and self.micro_batch == 1:
            # A rank's part can be a video smaller than another's: with one snippet per call
            # it could not make as many encoder calls as the other ranks (see LoFiDetector).
            raise ValueError("lofi.micro_batch: 1 cannot be used with lofi.fsdp; use 2 or more, or null")
        if not 0 < self.crop_keep_ratio <= 1:
            raise ValueError(f"lofi.crop_keep_ratio: expected in (0, 1], got {self.crop_keep_ratio}")
