"""Building blocks of the head's pyramid: masked convolutions, LayerNorm over channels,
local-window self-attention and the transformer block.

Layout is channels-first, `[B, C, T]`, with a boolean mask `[B, T]` (True = a real
feature step, False = padding). Every module here returns zeros at padded positions, so
padding behaves exactly like the zero padding of a convolution: appending padded steps
to a sequence changes nothing at its valid steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def downsample_mask(mask: Tensor, stride: int) -> Tensor:
    """Mask of a stride-`stride` output ([B, T] -> [B, ceil(T / stride)]).

    Output step i is centred on input step i * stride (odd kernels, padding k // 2), so
    it is valid exactly when that input step is."""
    return mask[:, ::stride]


class MaskedConv1d(nn.Module):
    """1-D convolution, centred ("same") padding, output zeroed at padded positions."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"MaskedConv1d: kernel_size must be odd to stay centred, got {kernel_size}")
        self.stride = stride
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=bias)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # x: [B, C_in, T] (zero where mask is False), mask: [B, T]
        out_mask = downsample_mask(mask, self.stride)  # [B, T']
        out = self.conv(x) * out_mask[:, None, :].to(x.dtype)  # [B, C_out, T']
        return out, out_mask


class LayerNorm1d(nn.LayerNorm):
    """LayerNorm over the channels of a `[B, C, T]` tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def masked_max_pool(x: Tensor, mask: Tensor, stride: int) -> tuple[Tensor, Tensor]:
    """Max over each window of 3 steps centred on every `stride`-th step, ignoring padding.

    x: [B, C, T], mask: [B, T] -> ([B, C, ceil(T / stride)], [B, ceil(T / stride)]).
    Padding is excluded (not read as 0) so that a valid window's maximum does not depend
    on whether padding follows it."""
    out_mask = downsample_mask(mask, stride)
    filled = x.masked_fill(~mask[:, None, :], float("-inf"))
    out = F.max_pool1d(filled, kernel_size=3, stride=stride, padding=1)
    return out.masked_fill(~out_mask[:, None, :], 0.0), out_mask


def local_attention(
    q: Tensor,  # [B, H, T, D]
    k: Tensor,  # [B, H, T, D]
    v: Tensor,  # [B, H, T, D]
    mask: Tensor,  # [B, T] bool, True = valid
    window_size: int,
    block_size: int | None = None,
    dropout_p: float = 0.0,
) -> Tensor:  # [B, H, T, D]
    """Self-attention where step i sees the valid steps j with |i - j| <= window_size // 2.

    Exactly dense attention restricted to that band, computed block by block in
    O(T * (block_size + window_size)) time and memory: the queries are cut into blocks of
    `block_size` (default: window_size) steps and each block attends, with one
    `scaled_dot_product_attention` call over all blocks, to the keys of its own span
    widened by window_size // 2 on each side.

    Padded keys are never attended. A padded query has no valid key in general, and an
    all-masked row would make the softmax NaN (and NaN times the zero the caller masks
    it with is still NaN), so padded queries attend to their whole band instead; their
    outputs are garbage but finite and must be masked by the caller."""
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"local_attention: window_size must be a positive odd integer, got {window_size}")
    b, h, t, d = q.shape
    half = window_size // 2
    block = block_size or window_size
    num_blocks = math.ceil(t / block)
    tail = num_blocks * block - t
    span = block + 2 * half  # keys seen by one query block

    q_blocks = F.pad(q, (0, 0, 0, tail)).view(b, h, num_blocks, block, d)  # [B, H, N, L, D]

    def key_blocks(x: Tensor) -> Tensor:  # [B, H, T, D] -> [B, H, N, S, D]
        x = F.pad(x, (0, 0, half, half + tail))  # [B, H, T + tail + 2 half, D]
        return x.unfold(2, span, block).transpose(-1, -2)

    k_blocks, v_blocks = key_blocks(k), key_blocks(v)
    key_valid = F.pad(mask, (half, half + tail), value=False).unfold(1, span, block)  # [B, N, S]
    query_valid = F.pad(mask, (0, tail), value=False).view(b, num_blocks, block)  # [B, N, L]
    # Query i of a block sits at key index i + half of that block's span, so the band
    # |i - j| <= half is 0 <= j - i <= 2 half in block coordinates.
    rel = torch.arange(span, device=q.device)[None, :] - torch.arange(block, device=q.device)[:, None]  # [L, S]
    band = (rel >= 0) & (rel <= 2 * half)
    allowed = band & (key_valid[:, :, None, :] | ~query_valid[:, :, :, None])  # [B, N, L, S]

    # Fold the blocks into the batch: the fused SDPA kernels take 4-D inputs.
    def fold(x: Tensor) -> Tensor:  # [B, H, N, *, D] -> [B * N, H, *, D]
        return x.transpose(1, 2).reshape(b * num_blocks, h, x.shape[3], d)

    out = F.scaled_dot_product_attention(
        fold(q_blocks),
        fold(k_blocks),
        fold(v_blocks),
        attn_mask=allowed.reshape(b * num_blocks, 1, block, span),
        dropout_p=dropout_p,
    )  # [B * N, H, L, D]
    out = out.view(b, num_blocks, h, block, d).transpose(1, 2).reshape(b, h, num_blocks * block, d)
    return out[:, :, :t]


class LocalSelfAttention(nn.Module):
    """Multi-head local-window self-attention with optional down-sampling.

    As in ActionFormer, queries, keys and values each pass a depthwise conv (kernel 3,
    stride `stride`) and a LayerNorm before their linear projection, so with stride 2 the
    attention runs on the half-length sequence; the window is counted at that length."""

    def __init__(self, dim: int, num_heads: int, window_size: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"LocalSelfAttention: dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.window_size = window_size
        self.q_conv = MaskedConv1d(dim, dim, 3, stride=stride, groups=dim, bias=False)
        self.k_conv = MaskedConv1d(dim, dim, 3, stride=stride, groups=dim, bias=False)
        self.v_conv = MaskedConv1d(dim, dim, 3, stride=stride, groups=dim, bias=False)
        self.q_norm = LayerNorm1d(dim)
        self.k_norm = LayerNorm1d(dim)
        self.v_norm = LayerNorm1d(dim)
        self.q_proj = nn.Conv1d(dim, dim, 1)
        self.k_proj = nn.Conv1d(dim, dim, 1)
        self.v_proj = nn.Conv1d(dim, dim, 1)
        self.out_proj = nn.Conv1d(dim, dim, 1)
        self.out_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # x: [B, C, T] (zero at padding), mask: [B, T]
        q, out_mask = self.q_conv(x, mask)  # [B, C, T'], [B, T']
        k, _ = self.k_conv(x, mask)
        v, _ = self.v_conv(x, mask)
        q = self.q_proj(self.q_norm(q))
        k = self.k_proj(self.k_norm(k))
        v = self.v_proj(self.v_norm(v))

        b, c, t = q.shape

        def heads(z: Tensor) -> Tensor:  # [B, C, T'] -> [B, H, T', C / H]
            return z.view(b, self.num_heads, c // self.num_heads, t).transpose(2, 3)

        out = local_attention(heads(q), heads(k), heads(v), out_mask, self.window_size)  # [B, H, T', C / H]
        out = out.transpose(2, 3).reshape(b, c, t)  # [B, C, T']
        out = self.out_drop(self.out_proj(out))
        return out * out_mask[:, None, :].to(out.dtype), out_mask


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for a whole sample with
    probability p (and rescale the kept ones by 1 / (1 - p))."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)


class LayerScale(nn.Module):
    """Learnable per-channel scale of a `[B, C, T]` residual branch."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, dim, 1), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class TransformerBlock(nn.Module):
    """Pre-LN transformer block over `[B, C, T]`: local self-attention and an MLP, each
    residual. With stride 2 the attention down-samples and the skip path takes a
    max-pool (as in ActionFormer), halving the length of features and mask."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        stride: int = 1,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init: float | None = None,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.norm1 = LayerNorm1d(dim)
        self.attn = LocalSelfAttention(dim, num_heads, window_size, stride=stride, dropout=dropout)
        self.norm2 = LayerNorm1d(dim)
        self.mlp = nn.Sequential(
            nn.Conv1d(dim, mlp_ratio * dim, 1),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Conv1d(mlp_ratio * dim, dim, 1),
            nn.Dropout(dropout),
        )
        self.scale_attn = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.scale_mlp = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # x: [B, C, T] (zero at padding), mask: [B, T] -> [B, C, T / stride], [B, T / stride]
        m = mask[:, None, :].to(x.dtype)
        # LayerNorm maps a zero column to its bias; re-masking keeps padding at zero for
        # the convolutions inside the attention.
        attn, out_mask = self.attn(self.norm1(x) * m, mask)
        skip = masked_max_pool(x, mask, self.stride)[0] if self.stride > 1 else x
        out = skip + self.drop_path(self.scale_attn(attn))
        out_m = out_mask[:, None, :].to(x.dtype)
        out = out + self.drop_path(self.scale_mlp(self.mlp(self.norm2(out)))) * out_m
        return out, out_mask
