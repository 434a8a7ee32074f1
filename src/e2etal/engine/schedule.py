"""Learning-rate schedules, as a factor of the base rate at every optimizer step.

    cosine   linear warm-up from 0 over `warmup_epochs`, then cosine decay to 0
    step     the same warm-up, then the rate times `gamma` every `step_epochs` epochs
             (LoFi's stage 2: 0.1 halved every 5 epochs)

Epochs may have different numbers of steps (a batch size that changes with the epoch);
`epoch_steps` gives each epoch's.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

import torch

SCHEDULES = ("cosine", "step")


def lr_schedule(
    optimizer: torch.optim.Optimizer,
    kind: str,
    epoch_steps: Sequence[int],
    warmup_epochs: int,
    step_epochs: int = 5,
    gamma: float = 0.5,
) -> torch.optim.lr_scheduler.LambdaLR:
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
    starts = [0, *itertools.accumulate(epoch_steps)]  # step at which each epoch starts
    warmup_steps = starts[min(warmup_epochs, len(epoch_steps))]
    total_steps = starts[-1]

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        epoch = bisect.bisect_right(starts, step) - 1
        return gamma ** ((epoch - warmup_epochs) // step_epochs)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
