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
everything is float32 and peak memory is not measured (None).

The methods run one after another in one process. Before each, memory is released and
the CUDA peak counter reset after the model is built, so a row's peak
(`torch.cuda.max_memory_allocated`, in GB = 1e9 bytes) covers its weights, optimizer
states and `warmup + steps` training steps. Step time is the median of the `steps`
timed steps, synchronised around each step; it includes copying the clips from host
memory. A method that runs out of CUDA memory gets a row with status "OOM".
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from e2etal.adapters.frozen import FrozenBackbone
from e2etal.adapters.losa import LoSAAdapters, LoSAConfig
from e2etal.backbones.vit import VisionTransformer
from e2etal.extract import BACKBONES as PRESETS
from e2etal.engine.trainer import resolve_device
from e2etal.heads import HeadConfig, build_head
from e2etal.heads.actionformer import ActionFormerHead

__all__ = [
    "BACKBONES",
    "METHODS",
    "TARGET_PEAK_GB",
    "TARGET_X_FROZEN",
    "AdaptedBlock",
    "BenchSettings",
    "TemporalAdapter",
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
    steps: int  # timed steps per method
    warmup: int  # untimed steps before them
    device: torch.device
    dtype: str  # "bf16" (CUDA only) or "fp32"

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
) -> BenchSettings:
    """Check and complete the settings of `bench_losa` before any model is built.

    frames / res default to 768 / 224, or 64 / 32 with `tiny` (which replaces
    `backbone` by the tiny ViT). Off CUDA the dtype is always fp32.
    """
    name = TINY if tiny else backbone
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods {list(methods)}: expected distinct names among {', '.join(METHODS)}")
    for label, value, low in (("steps", steps, 1), ("warmup", warmup, 0), ("micro_batch", micro_batch, 1),
                              ("clip_frames", clip_frames, 1)):
        if value < low:
            raise ValueError(f"{label} must be >= {low}, got {value}")
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
        warmup=warmup,
        device=dev,
        dtype=dtype,
    )


# ---------------------------------------------------------------------------------------
# AdaTAD-style serial adapters
# ---------------------------------------------------------------------------------------


class TemporalAdapter(nn.Module):
    """A bottleneck adapter that mixes each spatial token with its temporal neighbours.

    `forward(x [N, t*h*w, D]) -> [N, t*h*w, D]` for the N clips of one window, tokens in
    the ViT's (t, h, w) order: down-projection D -> D / reduction, a depthwise
    convolution along time at every spatial position, GELU, up-projection back to D.
    Time runs across the whole window (clip n's t positions follow clip n-1's), so a
    window's clips must pass through the adapter together. The up-projection starts
    at zero, so an untrained adapter adds nothing.
    """

    def __init__(self, dim: int, clip_tokens: int, reduction: int = 4, kernel_size: int = 3):
        super().__init__()
        width = dim // reduction
        self.clip_tokens = clip_tokens
        self.down = nn.Linear(dim, width)
        self.conv = nn.Conv1d(width, width, kernel_size, padding=kernel_size // 2, groups=width)
        self.act = nn.GELU()
        self.up = nn.Linear(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        N, L, _ = x.shape  # [N, t*h*w, D]
        t = self.clip_tokens
        z = self.down(x)  # [N, t*h*w, d]
        d = z.shape[-1]
        z = z.view(N, t, L // t, d).permute(2, 3, 0, 1).reshape(L // t, d, N * t)  # [h*w, d, N*t]
        z = self.conv(z)  # [h*w, d, N*t]
        z = z.view(L // t, d, N, t).permute(2, 3, 0, 1).reshape(N, L, d)  # [N, t*h*w, d]
        return self.up(self.act(z))  # [N, t*h*w, D]


class AdaptedBlock(nn.Module):
    """A frozen ViT block followed by a serial adapter: `y = block(x); y + adapter(y)`."""

    def __init__(self, block: nn.Module, adapter: TemporalAdapter):
        super().__init__()
        self.block = block
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        x = self.block(x)  # [N, t*h*w, D]
        return x + self.adapter(x)


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


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _timed(step: Callable[[], None], s: BenchSettings) -> tuple[float, float | None]:
    """Run `warmup + steps` steps: (median seconds of the timed ones, peak GB or None off CUDA)."""
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
        torch.cuda.reset_peak_memory_stats(s.device)
    times = []
    for i in range(s.warmup + s.steps):
        _sync(s.device)
        start = time.perf_counter()
        step()
        _sync(s.device)
        if i >= s.warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(s.device) / GB if s.device.type == "cuda" else None
    return statistics.median(times), peak


def _numel(params) -> int:
    return sum(p.numel() for p in params)


def _with_grad(params) -> int:
    return sum(p.grad is not None for p in params)


def _nonzero_grad(p: Tensor) -> bool:
    return p.grad is not None and bool(p.grad.abs().sum() > 0)


def _row(method: str, step_s: float, peak_gb: float | None, params: dict[str, int], trainable: int,
         backbone_grads: int, grad_through: bool, notes: str) -> dict:
    return {
        "method": method,
        "status": "ok",
        "peak_mem_gb": peak_gb,  # torch.cuda.max_memory_allocated / 1e9; None off CUDA
        "step_s": step_s,  # median seconds per step
        "x_frozen": None,  # step_s / the frozen row's step_s, filled in by run_bench
        "trainable_params": trainable,  # elements the optimizer updates
        "params": params,  # elements per part: backbone, adapters, head
        "backbone_params_with_grad": backbone_grads,  # backbone parameter tensors with a .grad after the last step
        "grad_through_backbone": grad_through,  # did a gradient reach the backbone's first block?
        "notes": notes,
    }


def _oom_row(method: str) -> dict:
    return {
        "method": method, "status": "OOM", "peak_mem_gb": None, "step_s": None, "x_frozen": None,
        "trainable_params": None, "params": None, "backbone_params_with_grad": None,
        "grad_through_backbone": None, "notes": "out of CUDA memory",
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

    step_s, peak = _timed(step, s)
    params = {"backbone": _numel(vit.parameters()), "adapters": 0, "head": 0}
    notes = f"backbone forward only, no_grad, micro-batches of {s.micro_batch} clips"
    return _row("frozen", step_s, peak, params, 0, _with_grad(vit.parameters()), False, notes)


def _run_losa(s: BenchSettings, clips: Tensor, target: tuple[Tensor, Tensor]) -> dict:
    cfg = LoSAConfig()
    vit = _build_vit(s)
    frozen = FrozenBackbone(vit, cfg.taps, cfg.grid, s.micro_batch, s.compute_dtype)
    torch.manual_seed(0)
    adapters = LoSAAdapters(vit.embed_dim, len(frozen.taps), cfg).to(s.device).train()
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

    step_s, peak = _timed(step, s)
    backbone_grads = _with_grad(vit.parameters())
    if backbone_grads:
        raise RuntimeError(
            f"the LoSA step gave {backbone_grads} backbone parameters a gradient; the frozen pass must "
            "never be differentiated"
        )
    params = {"backbone": _numel(vit.parameters()), "adapters": _numel(adapters.parameters()),
              "head": _numel(head.parameters())}
    notes = (f"taps {list(frozen.taps)} pooled {cfg.grid}x{cfg.grid} under no_grad, micro-batches of {s.micro_batch} "
             "clips; no backbone gradients")
    return _row("losa", step_s, peak, params, _numel(trainable), backbone_grads, False, notes)


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
    vit.requires_grad_(False)
    backbone = list(vit.parameters())
    torch.manual_seed(0)
    adapters = nn.ModuleList(TemporalAdapter(vit.embed_dim, s.clip_tokens) for _ in vit.blocks).to(s.device)
    vit.blocks = nn.ModuleList(AdaptedBlock(block, adapter) for block, adapter in zip(vit.blocks, adapters))
    vit.grad_checkpointing = True
    vit.train()
    head = _build_head(s).train()
    trainable = [*adapters.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(trainable, lr=LEARNING_RATE)

    step_s, peak = _timed(_end_to_end_step(s, vit, head, opt, clips, target), s)
    params = {"backbone": _numel(backbone), "adapters": _numel(adapters.parameters()),
              "head": _numel(head.parameters())}
    notes = (f"serial temporal adapters in all {vit.depth} blocks, frozen weights, per-block checkpointing, "
             f"all {s.num_clips} clips at once")
    return _row("adatad", step_s, peak, params, _numel(trainable), _with_grad(backbone),
                _nonzero_grad(adapters[0].up.weight), notes)


def _run_full(s: BenchSettings, clips: Tensor, target: tuple[Tensor, Tensor]) -> dict:
    vit = _build_vit(s)  # in the compute dtype: on CUDA bf16 weights, so bf16 gradients and AdamW states
    vit.grad_checkpointing = True
    vit.train()
    head = _build_head(s).train()
    trainable = [*vit.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(trainable, lr=LEARNING_RATE)

    step_s, peak = _timed(_end_to_end_step(s, vit, head, opt, clips, target), s)
    params = {"backbone": _numel(vit.parameters()), "adapters": 0, "head": _numel(head.parameters())}
    states = ", bf16 weights, gradients and AdamW states" if s.dtype == "bf16" else ""
    notes = f"every backbone weight trainable, per-block checkpointing, all {s.num_clips} clips at once{states}"
    return _row("full", step_s, peak, params, _numel(trainable), _with_grad(vit.parameters()),
                _nonzero_grad(vit.patch_embed.proj.weight), notes)


RUNNERS = {"frozen": _run_frozen, "losa": _run_losa, "adatad": _run_adatad, "full": _run_full}


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------


def run_bench(s: BenchSettings) -> list[dict]:
    """Measure every method of `s.methods`, in order; one row per method (see `_row`)."""
    clips = _random_clips(s)  # [N, 3, F, H, W], host memory
    target = _random_target(s, _head_config(s).num_classes)
    rows = []
    for method in s.methods:
        _release(s.device)
        try:
            rows.append(RUNNERS[method](s, clips, target))
        except torch.cuda.OutOfMemoryError:
            rows.append(_oom_row(method))
        _release(s.device)
    floor = next((r["step_s"] for r in rows if r["method"] == "frozen" and r["status"] == "ok"), None)
    for row in rows:
        if floor and row["step_s"] is not None:
            row["x_frozen"] = row["step_s"] / floor
    return rows


def bench_losa(**kwargs) -> list[dict]:
    """Peak memory and median step time of frozen / losa / adatad / full, batch 1.

    See the module docstring for what each method runs; `bench_settings` for the
    arguments. Each row: method, status ("ok" or "OOM"), peak_mem_gb (None off CUDA),
    step_s, x_frozen, trainable_params, params {backbone, adapters, head},
    backbone_params_with_grad, grad_through_backbone, notes.
    """
    return run_bench(bench_settings(**kwargs))


def check_targets(rows: list[dict]) -> list[dict]:
    """The issue's two targets for the LoSA row: [{target, value, met}], [] without a LoSA row.

    `met` is None when the value was not measured (peak memory off CUDA, or no frozen row).
    """
    losa = next((r for r in rows if r["method"] == "losa"), None)
    if losa is None:
        return []
    oom = losa["status"] == "OOM"
    checks = []
    for target, value, limit in (
        (f"LoSA peak memory <= {TARGET_PEAK_GB:g} GB", losa["peak_mem_gb"], TARGET_PEAK_GB),
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


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table."""
    lines = [f"{'method':<8} {'peak GB':>8} {'step s':>8} {'x frozen':>8} {'trainable':>10}  notes"]
    for r in rows:
        if r["status"] == "OOM":
            peak, step = "OOM", "-"
        else:
            peak = "n/a" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.2f}"
            step = f"{r['step_s']:.3f}"
        ratio = "-" if r["x_frozen"] is None else f"{r['x_frozen']:.2f}"
        lines.append(f"{r['method']:<8} {peak:>8} {step:>8} {ratio:>8} {_count(r['trainable_params']):>10}  {r['notes']}")
    return "\n".join(lines)
