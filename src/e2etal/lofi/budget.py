"""Choosing the fidelity that fits a memory budget, by measuring it.

`choose_fidelity(candidates, measure, budget_gb)` tries the candidates from the highest
fidelity (most pixels per video: snippets x size^2) down, and for each its batch and then
halved batches, and returns the first whose measured peak memory fits the budget, with
the table of every measurement. `measure` is one training step's peak memory in GB;
`cuda_step_peak_gb` measures it on a GPU (one forward and backward of the detector,
`torch.cuda.max_memory_allocated`). A CPU has no such meter: there the caller says so
and keeps the config's schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch

from e2etal.lofi.fidelity import Fidelity

__all__ = ["BudgetChoice", "choose_fidelity", "cuda_step_peak_gb", "parse_gb"]


@dataclass
class BudgetChoice:
    choice: Fidelity | None  # None: nothing fits
    table: list[tuple[Fidelity, float | None]]  # every candidate measured, in order; None = out of memory

    def describe(self, budget_gb: float) -> str:
        lines = [f"{'fidelity':<36}{'peak GB':>9}  fits {budget_gb:g} GB"]
        for fidelity, peak in self.table:
            shown = "OOM" if peak is None else f"{peak:.2f}"
            fits = peak is not None and peak <= budget_gb
            lines.append(f"{str(fidelity):<36}{shown:>9}  {'yes' if fits else 'no'}")
        lines.append(f"chosen: {self.choice}" if self.choice else "chosen: none fits the budget")
        return "\n".join(lines)


def parse_gb(text: str) -> float:
    """'16GB', '16 GB', '16g', '16' -> 16.0 (GB = 1e9 bytes)."""
    value = text.strip().lower().removesuffix("b").removesuffix("g").strip()
    try:
        gb = float(value)
    except ValueError:
        raise ValueError(f"--memory-budget: expected a size such as 16GB, got {text!r}") from None
    if not gb > 0:
        raise ValueError(f"--memory-budget: expected a positive size, got {text!r}")
    return gb


def _batches(batch: int) -> list[int]:
    out = []
    while batch >= 1:
        out.append(batch)
        batch //= 2
    return out


def choose_fidelity(candidates: Iterable[Fidelity], measure: Callable[[Fidelity], float | None],
                    budget_gb: float) -> BudgetChoice:
    """The highest fidelity, then the largest batch, whose measured peak (GB; None for out
    of memory) is within `budget_gb`. A candidate that does not fit is never chosen."""
    table: list[tuple[Fidelity, float | None]] = []
    ordered = sorted(dict.fromkeys(candidates), key=lambda f: f.snippets * f.size * f.size, reverse=True)
    for fidelity in ordered:
        for batch in _batches(fidelity.batch):
            trial = replace(fidelity, batch=batch)
            peak = measure(trial)
            table.append((trial, peak))
            if peak is not None and peak <= budget_gb:
                return BudgetChoice(trial, table)
    return BudgetChoice(None, table)


def cuda_step_peak_gb(step: Callable[[Fidelity], None], device: torch.device) -> Callable[[Fidelity], float | None]:
    """A meter for `choose_fidelity`: `step(fidelity)` runs one training step (forward and
    backward) at that fidelity on `device`; its peak allocated memory in GB, or None when
    it runs out of memory."""

    def measure(fidelity: Fidelity) -> float | None:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            step(fidelity)
            torch.cuda.synchronize(device)
        except torch.OutOfMemoryError:
            return None
        finally:
            torch.cuda.empty_cache()
        return torch.cuda.max_memory_allocated(device) / 1e9

    return measure
