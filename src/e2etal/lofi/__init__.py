"""LoFi (Xu et al., NeurIPS 2021): train the video encoder through the TAL loss at reduced
fidelity; the fidelities and their schedules live in `fidelity`."""

from e2etal.lofi.fidelity import SCHEDULES, Fidelity, FidelitySchedule, LoFiScheduleConfig, reduced_fidelities

__all__ = ["SCHEDULES", "Fidelity", "FidelitySchedule", "LoFiScheduleConfig", "reduced_fidelities"]
