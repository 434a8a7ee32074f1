"""Exponential moving average of a model's weights, kept as a shadow state dict.

Frozen parts (a detector's `frozen_prefixes`, e.g. a billion-parameter backbone) are not
shadowed: they never change, and copying them would double their memory."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the keys under the model's `frozen_prefixes`."""
    frozen = tuple(getattr(model, "frozen_prefixes", ()))
    return {k: v for k, v in model.state_dict().items() if not (frozen and k.startswith(frozen))}


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"train.ema_decay: expected in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in trainable_state(model).items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, value in trainable_state(model).items():
            target = self.shadow[name]
            if value.dtype.is_floating_point:
                target.lerp_(value.detach(), 1.0 - self.decay)
            else:
                target.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.shadow.keys():
            raise ValueError(f"EMA state does not match the model: {sorted(state.keys() ^ self.shadow.keys())[:10]}")
        for k, v in state.items():
            self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """The model with the EMA weights swapped in, restored afterwards."""
        current = trainable_state(model)
        backup = {k: v.detach().clone() for k, v in current.items()}
        with torch.no_grad():
            for k, v in current.items():
                v.copy_(self.shadow[k])
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, v in current.items():
                    v.copy_(backup[k])
