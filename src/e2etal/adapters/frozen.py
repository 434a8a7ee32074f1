"""The frozen backbone pass of LoSA: tapped layers pooled to a small grid, no autograd.

LoSA's adapters read intermediate layers of a frozen video backbone but never
backpropagate through it, so the backbone runs under `torch.no_grad()` and each tapped
layer is reduced to a `g x g` spatial grid as soon as the backbone produces it (through
the backbone's `tap_fn`). What survives the pass is only the pooled taps, `[T', L, g*g, D]`:
peak memory is the weights, one micro-batch of activations and the pooled taps.

Two backbone families can be tapped (`tap_layout` says how): a video ViT, whose layers
are its blocks, all of width D, and a TSM-ResNet, whose layers are its four stages, of
growing width (D = the last stage's). A tap narrower than D is zero-padded in channels;
`FrozenBackbone.tap_widths` tells the adapters how many channels of each tap are real.

Clips are concatenated along time: a window of N clips of F frames gives `T' = N * F / s`
temporal positions, s the backbone's frames per position (the ViT's tubelet, 1 for a
TSM-ResNet), clip n's positions following clip n-1's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from e2etal.backbones.layout import TapLayout

__all__ = ["FrozenBackbone", "FrozenPassConfig", "frozen_taps", "pool_tokens", "tap_layout"]

_DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class FrozenPassConfig:
    """The frozen backbone pass shared by LoSA and head-only transfer (the `frozen:` section
    of an experiment config). Head-only transfer reads only the last layer, but taps the
    same layers, so that both methods share one tap cache."""

    # Backbone layers read (1-based): ViT blocks or TSM-ResNet stages. None -> the
    # backbone's default: for a ViT every 4th block of the second half plus the last,
    # (24, 28, 32, 36, 40) for ViT-g; for a TSM-ResNet stages (2, 3, 4).
    taps: tuple[int, ...] | None = None
    grid: int = 2  # side of the pooled spatial grid of each tap (g x g tokens per position)
    micro_batch: int = 8  # clips per backbone call
    dtype: str = "auto"  # "auto" = bf16 on CUDA, fp32 on CPU; or "bf16", "fp32"

    def __post_init__(self) -> None:
        if self.taps is not None:
            self.taps = tuple(self.taps)
            if not self.taps or any(layer < 1 for layer in self.taps) or len(set(self.taps)) != len(self.taps):
                raise ValueError(f"frozen.taps {list(self.taps)}: expected null or distinct 1-based layer numbers")
        if self.grid < 1:
            raise ValueError(f"frozen.grid: expected >= 1, got {self.grid}")
        if self.micro_batch < 1:
            raise ValueError(f"frozen.micro_batch: expected >= 1, got {self.micro_batch}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"frozen.dtype: expected one of {', '.join(_DTYPES)}, got {self.dtype!r}")

    def torch_dtype(self) -> torch.dtype | None:
        return _DTYPES[self.dtype]


def tap_layout(backbone: nn.Module) -> TapLayout:
    """The backbone's `TapLayout`; a module without the backbone interface
    (`e2etal.backbones.layout`) cannot be tapped."""
    if not (callable(getattr(backbone, "tap_layout", None)) and callable(getattr(backbone, "forward_taps", None))):
        raise TypeError(f"LoSA cannot tap a {type(backbone).__name__}; expected a backbone with tap_layout() and "
                        "forward_taps() (a VisionTransformer or a TSMResNet)")
    return backbone.tap_layout()


def pool_tokens(tokens: Tensor, grid: int) -> Tensor:
    """Fixed adaptive average pooling of a token map to `grid x grid`.

    tokens: `[B, T', h, w, D]` -> `[B, T', grid*grid, D]`, grid cells in row-major (y, x)
    order. Cell (i, j) averages rows `floor(i*h/g) .. ceil((i+1)*h/g) - 1` and the same
    for columns, as `adaptive_avg_pool2d`. The output keeps the input dtype.
    """
    if tokens.ndim != 5:
        raise ValueError(f"expected a token map [B, T', h, w, D], got shape {tuple(tokens.shape)}")
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    B, t, h, w, D = tokens.shape
    # A channels-last view of the token map: the pooling reads it in place, without
    # first copying the whole map into [N, D, h, w] layout.
    maps = tokens.flatten(0, 1).permute(0, 3, 1, 2)  # [B*T', D, h, w]
    pooled = F.adaptive_avg_pool2d(maps, grid)  # [B*T', D, g, g]
    return pooled.permute(0, 2, 3, 1).reshape(B, t, grid * grid, D)  # [B, T', g*g, D]


def _compute_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    """The autocast dtype of the frozen pass: bf16 on CUDA unless told otherwise."""
    if dtype is not None:
        return dtype
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def frozen_taps(
    backbone: nn.Module,
    clips: Tensor,
    taps: Sequence[int],
    grid: int,
    micro_batch: int,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the frozen backbone over a window of clips and keep only pooled taps.

    clips: `[N, 3, F, H, W]`, on any device; micro-batches are moved to the backbone's
    device one at a time, so a long window may stay in (pinned) host memory.
    taps: 1-based layer numbers (ViT blocks, TSM-ResNet stages); grid: side of the pooled
    grid; micro_batch: clips per backbone call. dtype: autocast dtype of the pass; None
    means bf16 on CUDA and plain float32 elsewhere; float32 disables autocast.

    Returns float32 tensors with no autograd history, on the backbone's device:
      tapped `[N*T, L, g*g, D]`, the tapped layers in the order of `taps`, each in its
             first `width_l` channels and zero in the rest (D = the last layer's width);
      last   `[N*T, g*g, D]`, the last layer's tokens, pooled the same way;
    where `T = F / frames per position` and clip n's T positions follow clip n-1's.

    The backbone's train/eval mode is left as it is (`FrozenBackbone` keeps it in eval).
    """
    layout = tap_layout(backbone)
    taps = tuple(taps)
    if not taps:
        raise ValueError("taps is empty; expected at least one 1-based layer number")
    if len(set(taps)) != len(taps):
        raise ValueError(f"taps {taps} repeat a layer; expected distinct layer numbers")
    layout.check_taps(taps)
    if clips.ndim != 5 or clips.shape[1] != 3:
        raise ValueError(f"expected clips [N, 3, F, H, W], got shape {tuple(clips.shape)}")
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    num_clips, _, num_frames = clips.shape[:3]
    if num_clips == 0:
        raise ValueError("no clips: expected clips [N, 3, F, H, W] with N >= 1")
    step = layout.frames_per_position
    if num_frames % step:
        raise ValueError(f"clips of {num_frames} frames do not tile into tubelets of {step} frames")
    t = num_frames // step
    width = layout.width
    device = next(backbone.parameters()).device
    compute_dtype = _compute_dtype(device, dtype)

    # Filled micro-batch by micro-batch, so the pooled taps are never held twice (as a
    # list of pieces and as their concatenation). Zeros: the padding of narrower taps.
    tapped = torch.zeros(num_clips, t, len(taps), grid * grid, width, device=device)  # [N, T, L, g*g, D]
    last = torch.empty(num_clips, t, grid * grid, width, device=device)  # [N, T, g*g, D]

    def pool(tokens: Tensor) -> Tensor:
        return pool_tokens(tokens, grid).float()  # [n, T, g*g, D_l]

    # no_grad rather than inference_mode: the pooled taps feed trainable adapters, which
    # save them for backward, and inference tensors cannot be saved.
    with torch.no_grad(), torch.autocast(
        device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32
    ):
        for start in range(0, num_clips, micro_batch):
            stop = min(start + micro_batch, num_clips)
            chunk = clips[start:stop].to(device, non_blocking=True)  # [n, 3, F, H, W]
            tokens, pooled = backbone.forward_taps(chunk, taps, pool)  # [n, T, h, w, D], {layer: [n, T, g*g, D_l]}
            last[start:stop] = pool(tokens)
            for i, layer in enumerate(taps):
                tapped[start:stop, :, i, :, : layout.widths[layer - 1]] = pooled[layer]
            del tokens, pooled
    return tapped.flatten(0, 1), last.flatten(0, 1)  # [N*T, L, g*g, D], [N*T, g*g, D]


class FrozenBackbone(nn.Module):
    """A video backbone (ViT or TSM-ResNet) that is never trained: no gradients, always
    in eval mode.

    `forward(clips [N, 3, F, H, W]) -> (tapped [N*T, L, g*g, D], last [N*T, g*g, D])`
    via `frozen_taps`. The backbone stays in eval mode when a parent module is put in
    train mode, because dropout / drop-path in a frozen encoder would only add noise to
    the features the adapters learn from (and BatchNorm must use its running statistics).

    taps: 1-based ViT blocks or TSM-ResNet stages; None = the backbone's default (every
    4th block of the second half plus the last for a ViT, stages 2, 3, 4 for a ResNet).

    The weights are ordinary (non-trainable) parameters of this module, so they appear
    in `parameters()` and `state_dict()`; optimizers should take only parameters with
    `requires_grad`. `weights_sha256` identifies them where known (the SHA-256 of the
    checkpoint file they came from), so that a tap cache need not hash them.
    """

    def __init__(
        self,
        backbone: nn.Module,
        taps: Sequence[int] | None = None,
        grid: int = 2,
        micro_batch: int = 8,
        dtype: torch.dtype | None = None,
        weights_sha256: str | None = None,
    ):
        super().__init__()
        self.layout = tap_layout(backbone)
        taps = tuple(taps) if taps is not None else self.layout.default_taps
        self.layout.check_taps(taps)
        if grid < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        self.backbone = backbone
        self.taps = taps
        self.grid = grid
        self.micro_batch = micro_batch
        self.dtype = dtype
        self.weights_sha256 = weights_sha256
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    @property
    def width(self) -> int:
        """Channels D of the last layer, and of the tapped features (narrower taps padded)."""
        return self.layout.width

    @property
    def tap_widths(self) -> tuple[int, ...]:
        """Real channels of each tap, in the order of `taps`."""
        return tuple(self.layout.widths[layer - 1] for layer in self.taps)

    @property
    def frames_per_position(self) -> int:
        """Input frames per temporal position: the ViT's tubelet, 1 for a TSM-ResNet."""
        return self.layout.frames_per_position

    def train(self, mode: bool = True) -> "FrozenBackbone":
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, clips: Tensor) -> tuple[Tensor, Tensor]:
        return frozen_taps(self.backbone, clips, self.taps, self.grid, self.micro_batch, self.dtype)

    def extra_repr(self) -> str:
        return f"taps={self.taps}, grid={self.grid}, micro_batch={self.micro_batch}, dtype={self.dtype}"
