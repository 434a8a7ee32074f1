"""Data-parallel training on `torch.distributed`: what every part of the toolkit asks of
the process group, and nothing when there is none.

A plain process (no launcher) is world size 1 and every function here is a no-op. Under
`torchrun`, `init(device)` joins the process group its environment describes (NCCL on
GPUs, one per local rank; gloo on the CPU), once. What changes with the world size:

- `train.batch_size` is the **global** batch, and `train.lr` is stated against it: each
  step's global batch is the one a single process would draw (same seed, same order), cut
  into one contiguous part per rank (`rank_part`: sizes differ by at most one when the
  batch does not divide). A batch smaller than the world size cannot give every rank a
  video; the trainer refuses a `train.batch_size` below the world size and drops an
  epoch's last batch when it is (a warning says how many videos that leaves out).
- The loss of a step is the single process's: the head's loss normaliser counts the
  positives of every rank (`all_reduce_sum`), so the gradient all-reduced by DDP is the
  gradient of the global batch, whatever the split.
- Evaluation runs each rank on a share of the items and gathers the detections
  (`gather_objects`) before the mAP, so every window counts exactly once.
- Logging, progress bars, metrics and checkpoints happen on rank 0 (`is_main`);
  checkpoints hold the unwrapped model and so load in any world size.

What does not follow the world size exactly: draws of stochastic layers (dropout, drop
path) and BatchNorm batch statistics, which are per rank.
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# Ranks wait at barriers while one of them fills its share of a tap cache or extracts
# features, which can take hours on a large backbone: far longer than the default 10-30
# minutes after which a collective is declared hung.
TIMEOUT = datetime.timedelta(minutes=float(os.environ.get("E2ETAL_DIST_TIMEOUT_MIN", 24 * 60)))


def launched() -> bool:
    """Whether this process was started by a launcher (torchrun) that describes a group."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if active() else 0


def init(device: torch.device) -> None:
    """Join the launcher's process group (idempotent; nothing without a launcher): NCCL
    when `device` is a GPU (this rank's is `cuda:LOCAL_RANK`), gloo otherwise."""
    if active() or not launched():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=TIMEOUT)
    if not is_main():
        logging.getLogger("e2etal").setLevel(logging.WARNING)
    log.info("distributed: %d processes (%s)", world_size(), backend)


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the ranks, in place (and returned)."""
    if active() and world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def max_over_ranks(value: int) -> int:
    """The largest of the ranks' `value`s, on every rank."""
    if not active() or world_size() == 1:
        return value
    box = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        box = box.cuda()
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box.item())


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (picklable objects; tensors are
    best moved to the CPU first)."""
    if not active() or world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not active() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_part(items: list, rank_: int, world: int) -> list:
    """This rank's contiguous part of `items`, the parts as even as possible: with 10
    items over 4 ranks, 3, 3, 2, 2."""
    base, extra = divmod(len(items), world)
    start = rank_ * base + min(rank_, extra)
    return items[start : start + base + (1 if rank_ < extra else 0)]


def shard(items: list) -> list:
    """This rank's share of `items` for work done once per item (tap cache, extraction,
    evaluation): every `world_size()`-th, from `rank()`."""
    return items[rank() :: world_size()]
