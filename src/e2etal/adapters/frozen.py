"""The frozen backbone pass of LoSA: tapped layers pooled to a small grid, no autograd.

LoSA's adapters read intermediate layers of a frozen video backbone but never
backpropagate through it, so the backbone runs under `torch.no_grad()` and each tapped
layer is reduced to a `g x g` spatial grid as soon as the backbone produces it (through
the ViT's `tap_fn`). What survives the pass is only the pooled taps, `[T', L, g*g, D]`:
peak memory is the weights, one micro-batch of activations and the pooled taps.

Clips are concatenated along time: a window of N clips of F frames (tubelet `s`) gives
`T' = N * F / s` temporal positions, clip n's positions following clip n-1's.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from e2etal.backbones.vit import VisionTransformer, default_taps

__all__ = ["FrozenBackbone", "frozen_taps", "pool_tokens"]


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
    backbone: VisionTransformer,
    clips: Tensor,
    taps: Sequence[int],
    grid: int,
    micro_batch: int,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the frozen backbone over a window of clips and keep only pooled taps.

    clips: `[N, 3, F, H, W]`, on any device; micro-batches are moved to the backbone's
    device one at a time, so a long window may stay in (pinned) host memory.
    taps: 1-based layer numbers; grid: side of the pooled grid; micro_batch: clips per
    backbone call. dtype: autocast dtype of the pass; None means bf16 on CUDA and plain
    float32 elsewhere; float32 disables autocast.

    Returns float32 tensors with no autograd history, on the backbone's device:
      tapped `[N*T, L, g*g, D]`, the tapped layers in the order of `taps`;
      last   `[N*T, g*g, D]`, the last block's tokens, pooled the same way;
    where `T = F / tubelet` and clip n's T positions follow clip n-1's.

    The backbone's train/eval mode is left as it is (`FrozenBackbone` keeps it in eval).
    """
    taps = tuple(taps)
    if not taps:
        raise ValueError("taps is empty; expected at least one 1-based layer number")
    if len(set(taps)) != len(taps):
        raise ValueError(f"taps {taps} repeat a layer; expected distinct layer numbers")
    if clips.ndim != 5 or clips.shape[1] != 3:
        raise ValueError(f"expected clips [N, 3, F, H, W], got shape {tuple(clips.shape)}")
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    num_clips, _, num_frames = clips.shape[:3]
    if num_clips == 0:
        raise ValueError("no clips: expected clips [N, 3, F, H, W] with N >= 1")
    tubelet = backbone.patch_embed.tubelet_size
    if num_frames % tubelet:
        raise ValueError(f"clips of {num_frames} frames do not tile into tubelets of {tubelet} frames")
    t = num_frames // tubelet
    width = backbone.embed_dim
    device = next(backbone.parameters()).device
    compute_dtype = _compute_dtype(device, dtype)

    # Filled micro-batch by micro-batch, so the pooled taps are never held twice (as a
    # list of pieces and as their concatenation).
    tapped = torch.empty(num_clips, t, len(taps), grid * grid, width, device=device)  # [N, T, L, g*g, D]
    last = torch.empty(num_clips, t, grid * grid, width, device=device)  # [N, T, g*g, D]

    def pool(tokens: Tensor) -> Tensor:
        return pool_tokens(tokens, grid).float()  # [n, T, g*g, D]

    # no_grad rather than inference_mode: the pooled taps feed trainable adapters, which
    # save them for backward, and inference tensors cannot be saved.
    with torch.no_grad(), torch.autocast(
        device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32
    ):
        for start in range(0, num_clips, micro_batch):
            stop = min(start + micro_batch, num_clips)
            chunk = clips[start:stop].to(device, non_blocking=True)  # [n, 3, F, H, W]
            tokens, pooled = backbone(chunk, taps=taps, tap_fn=pool)  # [n, T, h, w, D], {layer: [n, T, g*g, D]}
            last[start:stop] = pool(tokens)
            for i, layer in enumerate(taps):
                tapped[start:stop, :, i] = pooled[layer]
            del tokens, pooled
    return tapped.flatten(0, 1), last.flatten(0, 1)  # [N*T, L, g*g, D], [N*T, g*g, D]


class FrozenBackbone(nn.Module):
    """A video ViT that is never trained: no gradients, always in eval mode.

    `forward(clips [N, 3, F, H, W]) -> (tapped [N*T, L, g*g, D], last [N*T, g*g, D])`
    via `frozen_taps`. The backbone stays in eval mode when a parent module is put in
    train mode, because dropout / drop-path in a frozen encoder would only add noise to
    the features the adapters learn from.

    The weights are ordinary (non-trainable) parameters of this module, so they appear
    in `parameters()` and `state_dict()`; optimizers should take only parameters with
    `requires_grad`.
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        taps: Sequence[int] | None = None,
        grid: int = 2,
        micro_batch: int = 8,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        taps = tuple(taps) if taps is not None else default_taps(backbone.depth)
        bad = sorted(layer for layer in taps if not 1 <= layer <= backbone.depth)
        if bad:
            raise ValueError(f"tap layers {bad} out of range; expected 1-based block numbers in 1..{backbone.depth}")
        if grid < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        self.backbone = backbone
        self.taps = taps
        self.grid = grid
        self.micro_batch = micro_batch
        self.dtype = dtype
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    @property
    def width(self) -> int:
        """Channels D of the tapped features."""
        return self.backbone.embed_dim

    def train(self, mode: bool = True) -> "FrozenBackbone":
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, clips: Tensor) -> tuple[Tensor, Tensor]:
        return frozen_taps(self.backbone, clips, self.taps, self.grid, self.micro_batch, self.dtype)

    def extra_repr(self) -> str:
        return f"taps={self.taps}, grid={self.grid}, micro_batch={self.micro_batch}, dtype={self.dtype}"
