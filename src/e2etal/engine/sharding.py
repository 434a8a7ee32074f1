"""Sharded data parallelism with PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`), for
a model whose trainable part is too large to keep whole on every rank (LoFi's encoder).

Each of the model's `units` (an encoder's blocks) and then the rest of it become one
FSDP2 group. Between steps every rank holds only its shard of each parameter, gradient and
optimizer state; a group's parameters are gathered at its first forward of a step and kept
until its backward has run (not gathered again for every micro-batch and for activation
checkpointing's recomputation), and its gradients are reduce-scattered in the backward.
That backward communicates for every call of the group, so every rank must call each
group as many times a step, whatever the size of its part of the batch (`LoFiDetector`'s
`even_calls`). Evaluation, where the ranks run different numbers of items, runs under
`gathered`: every group whole, no collective in any forward.

Checkpoints stay those of a plain process: `full_state` gathers every tensor whole on
every rank (a collective: all ranks call it, in the same order) and rank 0 writes them;
`cut_state` and `load_optimizer_state` cut a checkpoint's whole tensors back into this
rank's shards, so a run resumes under any world size, sharded or not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from e2etal import distributed

# torch.distributed.fsdp and .tensor are imported where used: they take over a second to
# import, which every process that trains would pay whether it shards or not.

__all__ = ["average_gradients", "cut_state", "full_optimizer_state", "full_state", "gathered", "held_parameters",
           "load_optimizer_state", "shard"]


def shard(model: nn.Module, units: Iterable[nn.Module], device: torch.device) -> list[nn.Parameter]:
    """Shard `model` over the process group in place: one FSDP2 group per unit, then one for
    the rest, parameters kept gathered from a group's first forward of a step to its
    backward. Every rank must call each unit equally often in a step.

    FSDP2 cannot shard a scalar parameter (the head's regression scales): those stay whole
    on every rank, and are returned, for `average_gradients` after every backward."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (distributed.world_size(),))
    whole = [p for p in model.parameters() if p.ndim == 0]
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=False, ignored_params=set(whole))
    fully_shard(model, mesh=mesh, reshard_after_forward=False, ignored_params=set(whole))
    return whole


def average_gradients(params: list[nn.Parameter]) -> None:
    """Average the gradients of `params` over the ranks, as FSDP2 does those it shards (in
    one all-reduce; a parameter without a gradient counts as zero)."""
    if not params:
        return
    grads = torch.stack([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
    distributed.all_reduce_sum(grads).div_(distributed.world_size())
    for p, g in zip(params, grads):
        p.grad = g.clone()


def held_parameters(model: nn.Module) -> tuple[int, int]:
    """(elements of `model`'s parameters this rank holds between steps, elements in all)."""
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
    return held, sum(p.numel() for p in params)


def _whole(value):
    """A sharded tensor gathered whole, on the CPU (a checkpoint's way there); anything else as it is."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor().cpu() if isinstance(value, DTensor) else value


def full_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with every sharded tensor gathered whole (collective)."""
    return {k: _whole(v) for k, v in state.items()}


def _cut_like(like: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """`whole` as `like` holds it: this rank's shard when `like` is sharded."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    whole = whole.to(device=like.device, dtype=like.dtype)
    if isinstance(like, DTensor):
        # Every rank has the whole tensor (they all read the same checkpoint): each cuts
        # its own shard, no communication.
        return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)
    return whole


def cut_state(like: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole tensors `state` cut as the tensors of `like` with the same keys are held (a
    sharded model's `state_dict()`, an EMA's shadow), ready for their `load_state_dict`.
    Keys not in `like` pass unchanged."""
    return {k: _cut_like(like[k], v) if k in like else v for k, v in state.items()}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()` with its sharded state tensors gathered (collective): the
    state dict a plain process would have saved."""
    saved = optimizer.state_dict()
    saved["state"] = {i: {k: _whole(v) for k, v in s.items()} for i, s in saved["state"].items()}
    return saved


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load a plain process's optimizer state dict into an optimizer of sharded parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if any(int(i) >= len(params) for i in saved["state"]):
        raise ValueError(f"the saved optimizer state has more parameters than this optimizer's {len(params)}")
    saved = {**saved, "state": {i: {k: _cut_like(params[int(i)], v) if torch.is_tensor(v) and v.ndim > 0 else v
                                    for k, v in s.items()} for i, s in saved["state"].items()}}
    optimizer.load_state_dict(saved)


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with every group's parameters gathered whole and kept so until the end
    (evaluation: ranks then run different numbers of forwards, with no collective in any)."""
    from torch.distributed.fsdp import FSDPModule

    groups = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for group in groups:
        group.unshard()
    try:
        yield model
    finally:
        for group in groups:
            group.reshard()
