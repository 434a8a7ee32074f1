"""Fidelities and the schedules that pick one for each training batch of LoFi's stage 2.

A fidelity is how much of a video a training batch sees: `snippets` per video (the
temporal length L of the head's input), frames resized to `size` x `size`, and `batch`
videos. LoFi (Xu et al., NeurIPS 2021) trains the encoder only at reduced fidelities, each
relative to the full one (L snippets at R px), so that every batch fits the memory of one
(the batch stays the same, multigrid-style):

    S-LoFi    L snippets        at R / 2 px          ActivityNet: 100 at 112
    T-LoFi    L / 4 snippets    at R px                           25 at 224
    ST-LoFi   L / 2 snippets    at R / sqrt(2) px                 50 at 158

Resolutions are rounded to a multiple of `size_multiple` (a ViT's patch: 158 -> 160 for
patch 16; 1 for a ResNet, which takes any size). A schedule maps `(epoch, batch index)` to
a fidelity (`step` counts batches from the start of training, across epochs):

    full          the full fidelity every batch (a baseline; LoFi never trains there)
    s, t, st      one reduced fidelity every batch
    long_c        S -> T -> ST, switching at the start of every epoch (the paper's default)
    short_c       S -> T -> ST, switching every `switch_batches` (16) batches
    custom        the config's own list of fidelities, cycled per epoch or every
                  `switch_batches` batches
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["SCHEDULES", "Fidelity", "FidelitySchedule", "LoFiScheduleConfig", "reduced_fidelities"]

SCHEDULES = ("full", "s", "t", "st", "long_c", "short_c", "custom")


@dataclass(frozen=True)
class Fidelity:
    snippets: int  # per video: the head's input length L
    size: int  # frames resized to size x size
    batch: int  # videos per batch

    def __post_init__(self) -> None:
        for name in ("snippets", "size", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"fidelity {name}: expected a positive integer, got {value!r}")

    def __str__(self) -> str:
        return f"{self.snippets} snippets x {self.size} px, batch {self.batch}"


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def reduced_fidelities(full: Fidelity, size_multiple: int = 1) -> dict[str, Fidelity]:
    """The paper's S, T and ST fidelities relative to `full` (module docstring)."""
    if size_multiple < 1:
        raise ValueError(f"size_multiple must be >= 1, got {size_multiple}")
    return {
        "s": Fidelity(full.snippets, _round_to(full.size / 2, size_multiple), full.batch),
        "t": Fidelity(max(1, round(full.snippets / 4)), _round_to(full.size, size_multiple), full.batch),
        "st": Fidelity(max(1, round(full.snippets / 2)), _round_to(full.size / math.sqrt(2), size_multiple), full.batch),
    }


@dataclass
class LoFiScheduleConfig:
    """The fidelity schedule of LoFi's stage 2 (the `lofi.schedule` section)."""

    name: str = "long_c"  # one of SCHEDULES
    # The full fidelity the reduced ones are relative to: ActivityNet-1.3's G-TAD protocol,
    # 100 snippets over the whole video at 224 px, batch 16 (the paper's).
    snippets: int = 100
    size: int = 224
    batch: int = 16
    switch_batches: int = 16  # short_c, and custom with per_epoch false: batches per fidelity
    # custom: [[snippets, size, batch], ...], cycled in this order
    custom: list[tuple[int, int, int]] = field(default_factory=list)
    per_epoch: bool = True  # custom: switch at each epoch start (true) or every switch_batches

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"lofi.schedule.name: expected one of {', '.join(SCHEDULES)}, got {self.name!r}")
        if self.switch_batches < 1:
            raise ValueError(f"lofi.schedule.switch_batches: expected >= 1, got {self.switch_batches}")
        if self.name == "custom" and not self.custom:
            raise ValueError("lofi.schedule.custom: the custom schedule needs at least one [snippets, size, batch]")
        self.custom = [tuple(f) for f in self.custom]

    @property
    def full(self) -> Fidelity:
        return Fidelity(self.snippets, self.size, self.batch)


class FidelitySchedule:
    """`schedule(epoch, step) -> Fidelity`: the fidelity of the batch `step` of training
    (0-based, counted across epochs) in `epoch` (0-based). `cycle` is the list the schedule
    walks through, `switch_batches` how many batches each fidelity lasts (None: one epoch)."""

    def __init__(self, name: str, cycle: list[Fidelity], switch_batches: int | None):
        if not cycle:
            raise ValueError("a fidelity schedule needs at least one fidelity")
        self.name = name
        self.cycle = list(cycle)
        self.switch_batches = switch_batches

    @classmethod
    def from_config(cls, cfg: LoFiScheduleConfig, size_multiple: int = 1) -> FidelitySchedule:
        reduced = reduced_fidelities(cfg.full, size_multiple)
        if cfg.name == "full":
            return cls(cfg.name, [cfg.full], None)
        if cfg.name in reduced:
            return cls(cfg.name, [reduced[cfg.name]], None)
        if cfg.name in ("long_c", "short_c"):
            cycle = [reduced["s"], reduced["t"], reduced["st"]]
            return cls(cfg.name, cycle, None if cfg.name == "long_c" else cfg.switch_batches)
        cycle = [Fidelity(int(s), _round_to(int(r), size_multiple), int(b)) for s, r, b in cfg.custom]
        return cls(cfg.name, cycle, None if cfg.per_epoch else cfg.switch_batches)

    def __call__(self, epoch: int, step: int = 0) -> Fidelity:
        if epoch < 0 or step < 0:
            raise ValueError(f"epoch and step must be >= 0, got {epoch}, {step}")
        turn = epoch if self.switch_batches is None else step // self.switch_batches
        return self.cycle[turn % len(self.cycle)]

    @property
    def fidelities(self) -> list[Fidelity]:
        """The distinct fidelities the schedule uses, in order of first use."""
        return list(dict.fromkeys(self.cycle))

    def describe(self) -> str:
        switch = "at each epoch start" if self.switch_batches is None else f"every {self.switch_batches} batches"
        if len(self.cycle) == 1:
            return f"{self.name}: {self.cycle[0]}"
        return f"{self.name}: " + " -> ".join(str(f) for f in self.cycle) + f", switching {switch}"
