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

from e2etal.adapters.losa import LoSAConfig
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


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load trained weights; keys under the model's `frozen_prefixes` (a frozen backbone,
    loaded from its own checkpoint) are expected to be absent. Anything else missing or
    unexpected is an error naming the checkpoint and the keys."""
    frozen = tuple(getattr(model, "frozen_prefixes", ()))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise ValueError(f"{source}: weights do not fit the model built from its config: {e}") from None
    missing = [k for k in result.missing_keys if not (frozen and k.startswith(frozen))]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source}: weights do not fit the model built from its config: "
            f"missing {missing[:10]} ({len(missing)}), unexpected {result.unexpected_keys[:10]} ({len(result.unexpected_keys)})"
        )


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


def _with_past_defaults(config: dict) -> dict:
    """A saved config with the defaults of the version that wrote it, where a later version
    changed them: a `losa` section without `short_conv_kernel` comes from before that
    setting existed, when the short-range conv spanned 3 positions."""
    losa = config.get("losa")
    if isinstance(losa, dict) and "short_conv_kernel" not in losa:
        losa["short_conv_kernel"] = 3
    return config


def _weights_with_past_defaults(weights: dict[str, torch.Tensor] | None, config: dict) -> dict[str, torch.Tensor] | None:
    """Weights with the parameters a later version added, at the values that leave the
    model as it was: a LoSA fusion without `layout` (the linear read of the last layer's
    grid) comes from before it existed, which is the same as a layout read of zeros."""
    if weights is None:
        return None
    losa = config.get("losa")
    cells = int((losa if isinstance(losa, dict) else {}).get("grid", LoSAConfig.grid)) ** 2
    for key in [k for k in weights if k.endswith("fusion.scale")]:
        prefix = key[: -len("scale")]
        if prefix + "layout.weight" not in weights:
            dim = weights[key].shape[0]
            weights[prefix + "layout.weight"] = torch.zeros(dim, cells * dim, dtype=weights[key].dtype)
            weights[prefix + "layout.bias"] = torch.zeros(dim, dtype=weights[key].dtype)
    return weights


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
        config = _with_past_defaults(yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8")) or {})
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: incomplete checkpoint ({e.filename} missing)") from None
    except Exception as e:  # safetensors / torch / yaml each raise their own types
        raise ValueError(f"{path}: cannot read checkpoint: {e}") from None
    model, ema = _weights_with_past_defaults(model, config), _weights_with_past_defaults(ema, config)
    return Checkpoint(path, model, ema, state, config, ClassMap.load(path / CLASSES_FILE))
