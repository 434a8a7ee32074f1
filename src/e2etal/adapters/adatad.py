"""AdaTAD-style serial adapters (Liu et al., "End-to-End Temporal Action Detection with 1B
Parameters Across 1000 Frames", arXiv 2311.17241), the baseline LoSA is measured against.

A small temporal adapter follows every block of a frozen ViT: the backbone's weights stay
frozen, but the gradient flows back through every block to reach the adapters, so
activations of the whole backbone are kept (or recomputed, with checkpointing) for
backward. LoSA's adapters sit beside the backbone instead (`e2etal.adapters.losa`).

    adapters = add_serial_adapters(vit, clip_tokens=8)   # trainable; the ViT's own weights frozen
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["AdaptedBlock", "TemporalAdapter", "add_serial_adapters"]


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


def add_serial_adapters(vit: nn.Module, clip_tokens: int, reduction: int = 4) -> nn.ModuleList:
    """Freeze `vit` and follow each of its blocks with a `TemporalAdapter` (in place);
    returns the adapters, the only trainable parameters of the result. `clip_tokens` is
    the number of temporal positions per clip (frames / tubelet)."""
    vit.requires_grad_(False)
    adapters = nn.ModuleList(TemporalAdapter(vit.embed_dim, clip_tokens, reduction) for _ in vit.blocks)
    vit.blocks = nn.ModuleList(AdaptedBlock(block, adapter) for block, adapter in zip(vit.blocks, adapters))
    return adapters
