"""The one checkpoint format: a directory holding

    model.safetensors     weights of the trained model
    ema.safetensors       weights of its exponential moving average (when used)
    training_state.pt     optimizer, LR schedule, EMA bookkeeping, epoch, best metric
                          (tensors and plain Python values only: loads with weights_only)
    config.yaml           the full experiment config
    classes.json          the class map

A checkpoint is written into a temporary directory that then replaces the old one by
renames, so an interrupted save leaves the previous checkpoint intact (as `NAME.old` for
the instant between the two renames, which loading falls back to).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from e2etal.data.annotations import ClassMap

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "training_state.pt"
CONFIG_FILE = "config.yaml"
CLASSES_FILE = "classes.json"


@dataclass
class Checkpoint:
    path: Path
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any] | None
    config: dict
    classes: ClassMap

    @property
    def inference_weights(self) -> dict[str, torch.Tensor]:
        """EMA weights when the run kept an EMA (they are what is evaluated), else the model's."""
        return self.ema if self.ema is not None else self.model


def weight_mismatches(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """What keeps `state` from loading into `model`, one short line per kind (tensors of
    another shape, missing keys, unexpected keys; a few names of each); empty when it
    fits. Keys under the model's `frozen_prefixes` (a frozen backbone, loaded from its own
    checkpoint) are expected to be absent."""
    frozen = tuple(getattr(model, "frozen_prefixes", ()))
    own = model.state_dict()
    kinds = {
        "of another shape": [f"{k} {list(v.shape)} (model: {list(own[k].shape)})"
                             for k, v in state.items() if k in own and own[k].shape != v.shape],
        "missing": [k for k in own if k not in state and not (frozen and k.startswith(frozen))],
        "unexpected": [k for k in state if k not in own],
    }
    return [f"{len(names)} {kind}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
            for kind, names in kinds.items() if names]


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load trained weights (see `weight_mismatches`); when they do not fit, one error
    naming the checkpoint and what differs."""
    problems = weight_mismatches(model, state)
    if problems:
        raise ValueError(f"{source}: weights do not fit the model built from its config ({'; '.join(problems)})")
    model.load_state_dict(state, strict=False)


def _tensors(module_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module_state.items()}


def save_checkpoint(
    path: str | Path,
    model_state: dict[str, torch.Tensor],
    config: dict,
    classes: ClassMap,
    ema_state: dict[str, torch.Tensor] | None = None,
    training_state: dict[str, Any] | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(_tensors(model_state), str(tmp / MODEL_FILE))
        if ema_state is not None:
            save_file(_tensors(ema_state), str(tmp / EMA_FILE))
        if training_state is not None:
            torch.save(training_state, tmp / STATE_FILE)
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        classes.save(tmp / CLASSES_FILE)
        old = path.with_name(path.name + ".old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_checkpoint(path: str | Path, with_state: bool = True) -> Checkpoint:
    """Load a checkpoint directory (or its `model.safetensors`); nothing in it can run code."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not (path / MODEL_FILE).exists() and (path.with_name(path.name + ".old") / MODEL_FILE).exists():
        path = path.with_name(path.name + ".old")
    if not (path / MODEL_FILE).exists():
        raise FileNotFoundError(f"{path}: not a checkpoint directory (no {MODEL_FILE})")
    try:
        model = load_file(str(path / MODEL_FILE))
        ema = load_file(str(path / EMA_FILE)) if (path / EMA_FILE).exists() else None
        state = None
        if with_state and (path / STATE_FILE).exists():
            state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        config = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8")) or {}
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: incomplete checkpoint ({e.filename} missing)") from None
    except Exception as e:  # safetensors / torch / yaml each raise their own types
        raise ValueError(f"{path}: cannot read checkpoint: {e}") from None
    return Checkpoint(path, model, ema, state, config, ClassMap.load(path / CLASSES_FILE))
