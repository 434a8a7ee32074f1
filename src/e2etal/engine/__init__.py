"""Training loop, checkpoints, schedules and logs, shared by every detector."""

from e2etal.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from e2etal.engine.trainer import Trainer, TrainConfig, TrainResult

__all__ = ["Checkpoint", "TrainConfig", "TrainResult", "Trainer", "load_checkpoint", "save_checkpoint"]
