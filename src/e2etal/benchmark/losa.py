"""Peak memory and step time of a LoSA training step beside the ways it is meant to beat.

One training sample is one window of `frames` frames (batch 1), cut into
`frames / clip_frames` clips `[N, 3, F, H, W]` (random RGB in [0, 1], kept in host
memory, pinned on CUDA). On top sits the ActionFormer head (`HeadConfig` with the
backbone's width as input, trained on a few random segments). Four ways to run it:

    frozen   the floor: the backbone forward over all clips under no_grad, in
             micro-batches, no head. A LoSA step cannot be faster than this.
    losa     FrozenBackbone (no grad, pooled taps) -> LoSAAdapters -> head -> loss
             -> backward -> AdamW on adapters + head. Nothing is differentiated
             through the backbone; `bench` raises if a backbone parameter gets a gradient.
    adatad   AdaTAD-style (Liu et al., arXiv 2311.17241): a small temporal adapter
             after every block (`AdaptedBlock`), backbone weights frozen but the
             gradient flows back through every block to reach the adapters, each
             block checkpointed; spatial mean of the last tokens -> head -> AdamW on
             adapters + head. All clips go through each block together, because the
             adapters' temporal convolution crosses clip boundaries.
    full     full fine-tuning: every backbone weight trainable, each block
             checkpointed, all clips together -> head -> AdamW on everything.

On CUDA the backbone weights are bf16 in every method (so `full` keeps bf16 weights,
gradients and AdamW states, as DESIGN.md's anchors) and the compute runs under bf16
autocast; small trainable modules (adapters, head) keep float32 weights. On CPU
everything is float32.

Processes. Each method runs in a fresh process of its own, one method after another
(forkserver where the platform has it: forked from a server that imported torch and this
module once and never touched CUDA or a thread pool; spawn elsewhere). Nothing carries
over from one method to the next (allocator caches, CUDA peak counter, autograd graphs),
the peak memory of a process is that of its method alone, and CUDA is initialised in the
method's process only, never in the caller's. Each row names its process (`pid`). Call
`bench_losa` from under `if __name__ == "__main__":` in a script, as for any
multiprocessing code.

Memory. `peak_mem_gb` and `base_mem_gb` (GB = 1e9 bytes) mean different things per device:

    cuda  `torch.cuda.max_memory_allocated` of the method's process, counted from just
          after the model is built (the fp32 -> bf16 cast at build time is not part of a
          step): the bytes of live tensors the caching allocator handed out over the
          warm-up and timed steps -- weights, gradients, optimizer states, activations and
          saved tensors, the clips copied to the device. Not counted: the CUDA context,
          blocks the allocator caches while free (`memory_reserved` minus this), library
          workspaces outside the allocator, and host memory. The base is
          `memory_allocated` before the model is built (the target, about 0).
    cpu   the peak resident set size of the method's process (`getrusage(RUSAGE_SELF)
          .ru_maxrss`, the kernel's high-water mark VmHWM): everything resident at the
          fullest moment of the process -- the Python interpreter and imported modules,
          the pages of torch's libraries that were touched, the input window, float32
          weights, gradients, optimizer states, activations and saved tensors, thread
          stacks, oneDNN scratch, and heap memory the C allocator keeps after tensors are
          freed. The base is the same high-water mark just before the model is built
          (interpreter, torch runtime, input window), so `peak - base` is the method's own
          increase. It is page-granular and an upper bound of what its tensors need: it
          also holds the library pages its ops touch first (autograd, the kernels: tens of
          MB, most of a --tiny figure) and freed heap the allocator kept. It is float32
          where CUDA's is bf16 and counts more than tensors, so it compares methods with
          each other, not with the CUDA figure or its targets.

Time. After `warmup` untimed steps, each step is timed (`time.perf_counter`, synchronised
around the step on CUDA; a step includes copying the clips from host memory), at least
`steps` of them and more until they add up to `min_time_s` (1 s: a few steps of a few ms
would sample a few scheduler time slices). A row gives their min, median and max,
`x_frozen` (its median over the frozen row's median, the figure of the target) and
`x_frozen_min` (min over min). Each process runs `threads` intra-op threads (default 1), because a thread pool as
wide as a CPU that other work shares measures that work's load instead of the method:
every parallel op waits at its end for its slowest thread, OpenMP's idle threads spin on
the cores the working ones need, and a thread that loses its core stalls the op for a
scheduler time slice. A step's time then grows with its number of ops rather than its
work and flips between regimes as the load comes and goes; the LoSA step (a head, a
loss, a backward and AdamW over hundreds of small tensors: thousands of small ops) is hit
far harder than the frozen forward (a few large ops), and their ratio can move by two
orders of magnitude from one run to the next. One thread is slowed only in proportion to
the load, every method alike; at --tiny sizes the frozen step (a few ms, about one time
slice) remains the noisiest figure, which is why min / median / max are all reported.

A method that runs out of CUDA memory gets a row with status "OOM"; one whose process
fails or is killed (out of host memory) stops the bench with an error naming it.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    import resource
except ImportError:  # Windows: no peak RSS
    resource = None

from e2etal.adapters.adatad import add_serial_adapters
from e2etal.adapters.frozen import FrozenBackbone, FrozenPassConfig
from e2etal.adapters.losa import LoSAAdapters, LoSAConfig
from e2etal.backbones.factory import BACKBONES as PRESETS
from e2etal.backbones.vit import VisionTransformer
from e2etal.engine.trainer import resolve_device
from e2etal.heads import HeadConfig, build_head
from e2etal.heads.actionformer import ActionFormerHead

__all__ = [
    "BACKBONES",
    "METHODS",
    "TARGET_PEAK_GB",
    "TARGET_X_FROZEN",
    "BenchSettings",
    "bench_losa",
    "bench_settings",
    "build_bench_vit",
    "check_targets",
    "format_table",
    "run_bench",
]

METHODS = ("frozen", "losa", "adatad", "full")
# The ViT presets of `e2etal.extract` (the one preset table): LoSA needs tapped layers.
BACKBONES: dict[str, Callable[..., VisionTransformer]] = {k: v for k, v in PRESETS.items() if k.startswith("vit-")}
TINY = "tiny"  # a 4-block, 64-wide ViT at 32 px for smoke tests (CI on CPU)
TINY_FRAMES, TINY_RES = 64, 32
DEFAULT_FRAMES, DEFAULT_RES = 768, 224

# The targets, set for ViT-g, 768 frames at 224 px, batch 1, on an H100.
TARGET_PEAK_GB = 4.0
TARGET_X_FROZEN = 1.2

LEARNING_RATE = 1e-4
GB = 1e9
CUDA_MEASURE, CPU_MEASURE = "cuda max_memory_allocated", "cpu peak RSS"  # a row's mem_measure
# What torch imports on first use, imported before a method's baseline so that neither its
# time nor its own memory holds them: the first optimizer imports torch._dynamo (sympy
# and hundreds of modules: seconds, about 90 MB of RSS).
LAZY_IMPORTS = ("torch._dynamo",)


def build_bench_vit(name: str, **kwargs) -> VisionTransformer:
    """A randomly initialised backbone by bench name: "vit-s" ... "vit-g", or "tiny"."""
    if name == TINY:
        return VisionTransformer(
            **{"img_size": TINY_RES, "patch_size": 16, "embed_dim": 64, "depth": 4, "num_heads": 4, **kwargs}
        )
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)} (or --tiny)")
    return BACKBONES[name](**kwargs)


# ---------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchSettings:
    backbone: str  # "vit-s" ... "vit-g" or "tiny"
    backbone_params: int
    width: int  # D
    depth: int
    patch: int  # px
    tubelet: int  # frames per temporal token
    frames: int  # frames in the window (batch 1)
    res: int  # px, square
    clip_frames: int  # frames per clip
    micro_batch: int  # clips per backbone call in the no-grad passes (frozen, losa)
    methods: tuple[str, ...]
    steps: int  # timed steps per method, at least
    min_time_s: float  # and more until the timed ones add up to this
    warmup: int  # untimed steps before them
    device: torch.device
    dtype: str  # "bf16" (CUDA only) or "fp32"
    threads: int  # intra-op CPU threads of each method's process

    @property
    def num_clips(self) -> int:
        return self.frames // self.clip_frames

    @property
    def clip_tokens(self) -> int:
        """Temporal tokens per clip."""
        return self.clip_frames // self.tubelet

    @property
    def tokens(self) -> int:
        """Temporal positions T' of the window, the length of the head's input."""
        return self.num_clips * self.clip_tokens

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.dtype == "bf16" else torch.float32

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(device=str(self.device), methods=list(self.methods), clips=self.num_clips, tokens=self.tokens)
        return out


def bench_settings(
    backbone: str = "vit-g",
    frames: int | None = None,
    res: int | None = None,
    clip_frames: int = 16,
    micro_batch: int = 8,
    methods: Sequence[str] = METHODS,
    steps: int = 5,
    warmup: int = 2,
    device: str = "auto",
    dtype: str = "bf16",
    tiny: bool = False,
    threads: int = 1,
    min_time_s: float = 1.0,
) -> BenchSettings:
    """Check and complete the settings of `bench_losa` before any model is built.

    frames / res default to 768 / 224, or 64 / 32 with `tiny` (which replaces
    `backbone` by the tiny ViT). Off CUDA the dtype is always fp32. `threads` is the
    intra-op thread count of each method's process; timing stops after at least `steps`
    steps adding up to at least `min_time_s` (see the module docstring for why).
    """
    name = TINY if tiny else backbone
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods {list(methods)}: expected distinct names among {', '.join(METHODS)}")
    for label, value, low in (("steps", steps, 1), ("warmup", warmup, 0), ("micro_batch", micro_batch, 1),
                              ("clip_frames", clip_frames, 1), ("threads", threads, 1)):
        if value < low:
            raise ValueError(f"{label} must be >= {low}, got {value}")
    if min_time_s < 0:
        raise ValueError(f"min_time_s must be >= 0, got {min_time_s}")
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"dtype must be 'bf16' or 'fp32', got {dtype!r}")
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine")
    if dev.type != "cuda":
        dtype = "fp32"

    frames = frames if frames is not None else (TINY_FRAMES if tiny else DEFAULT_FRAMES)
    res = res if res is not None else (TINY_RES if tiny else DEFAULT_RES)
    with torch.device("meta"):  # shapes and counts only, no memory, no init cost
        vit = build_bench_vit(name)
    tubelet, patch = vit.patch_embed.tubelet_size, vit.patch_embed.patch_size
    if clip_frames % tubelet:
        raise ValueError(f"clip_frames {clip_frames} is not a multiple of {name}'s tubelet of {tubelet} frames")
    if frames < clip_frames or frames % clip_frames:
        raise ValueError(f"frames {frames} is not a positive multiple of clip_frames {clip_frames}")
    if res < patch or res % patch:
        lower, upper = max(res // patch, 1) * patch, (res // patch + 1) * patch
        raise ValueError(f"res {res} px is not a multiple of {name}'s patch of {patch} px; try {lower} or {upper}")
    return BenchSettings(
        backbone=name,
        backbone_params=sum(p.numel() for p in vit.parameters()),
        width=vit.embed_dim,
        depth=vit.depth,
        patch=patch,
        tubelet=tubelet,
        frames=frames,
        res=res,
        clip_frames=clip_frames,
        micro_batch=micro_batch,
        methods=methods,
        steps=steps,
        min_time_s=min_time_s,
        warmup=warmup,
        device=dev,
        dtype=dtype,
        threads=threads,
    )


# ---------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------


def _head_config(s: BenchSettings) -> HeadConfig:
    """ActionFormer's THUMOS-14 head reading the backbone's width, no wider than 512,
    its training length the window's T' padded to a multiple of the largest stride."""
    width = min(512, s.width)
    cfg = HeadConfig(input_dim=s.width, embed_dim=width, head_dim=width)
    return replace(cfg, max_seq_len=-(-s.tokens // cfg.max_stride) * cfg.max_stride)


def _random_target(s: BenchSettings, num_classes: int, count: int = 3) -> tuple[Tensor, Tensor]:
    """A few random actions on the window's grid: segments `[count, 2]` in feature steps, labels `[count]`."""
    g = torch.Generator().manual_seed(0)
    length = 2.0 + torch.rand(count, generator=g) * (s.tokens / 4)
    start = torch.rand(count, generator=g) * (s.tokens - length).clamp(min=0)
    segments = torch.stack([start, (start + length).clamp(max=s.tokens)], dim=1)
    labels = torch.randint(num_classes, (count,), generator=g)
    return segments.to(s.device), labels.to(s.device)


def _random_clips(s: BenchSettings) -> Tensor:
    """The window `[N, 3, F, H, W]` in host memory, in the compute dtype, pinned on CUDA."""
    g = torch.Generator().manual_seed(0)
    clips = torch.rand(s.num_clips, 3, s.clip_frames, s.res, s.res, generator=g).to(s.compute_dtype)
    return clips.pin_memory() if s.device.type == "cuda" else clips


def _build_vit(s: BenchSettings) -> VisionTransformer:
    """Random weights, initialised directly on the device (ViT-g on CPU takes seconds),
    then cast to the compute dtype."""
    torch.manual_seed(0)
    with torch.device(s.device):
        vit = build_bench_vit(s.backbone)
    return vit.to(s.compute_dtype)


def _build_head(s: BenchSettings) -> ActionFormerHead:
    torch.manual_seed(0)
    return build_head(_head_config(s)).to(s.device)


def _autocast(s: BenchSettings):
    return torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.dtype == "bf16")


def _head_loss(head: ActionFormerHead, features: Tensor, target: tuple[Tensor, Tensor]) -> Tensor:
    """Head loss on one window's features `[1, T', D]`, zero-padded to the head's training length."""
    T = features.shape[1]
    length = head.cfg.max_seq_len
    x = F.pad(features.transpose(1, 2), (0, length - T))  # [1, D, L]
    mask = (torch.arange(length, device=x.device) < T)[None]  # [1, L]
    segments, labels = target
    return head.loss(head(x, mask), [segments], [labels])["loss"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], None], s: BenchSettings) -> tuple[list[float], float | None]:
    """Run `warmup` steps, then timed ones, at least `steps` and until they add up to
    `min_time_s`: (seconds of each timed step, CUDA peak GB or None off CUDA).

    The time floor is for small steps: 5 steps of a few ms sample a few scheduler time
    slices, and one burst of other work on the machine then makes the whole row. The CUDA
    peak counter restarts here, after the model is built: the build's fp32 -> bf16 cast
    holds both copies of the weights for a moment, which is not part of a step.
    """
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
        torch.cuda.reset_peak_memory_stats(s.device)
    for _ in range(s.warmup):
        step()
    times = []
    while len(times) < s.steps or sum(times) < s.min_time_s:
        _sync(s.device)
        start = time.perf_counter()
        step()
        _sync(s.device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(s.device) / GB if s.device.type == "cuda" else None
    return times, peak


def _numel(params) -> int:
    return sum(p.numel() for p in params)


def _with_grad(params) -> int:
    return sum(p.grad is not None for p in params)


def _nonzero_grad(p: Tensor) -> bool:
    return p.grad is not None and bool(p.grad.abs().sum() > 0)


def _row(method: str, times: list[float], cuda_peak_gb: float | None, params: dict[str, int], trainable: int,
         backbone_grads: int, grad_through: bool, notes: str) -> dict:
    return {
        "method": method,
        "status": "ok",
        "peak_mem_gb": cuda_peak_gb,  # see the module docstring; the CPU figure is filled in by _measure
        "base_mem_gb": None,  # the same measure before the model is built, filled in by _measure
        "mem_measure": None,  # "cuda max_memory_allocated" or "cpu peak RSS", filled in by _measure
        "step_s": statistics.median(times),  # median seconds per timed step
        "step_min_s": min(times),
        "step_max_s": max(times),
        "step_times_s": times,  # every timed step, in order
        "x_frozen": None,  # step_s / the frozen row's step_s, filled in by run_bench
        "x_frozen_min": None,  # step_min_s / the frozen row's step_min_s, filled in by run_bench
        "trainable_params": trainable,  # elements the optimizer updates
        "params": params,  # elements per part: backbone, adapters, head
        "backbone_params_with_grad": backbone_grads,  # backbone parameter tensors with a .grad after the last step
        "grad_through_backbone": grad_through,  # did a gradient reach the backbone's first block?
        "pid": None,  # the method's process, filled in by _measure
        "threads": None,  # its intra-op threads, filled in by _measure
        "notes": notes,
    }


def _oom_row(method: str) -> dict:
    return {
        "method": method, "status": "OOM", "peak_mem_gb": None, "base_mem_gb": None, "mem_measure": None,
        "step_s": None, "step_min_s": None, "step_max_s": None, "step_times_s": None, "x_frozen": None,
        "x_frozen_min": None, "trainable_params": None, "params": None, "backbone_params_with_grad": None,
        "grad_through_backbone": None, "pid": None, "threads": None, "notes": "out of CUDA memory",
    }


# ---------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------


def _run_frozen(s: BenchSettings, clips: Tensor, target: tuple[Tensor, Tensor]) -> dict:
    vit = _build_vit(s)
    vit.requires_grad_(False).eval()

    def step() -> None:
        with torch.no_grad(), _autocast(s):
            for start in range(0, s.num_clips, s.micro_batch):
                vit(clips[start : start + s.micro_batch].to(s.device, non_blocking=True))  # [n, t, h, w, D], dropped

    times, peak = _timed(step, s)
    params = {"backbone": _numel(vit.parameters()), "adapters": 0, "head": 0}
    notes = f"backbone forward only, no_grad, micro-batches of {s.micro_batch} clips"
    return _row("frozen", times, peak, params, 0, _with_grad(vit.parameters()), False, notes)


def _run_losa(s: BenchSettings, clips: Tensor, target: tuple[Tensor, Tensor]) -> dict:
    cfg, pass_cfg = LoSAConfig(), FrozenPassConfig()  # default taps and grid; micro-batch and dtype are the bench's
    vit = _build_vit(s)
    frozen = FrozenBackbone(vit, pass_cfg.taps, pass_cfg.grid, s.micro_batch, s.compute_dtype)
    torch.manual_seed(0)
    adapters = LoSAAdapters(vit.embed_dim, len(frozen.taps), cfg, grid=frozen.grid).to(s.device).train()
    head = _build_head(s).train()
    trainable = [*adapters.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(trainable, lr=LEARNING_RATE)

    def step() -> None:
        tapped, last = frozen(clips)  # [T', L, g*g, D], [T', g*g, D], no autograd history
        with _autocast(s):
            fused = adapters(tapped[None], last[None])  # [1, T', D]
            loss = _head_loss(head, fused, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times, peak = _timed(step, s)
    backbone_grads = _with_grad(vit.parameters())
    if backbone_grads:
        raise RuntimeError(
            f"the LoSA step gave {backbone_grads} backbone parameters a gradient; the frozen pass must "
            "never be differentiated"
        )
    params = {"backbone": _numel(vit.parameters()), "adapters": _numel(adapters.parameters()),
              "head": _numel(head.parameters())}
    notes = (f"taps {list(frozen.taps)} pooled {frozen.grid}x{frozen.grid} under no_grad, micro-batches of {s.micro_batch} "
             "clips; no backbone gradients")
    return _row("losa", times, peak, params, _numel(trainable), backbone_grads, False, notes)


def _end_to_end_step(s: BenchSettings, vit: VisionTransformer, head: ActionFormerHead,
                     opt: torch.optim.Optimizer, clips: Tensor, target: tuple[Tensor, Tensor]) -> Callable[[], None]:
    """One step through the whole backbone: all clips at once, spatial mean of the last tokens -> head."""

    def step() -> None:
        x = clips.to(s.device, non_blocking=True)  # [N, 3, F, H, W]
        with _autocast(s):
            tokens, _ = vit(x)  # [N, t, h, w, D]
            features = tokens.mean(dim=(2, 3)).flatten(0, 1)[None]  # [1, T', D]
            loss = _head_loss(head, features, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _run_adatad(s: BenchSettings, clips: Tensor, target: tuple[Tensor, Tensor]) -> dict:
    vit = _build_vit(s)
    backbone = list(vit.parameters())
    torch.manual_seed(0)
    adapters = add_serial_adapters(vit, s.clip_tokens).to(s.device)
    vit.grad_checkpointing = True
    vit.train()
    head = _build_head(s).train()
    trainable = [*adapters.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(trainable, lr=LEARNING_RATE)

    times, peak = _timed(_end_to_end_step(s, vit, head, opt, clips, target), s)
    params = {"backbone": _numel(backbone), "adapters": _numel(adapters.parameters()),
              "head": _numel(head.parameters())}
    notes = (f"serial temporal adapters in all {vit.depth} blocks, frozen weights, per-block checkpointing, "
             f"all {s.num_clips} clips at once")
    return _row("adatad", times, peak, params, _numel(trainable), _with_grad(backbone),
                _nonzero_grad(adapters[0].up.weight), notes)


def _run_full(s: BenchSettings, clips: Tensor, target: tuple[Tensor, Tensor]) -> dict:
    vit = _build_vit(s)  # in the compute dtype: on CUDA bf16 weights, so bf16 gradients and AdamW states
    vit.grad_checkpointing = True
    vit.train()
    head = _build_head(s).train()
    trainable = [*vit.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(trainable, lr=LEARNING_RATE)

    times, peak = _timed(_end_to_end_step(s, vit, head, opt, clips, target), s)
    params = {"backbone": _numel(vit.parameters()), "adapters": 0, "head": _numel(head.parameters())}
    states = ", bf16 weights, gradients and AdamW states" if s.dtype == "bf16" else ""
    notes = f"every backbone weight trainable, per-block checkpointing, all {s.num_clips} clips at once{states}"
    return _row("full", times, peak, params, _numel(trainable), _with_grad(vit.parameters()),
                _nonzero_grad(vit.patch_embed.proj.weight), notes)


RUNNERS = {"frozen": _run_frozen, "losa": _run_losa, "adatad": _run_adatad, "full": _run_full}


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------


def _peak_rss_bytes() -> int | None:
    """This process's peak resident set size so far (`ru_maxrss`: KiB on Linux, bytes on macOS)."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _gb(n_bytes: int | None) -> float | None:
    return None if n_bytes is None else n_bytes / GB


def _measure(s: BenchSettings, method: str) -> dict:
    """One method's row, measured in the calling process, which must be fresh (`_method_process`)."""
    torch.set_num_threads(s.threads)
    for name in LAZY_IMPORTS:
        importlib.import_module(name)
    clips = _random_clips(s)  # [N, 3, F, H, W], host memory
    target = _random_target(s, _head_config(s).num_classes)
    cuda = s.device.type == "cuda"
    base = torch.cuda.memory_allocated(s.device) if cuda else _peak_rss_bytes()
    try:
        row = RUNNERS[method](s, clips, target)
    except torch.cuda.OutOfMemoryError:
        row = _oom_row(method)
    if not cuda and row["status"] == "ok":
        row["peak_mem_gb"] = _gb(_peak_rss_bytes())
    row.update(base_mem_gb=_gb(base), mem_measure=CUDA_MEASURE if cuda else CPU_MEASURE, pid=os.getpid(),
               threads=torch.get_num_threads())
    return row


def _method_process(s: BenchSettings, method: str, conn) -> None:
    """Entry point of a method's process: send back ("ok", row) or ("error", traceback)."""
    try:
        conn.send(("ok", _measure(s, method)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _process_context() -> multiprocessing.context.BaseContext:
    """forkserver where there is one: its server imports torch and this module once, so a
    method's process starts in well under a second where spawn would import torch anew
    (seconds) for each; the server never initialises CUDA or a thread pool, which a forked
    child could not use. spawn elsewhere (Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, *LAZY_IMPORTS])  # no effect once the server runs
    return ctx


def _run_in_own_process(s: BenchSettings, method: str) -> dict:
    ctx = _process_context()
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_method_process, args=(s, method, send), name=f"bench-losa-{method}")
    process.start()
    send.close()  # so that recv() sees EOF if the process dies without a word
    try:
        status, payload = receive.recv()
    except EOFError:
        process.join()
        raise RuntimeError(
            f"bench losa: the {method} process (pid {process.pid}) ended with exit code {process.exitcode} "
            "without reporting; a negative code is the signal that ended it (-9 is usually the kernel's "
            "out-of-memory killer)"
        ) from None
    finally:
        receive.close()
        process.join(timeout=60)
        if process.is_alive():
            process.terminate()
            process.join()
    if status == "error":
        raise RuntimeError(f"bench losa: {method} failed in its process (pid {process.pid}):\n{payload}")
    return payload


def run_bench(s: BenchSettings, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Measure every method of `s.methods`, in order, each in a fresh process; one row per
    method (see `_row`). `on_row` gets each row as soon as it is measured, before the
    rows' ratios to the frozen forward are filled in."""
    rows = []
    for method in s.methods:
        rows.append(_run_in_own_process(s, method))
        if on_row is not None:
            on_row(rows[-1])
    floor = next((r for r in rows if r["method"] == "frozen" and r["status"] == "ok"), None)
    if floor is not None:
        for row in rows:
            if row["status"] == "ok":
                row["x_frozen"] = row["step_s"] / floor["step_s"]
                row["x_frozen_min"] = row["step_min_s"] / floor["step_min_s"]
    return rows


def bench_losa(**kwargs) -> list[dict]:
    """Peak memory and step times of frozen / losa / adatad / full, batch 1, each in its own process.

    See the module docstring for what each method runs and what its figures contain;
    `bench_settings` for the arguments. Each row: method, status ("ok" or "OOM"),
    peak_mem_gb, base_mem_gb, mem_measure, step_s (median), step_min_s, step_max_s,
    step_times_s, x_frozen (median-based), x_frozen_min, trainable_params,
    params {backbone, adapters, head}, backbone_params_with_grad, grad_through_backbone,
    pid, threads, notes.
    """
    return run_bench(bench_settings(**kwargs))


def check_targets(rows: list[dict]) -> list[dict]:
    """The issue's two targets for the LoSA row: [{target, value, met}], [] without a LoSA row.

    `met` is None when the value was not measured: no frozen row, or peak memory not
    measured on CUDA (a CPU peak RSS holds the Python and torch runtime and float32
    weights; it says nothing about the CUDA target).
    """
    losa = next((r for r in rows if r["method"] == "losa"), None)
    if losa is None:
        return []
    oom = losa["status"] == "OOM"
    peak = losa["peak_mem_gb"] if losa["mem_measure"] == CUDA_MEASURE else None
    checks = []
    for target, value, limit in (
        (f"LoSA peak memory <= {TARGET_PEAK_GB:g} GB", peak, TARGET_PEAK_GB),
        (f"LoSA step <= {TARGET_X_FROZEN:g} x frozen forward", losa["x_frozen"], TARGET_X_FROZEN),
    ):
        met = False if oom else (None if value is None else value <= limit)
        checks.append({"target": target, "value": value, "met": met})
    return checks


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)


def _fixed(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table: memory (peak, base before the model, own = peak - base,
    in GB), step time (min / median / max s), the ratios to the frozen row, the process."""
    lines = [f"{'method':<8} {'peak GB':>8} {'base GB':>8} {'own GB':>8} {'min s':>8} {'median s':>8} "
             f"{'max s':>8} {'x frozen':>8} {'x min':>6} {'trainable':>10} {'pid':>7}  notes"]
    for r in rows:
        if r["status"] == "OOM":
            peak, own = "OOM", "-"
        else:
            peak = _fixed(r["peak_mem_gb"], 3)
            measured = r["peak_mem_gb"] is not None and r["base_mem_gb"] is not None
            own = _fixed(r["peak_mem_gb"] - r["base_mem_gb"] if measured else None, 3)
        lines.append(
            f"{r['method']:<8} {peak:>8} {_fixed(r['base_mem_gb'], 3):>8} {own:>8} {_fixed(r['step_min_s'], 4):>8} "
            f"{_fixed(r['step_s'], 4):>8} {_fixed(r['step_max_s'], 4):>8} {_fixed(r['x_frozen'], 2):>8} "
            f"{_fixed(r['x_frozen_min'], 2):>6} {_count(r['trainable_params']):>10} {r['pid'] or '-':>7}  {r['notes']}"
        )
    measures = sorted({r["mem_measure"] for r in rows if r.get("mem_measure")})
    lines.append(f"memory: {' / '.join(measures) or 'not measured'} of each method's process, base = the same "
                 "before the model is built, own = peak - base; x frozen = median / frozen median, "
                 "x min = min / frozen min")
    return "\n".join(lines)
