"""The training loop shared by every detector (see `e2etal.detector` for the contract).

Reproducibility: the shuffling order, the random crops and the global RNG (dropout,
drop-path) are re-seeded from `(seed, epoch)` at the start of every epoch, so a run
resumed from the checkpoint of epoch k continues exactly as the uninterrupted run would
have (bit-for-bit on the CPU).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from e2etal import distributed, io
from e2etal.config import config_changes
from e2etal.data.annotations import ClassMap
from e2etal.engine import sharding
from e2etal.engine.checkpoint import load_checkpoint, load_weights, save_checkpoint, weight_mismatches
from e2etal.engine.ema import ModelEMA, trainable_state
from e2etal.engine.schedule import SCHEDULES, lr_schedule

log = logging.getLogger(__name__)


OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainConfig:
    epochs: int = 35
    warmup_epochs: int = 5
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.05
    optimizer: str = "adamw"  # "adamw" or "sgd"
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"  # e2etal.engine.schedule: "cosine" or "step"
    step_epochs: int = 5  # step schedule: epochs between decays
    step_gamma: float = 0.5  # step schedule: factor at each decay
    clip_grad_norm: float | None = 1.0
    ema_decay: float | None = 0.999  # None = no EMA; with EMA, its weights are evaluated
    amp: bool = True  # bf16 autocast, on CUDA only
    device: str = "auto"  # "auto" = CUDA when available, else CPU
    seed: int = 1234
    num_workers: int = 0
    eval_every: int = 5  # epochs between validations; 0 = only after the last epoch
    checkpoint_every: int = 0  # also keep `epoch_NNNN` checkpoints every N epochs; 0 = only last/best
    tensorboard: bool = True  # write TensorBoard logs when the package is installed
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("train: epochs and batch_size must be >= 1")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"train.warmup_epochs: expected 0..epochs ({self.epochs}), got {self.warmup_epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer: expected one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train.schedule: expected one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.step_epochs < 1 or not 0 < self.step_gamma <= 1:
            raise ValueError(f"train.step_epochs / step_gamma: expected >= 1 and in (0, 1], got "
                             f"{self.step_epochs} / {self.step_gamma}")


@dataclass
class TrainResult:
    out_dir: Path
    epochs_run: int  # by this call: 0 when resuming a finished run
    first_epoch: int  # 1-based number of the first epoch this call ran (epochs_done + 1 on resume)
    epochs_done: int  # of the run, including those before a resume
    last_metrics: dict = field(default_factory=dict)
    best_metric: float | None = None
    best_epoch: int | None = None
    seconds: float = 0.0


def resolve_device(name: str, what: str = "device") -> torch.device:
    """"auto" (CUDA when available, else the CPU), "cpu", "cuda" or "cuda:N"; a device that
    is not there is a ValueError naming `what` (the option or config key). In a process
    group, "auto" and "cuda" are this rank's GPU, `cuda:LOCAL_RANK`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed.active():
        name = f"cuda:{distributed.local_rank()}"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what}: {name!r} is not a device; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what}: {name!r} asked for, but CUDA is not available here; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{what}: {name!r} asked for, but there are {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"{what}: {name!r} is not supported; expected auto, cpu, cuda or cuda:N")
    return device


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and kernels only, not on biases, norms or scales."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class MetricsLog:
    """metrics.csv in the run directory, plus TensorBoard when available."""

    def __init__(self, out_dir: Path, tensorboard: bool):
        self.path = out_dir / "metrics.csv"
        self.rows: list[dict] = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = list(csv.DictReader(f))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                pass

    def add(self, row: dict, step: int) -> None:
        self.rows.append(row)
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in self.rows]
        io.write_text(self.path, "\n".join(lines) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.writer.add_scalar(k, v, step)
            self.writer.flush()


class _Losses(nn.Module):
    """The detector's `losses` as a forward, the call DDP wraps (it syncs gradients of
    what runs through `forward` only)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch) -> dict:
        return self.model.losses(batch)


class Trainer:
    """AdamW or SGD, warm-up then cosine or step LR, gradient clipping, EMA, bf16 autocast
    on GPU, validation every few epochs, `last`/`best` checkpoints and resume.

    Batches are `cfg.batch_size` items drawn at random each epoch, or, with
    `batch_sampler`, whatever `batch_sampler(epoch, generator)` yields: lists of keys to
    the dataset (batches of changing size and content, e.g. LoFi's fidelities). A sampler
    with a `summary` attribute has it logged with the epoch's metrics.

    In a process group (`e2etal.distributed`) these are global batches: every rank draws
    the same ones and trains on its part of each, the model wrapped in DDP, or, with
    `shard_units` and more than one rank, sharded by FSDP2 (`e2etal.engine.sharding`,
    one group per unit); rank 0 alone logs and writes checkpoints, which are a plain
    process's either way."""

    def __init__(
        self,
        model: nn.Module,
        train_set: torch.utils.data.Dataset,
        collate: Callable,
        cfg: TrainConfig,
        out_dir: str | Path,
        config_dict: dict,
        classes: ClassMap,
        evaluate: Callable[[nn.Module], dict] | None = None,
        batch_sampler: Callable[[int, torch.Generator], torch.utils.data.Sampler] | None = None,
        shard_units: Sequence[nn.Module] | None = None,
    ):
        self.cfg = cfg
        self.device = resolve_device(cfg.device, "train.device")
        self.model = model.to(self.device)
        self.train_set = train_set
        self.collate = collate
        self.out_dir = Path(out_dir)
        self.config_dict = config_dict
        self.classes = classes
        self.evaluate = evaluate
        self.batch_sampler = batch_sampler
        self.world, self.rank = distributed.world_size(), distributed.rank()
        if self.world > 1 and cfg.batch_size < self.world:
            raise ValueError(f"train.batch_size is {cfg.batch_size}, below the world size {self.world}: it is the "
                             f"global batch, and every rank needs a video per step; set it to a multiple of {self.world}")
        self.epoch_steps = [len(self._rank_batches(e)) for e in range(cfg.epochs)]
        self._check_batches()
        self.step_model: nn.Module = _Losses(self.model)
        self.sharded = shard_units is not None and self.world > 1
        if self.sharded:
            units = list(shard_units)
            self.whole_params = sharding.shard(self.step_model, units, self.device)
            held, total = sharding.held_parameters(self.model)
            log.info("FSDP2: %d groups sharded over %d processes; rank 0 holds %d of the model's %d parameters "
                     "between steps", len(units) + 1, self.world, held, total)
        elif distributed.active():  # also at world size 1, so one GPU runs the code of many
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_model = nn.parallel.DistributedDataParallel(self.step_model, device_ids=ids)
        groups = _param_groups(model, cfg.weight_decay)
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        self.scheduler = lr_schedule(self.optimizer, cfg.schedule, self.epoch_steps, cfg.warmup_epochs,
                                     cfg.step_epochs, cfg.step_gamma)
        self.ema = ModelEMA(model, cfg.ema_decay) if cfg.ema_decay is not None else None
        self.epoch = 0  # epochs completed
        self.best_metric: float | None = None
        self.best_epoch: int | None = None

    # -- checkpoints ---------------------------------------------------------------
    def _training_state(self) -> dict:
        return {
            "epoch": self.epoch,
            "optimizer": sharding.full_optimizer_state(self.optimizer) if self.sharded else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
        }

    def save(self, name: str) -> Path:
        # Sharded, every rank takes part in gathering the whole tensors; rank 0 writes them.
        if not (self.sharded or distributed.is_main()):
            return self.out_dir / name
        whole = sharding.full_state if self.sharded else dict
        model_state = whole(trainable_state(self.model))
        ema_state = whole(self.ema.state_dict()) if self.ema is not None else None
        training_state = self._training_state()
        if not distributed.is_main():
            return self.out_dir / name
        return save_checkpoint(self.out_dir / name, model_state, self.config_dict, self.classes, ema_state=ema_state,
                               training_state=training_state)

    def resume(self, path: str | Path) -> None:
        ckpt = load_checkpoint(path)
        if ckpt.state is None:
            raise ValueError(f"{ckpt.path}: has no training state to resume from")

        def does_not_fit(what: str, detail: str) -> ValueError:
            changes = config_changes(ckpt.config, self.config_dict)
            differ = (f"\nentries of this run's config that differ from the checkpoint's config.yaml: "
                      f"{'; '.join(changes)}\n(set them back with --set KEY=VALUE, or train into a new out_dir)"
                      if changes else "")
            return ValueError(f"{ckpt.path}: cannot resume: {what} this model ({detail}){differ}")

        problems = weight_mismatches(self.model, ckpt.model)
        if problems:
            raise does_not_fit("its weights do not fit", "; ".join(problems))
        # A checkpoint holds whole tensors; a sharded run takes its own shards of them.
        cut = sharding.cut_state if self.sharded else (lambda like, state: state)
        load_weights(self.model, cut(self.model.state_dict(), ckpt.model), ckpt.path)
        if self.ema is not None:
            if ckpt.ema is None:
                raise ValueError(f"{ckpt.path}: has no EMA weights but train.ema_decay is set")
            self.ema.load_state_dict(cut(self.ema.shadow, ckpt.ema))
        try:
            if self.sharded:
                sharding.load_optimizer_state(self.optimizer, ckpt.state["optimizer"])
            else:
                self.optimizer.load_state_dict(ckpt.state["optimizer"])
        except ValueError as e:  # the model has parameters the saved optimizer never saw
            raise does_not_fit("its optimizer state does not fit", str(e)) from None
        self.scheduler.load_state_dict(ckpt.state["scheduler"])
        self.epoch = int(ckpt.state["epoch"])
        self.best_metric = ckpt.state["best_metric"]
        self.best_epoch = ckpt.state["best_epoch"]
        log.info("resumed from %s after epoch %d", ckpt.path, self.epoch)

    # -- loop ----------------------------------------------------------------------
    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)

    def _batches(self, epoch: int):
        """The epoch's global batches: `batch_sampler`'s, or `batch_size` items at random."""
        generator = self._generator(epoch)
        if self.batch_sampler is not None:
            return self.batch_sampler(epoch, generator)
        # Two seeds drawn, then a randperm: the order in which the runs of research/README.md
        # were trained (a shuffling DataLoader drew a worker seed for each of the two
        # iterators that tqdm.auto and the loop made), so that they reproduce.
        torch.empty(2, dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(len(self.train_set), generator=generator).tolist()
        size = self.cfg.batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]

    def _rank_batches(self, epoch: int) -> list[list]:
        """This rank's part of each global batch that has an item for every rank."""
        return [distributed.rank_part(list(b), self.rank, self.world) for b in self._batches(epoch)
                if len(b) >= self.world]

    def _check_batches(self) -> None:
        if self.world == 1:
            return
        if not all(self.epoch_steps):
            raise ValueError(f"train: no batch of an epoch has {self.world} items (the world size), so no rank can "
                             "train; use fewer processes or larger batches")
        left_out = sum(len(b) for b in self._batches(0) if len(b) < self.world)
        if left_out and distributed.is_main():
            log.warning("the last batch of an epoch has fewer videos than the %d processes: %d video(s) per epoch "
                        "are left out (a global batch size that divides the training set avoids it)", self.world, left_out)

    def _loader(self, epoch: int) -> torch.utils.data.DataLoader:
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        # Its own generator seeds the workers, and keeps the loader off the global RNG that
        # dropout and drop path draw from.
        return torch.utils.data.DataLoader(self.train_set, batch_sampler=self._rank_batches(epoch),
                                           collate_fn=self.collate, num_workers=self.cfg.num_workers,
                                           generator=self._generator(epoch))

    def _autocast(self):
        enabled = self.cfg.amp and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_epoch(self, epoch: int) -> dict:
        self.model.train()
        torch.manual_seed(self.cfg.seed * 1000 + epoch)
        sums: dict[str, float] = {}
        count = 0
        # An iterator, not the loader: tqdm.auto would make one more of the loader's own
        # (starting its workers twice).
        bar = tqdm(iter(self._loader(epoch)), desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False,
                   disable=not (self.cfg.progress and distributed.is_main()), unit="batch")
        for batch in bar:
            batch = batch.to(self.device)
            with self._autocast():
                losses = self.step_model(batch)
            # A rank's loss is its part of the global batch's (the head normalises by the
            # positives of all ranks): summed over ranks it is the single process's loss,
            # and every rank sees a NaN on any rank, so all of them stop together.
            values = distributed.all_reduce_sum(torch.stack([v.detach().float() for v in losses.values()]))
            total = dict(zip(losses, values.tolist()))
            if not math.isfinite(total["loss"]):
                raise FloatingPointError(f"epoch {epoch + 1}: loss is {total['loss']} on a batch with videos "
                                         f"{batch.video_ids}" + (f" (rank {self.rank}'s part)" if self.world > 1 else ""))
            self.optimizer.zero_grad(set_to_none=True)
            # DDP and FSDP2 average gradients over ranks; the global batch's gradient is their sum.
            (losses["loss"] * self.world).backward()
            if self.sharded:
                sharding.average_gradients(self.whole_params)
            if self.cfg.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
            for k, v in total.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            bar.set_postfix(loss=f"{sums['loss'] / count:.3f}")
        return {f"train_{k}": v / max(count, 1) for k, v in sums.items()}

    def _evaluate(self) -> dict:
        # The EMA's weights go into the shards first, then every group is gathered whole
        # for the ranks' unequal shares of the evaluation items.
        with self.ema.applied(self.model) if self.ema is not None else nullcontext():
            with sharding.gathered(self.step_model) if self.sharded else nullcontext():
                return self.evaluate(self.model)

    def fit(self, resume: str | Path | None = None) -> TrainResult:
        start = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            self.resume(resume)
        metrics_log = MetricsLog(self.out_dir, self.cfg.tensorboard) if distributed.is_main() else None
        first_epoch = self.epoch + 1
        row: dict = {}
        while self.epoch < self.cfg.epochs:
            epoch = self.epoch
            t0 = time.perf_counter()
            row = {"epoch": epoch + 1, "step": sum(self.epoch_steps[: epoch + 1]), **self.train_epoch(epoch)}
            summary = getattr(self._batches(epoch), "summary", None)
            if summary:
                row["batches"] = summary
            row["lr"] = self.scheduler.get_last_lr()[0]
            row["epoch_s"] = round(time.perf_counter() - t0, 3)
            self.epoch = epoch + 1
            last = self.epoch == self.cfg.epochs
            every = self.cfg.eval_every
            if self.evaluate is not None and (last or (every and self.epoch % every == 0)):
                metrics = self._evaluate()
                row.update(metrics)
                score = metrics.get("average_mAP")
                if score is not None and (self.best_metric is None or score > self.best_metric):
                    self.best_metric, self.best_epoch = score, self.epoch
                    self.save("best")
            log.info("epoch %d/%d: %s", self.epoch, self.cfg.epochs,
                     ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "epoch"))
            if metrics_log is not None:
                metrics_log.add(row, row["step"])
            self.save("last")
            if self.cfg.checkpoint_every and self.epoch % self.cfg.checkpoint_every == 0:
                self.save(f"epoch_{self.epoch:04d}")
        distributed.barrier()  # the last checkpoint is on disk before any rank reads it
        return TrainResult(self.out_dir, self.epoch - first_epoch + 1, first_epoch, self.epoch, row, self.best_metric,
                           self.best_epoch, time.perf_counter() - start)
