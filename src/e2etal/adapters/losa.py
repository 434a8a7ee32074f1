"""LoSA: Long-Short-range Adapters beside a frozen video backbone (arXiv 2404.01282).

The adapters read the pooled taps of `e2etal.adapters.frozen` and return enhanced
per-position features for the TAL head:

    tapped [B, T', L, g*g, D] ─┬─ per tap: ShortRangeAdapter ─┐
                               └─ per tap: LongRangeAdapter ──┴─ GatedFusion ─▶ [B, T', D]
    last   [B, T', g*g, D] ─┬── spatial mean ──────────────────────────┘ (+ scale * ...)
                            └── layout: linear read of the g*g grid ───┘ (+ ...)

D is the last layer's width. A tap may be narrower (the early stages of a TSM-ResNet):
it arrives zero-padded to D and its adapters read only its own `width_l` channels, so
the padding never reaches them (nor their LayerNorm statistics). Every adapter works at
the common reduced width `d = D / reduction`. The fusion adds its result to the last
layer's pooled features through a per-channel scale that starts at zero, together with
a linear read of the last layer's g*g grid that starts at zero (the layout the spatial
mean discards), so an untrained LoSA returns exactly the head-only-transfer features.

Padded positions (mask False) never influence valid ones: they are zeroed before every
temporal convolution and excluded as attention keys, so a valid position's output equals
what it would be on the unpadded sequence. Adapter outputs are zero at padded positions
and the fused features there equal the last layer's pooled features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DilatedConvBlock",
    "GatedFusion",
    "LoSAAdapters",
    "LoSAConfig",
    "LongRangeAdapter",
    "ShortRangeAdapter",
    "TemporalAttentionBlock",
]

LONG_MODES = ("attention", "dilated")


@dataclass
class LoSAConfig:
    """The adapters (the `losa:` section); which layers they read, and the grid those are
    pooled to, are settings of the frozen pass (`FrozenPassConfig`)."""

    reduction: int = 4  # adapters work at width D / reduction
    short_window: int = 4  # short-range neighbourhood: +-w temporal positions
    # Temporal kernel of the short-range conv block (odd); None = 2 * short_window + 1, the
    # whole neighbourhood. The conv is the adapter's one operator that can take differences
    # between tokens (where an object was against where it is now); the attention after it
    # only averages. A 3-position kernel sees motion over 2 positions only.
    short_conv_kernel: int | None = None
    num_heads: int = 4  # heads of the short-range cross-attention and long-range self-attention
    # Long-range adapter: "attention" = temporal self-attention over the whole window;
    # "dilated" = stacked dilated temporal convolutions, for windows too long to attend over.
    long_mode: str = "attention"
    # Attention blocks (attention mode), or repeats of the whole dilation stack (dilated mode).
    long_layers: int = 1
    dilations: tuple[int, ...] = (1, 2, 4, 8)  # one conv layer per dilation (dilated mode)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # YAML gives lists; the config is hashable and printed as tuples.
        self.dilations = tuple(self.dilations)
        if self.reduction < 1:
            raise ValueError(f"LoSAConfig.reduction must be >= 1, got {self.reduction}")
        if self.short_window < 0:
            raise ValueError(f"LoSAConfig.short_window must be >= 0, got {self.short_window}")
        if self.short_conv_kernel is not None and (self.short_conv_kernel < 1 or self.short_conv_kernel % 2 == 0):
            raise ValueError(f"LoSAConfig.short_conv_kernel must be an odd integer >= 1 or None, "
                             f"got {self.short_conv_kernel}")
        if self.num_heads < 1:
            raise ValueError(f"LoSAConfig.num_heads must be >= 1, got {self.num_heads}")
        if self.long_mode not in LONG_MODES:
            raise ValueError(f"LoSAConfig.long_mode must be one of {LONG_MODES}, got {self.long_mode!r}")
        if self.long_layers < 1:
            raise ValueError(f"LoSAConfig.long_layers must be >= 1, got {self.long_layers}")
        if not self.dilations or any(d < 1 for d in self.dilations):
            raise ValueError(f"LoSAConfig.dilations must be positive integers, got {self.dilations}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoSAConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def conv_kernel(self) -> int:
        """Temporal kernel of the short-range conv block (`short_conv_kernel` resolved)."""
        return 2 * self.short_window + 1 if self.short_conv_kernel is None else self.short_conv_kernel

    def adapter_width(self, dim: int) -> int:
        """Width `d = D / reduction` of the adapters, checked against the head count."""
        if dim % self.reduction:
            raise ValueError(f"backbone width {dim} is not divisible by LoSAConfig.reduction {self.reduction}")
        width = dim // self.reduction
        if width % self.num_heads:
            raise ValueError(
                f"adapter width {width} (= {dim} / reduction {self.reduction}) is not divisible by "
                f"LoSAConfig.num_heads {self.num_heads}"
            )
        return width


def _tap_width(dim: int, tap_width: int | None) -> int:
    """Real channels of a tap padded to `dim`: `tap_width`, default all of them."""
    if tap_width is None:
        return dim
    if not 1 <= tap_width <= dim:
        raise ValueError(f"tap width {tap_width} out of range; expected 1..{dim} (the width D of the padded taps)")
    return tap_width


def _valid(mask: Tensor, x: Tensor) -> Tensor:
    """`mask [B, T']` as a multiplier broadcasting over `x [B, T', ...]`, in x's dtype."""
    return mask.view(mask.shape + (1,) * (x.ndim - 2)).to(x.dtype)


def _key_mask(mask: Tensor) -> Tensor:
    """Keys a query may attend to over the whole window: `[B, T'] -> [B, 1, 1, T']`.

    A fully padded sequence would leave every key masked and SDPA would return NaN, which
    the zero-initialised fusion scale would not cancel (0 * NaN); such a sequence
    attends to all its (meaningless) positions instead. Its outputs are zeroed anyway.
    """
    keys = mask | ~mask.any(dim=1, keepdim=True)  # [B, T']
    return keys[:, None, None, :]


# ---------------------------------------------------------------------------------------
# Short range
# ---------------------------------------------------------------------------------------


class ShortRangeAdapter(nn.Module):
    """Fine, local motion: each position attends to the spatial tokens around it in time.

    `forward(tap [B, T', g*g, D], mask [B, T'] bool) -> [B, T', d]`, d = D / reduction.
    Only the tap's first `tap_width` channels (default D) are read; the rest is padding.

    1. LayerNorm + down-projection tap_width -> d (the tapped residual stream is not
       normalised, and its scale differs from layer to layer).
    2. A residual depthwise 3-D conv over (time, grid k x k), the temporal kernel spanning
       the neighbourhood by default (`LoSAConfig.conv_kernel`): local spatio-temporal
       mixing before the attention, so keys already carry their neighbours' motion. It
       can subtract a token from another (an object's cell now against a few positions
       ago); the attention can only average them.
    3. Multi-head cross-attention: position t's query is its spatially pooled token; its
       keys/values are the g*g tokens of positions t-w .. t+w (outside the sequence or
       padded: masked). The output is the pooled token plus the attention result.
    """

    def __init__(self, dim: int, cfg: LoSAConfig, tap_width: int | None = None, grid: int = 2):
        super().__init__()
        width = cfg.adapter_width(dim)
        self.tap_width = _tap_width(dim, tap_width)
        self.grid = grid
        self.window = cfg.short_window
        self.num_heads = cfg.num_heads
        self.head_dim = width // cfg.num_heads
        self.dropout = cfg.dropout
        self.norm_in = nn.LayerNorm(self.tap_width)
        self.down = nn.Linear(self.tap_width, width)
        # A 1x1 grid has no spatial neighbours: the kernel collapses to time only.
        k = 3 if grid > 1 else 1
        kt = cfg.conv_kernel
        self.conv = nn.Conv3d(width, width, (kt, k, k), padding=(kt // 2, k // 2, k // 2), groups=width)
        self.act = nn.GELU()
        self.norm_attn = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, tap: Tensor, mask: Tensor) -> Tensor:
        B, T, S, _ = tap.shape  # [B, T', g*g, D]
        if S != self.grid * self.grid:
            raise ValueError(f"tap has {S} spatial tokens; expected grid {self.grid}x{self.grid} = {self.grid ** 2}")
        g = self.grid
        x = self.down(self.norm_in(tap[..., : self.tap_width]))  # [B, T', S, d]
        x = x * _valid(mask, tap)  # padded positions zero

        # Conv block over (time, grid); zeros at padded positions act as the conv's padding.
        y = x.permute(0, 3, 1, 2).unflatten(3, (g, g))  # [B, d, T', g, g]
        y = self.act(self.conv(y)).flatten(3).permute(0, 2, 3, 1)  # [B, T', S, d]
        x = x + self.drop(y)

        # Cross-attention from each position to its temporal neighbourhood's tokens.
        h = self.norm_attn(x)  # [B, T', S, d]
        q = self.q(h.mean(dim=2))  # [B, T', d]
        k, v = self.kv(h).chunk(2, dim=-1)  # [B, T', S, d] each
        k = self._neighbourhood(k)  # [B, T', K, d], K = (2w + 1) * S
        v = self._neighbourhood(v)
        K = k.shape[2]
        q = q.reshape(B * T, 1, self.num_heads, self.head_dim).transpose(1, 2)  # [B*T', heads, 1, hd]
        k = k.reshape(B * T, K, self.num_heads, self.head_dim).transpose(1, 2)  # [B*T', heads, K, hd]
        v = v.reshape(B * T, K, self.num_heads, self.head_dim).transpose(1, 2)
        keys = self._neighbourhood_mask(mask, S).reshape(B * T, 1, 1, K)  # [B*T', 1, 1, K]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keys, dropout_p=self.dropout if self.training else 0.0
        )  # [B*T', heads, 1, hd]
        out = self.proj(out.reshape(B, T, -1))  # [B, T', d]
        return (x.mean(dim=2) + self.drop(out)) * _valid(mask, out)  # [B, T', d]

    def _neighbourhood(self, z: Tensor) -> Tensor:
        """Tokens of positions t-w .. t+w for each t, zeros beyond the ends: `[B, T', S, d] -> [B, T', K, d]`."""
        B, T, S, d = z.shape
        w = self.window
        z = F.pad(z, (0, 0, 0, 0, w, w))  # [B, T' + 2w, S, d]
        z = z.unfold(1, 2 * w + 1, 1)  # [B, T', S, d, 2w+1]
        return z.permute(0, 1, 4, 2, 3).reshape(B, T, (2 * w + 1) * S, d)

    def _neighbourhood_mask(self, mask: Tensor, S: int) -> Tensor:
        """Which neighbourhood keys exist and are valid: `[B, T'] -> [B, T', K]`.

        The query's own position is always allowed, so a padded query far from valid
        positions still has keys (an all-masked row would make SDPA return NaN); for a
        valid query this changes nothing.
        """
        B, T = mask.shape
        w = self.window
        m = F.pad(mask, (w, w), value=False).unfold(1, 2 * w + 1, 1)  # [B, T', 2w+1]
        own = torch.zeros(2 * w + 1, dtype=torch.bool, device=mask.device)
        own[w] = True
        m = m | own
        return m[..., None].expand(B, T, 2 * w + 1, S).reshape(B, T, (2 * w + 1) * S)


# ---------------------------------------------------------------------------------------
# Long range
# ---------------------------------------------------------------------------------------


class TemporalAttentionBlock(nn.Module):
    """Pre-norm temporal transformer block over the whole window, padded keys masked.

    `forward(x [B, T', d], mask [B, T']) -> [B, T', d]`. A residual depthwise temporal
    conv first gives the otherwise order-blind attention relative position (a
    conditional position encoding that works for any window length).
    """

    def __init__(self, width: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.dropout = dropout
        self.position = nn.Conv1d(width, width, 3, padding=1, groups=width)
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        # MLP ratio 2: the block's job is temporal mixing; the bottleneck stays narrow.
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        B, T, d = x.shape  # [B, T', d]
        x = x + self.position((x * _valid(mask, x)).transpose(1, 2)).transpose(1, 2)
        qkv = self.qkv(self.norm1(x)).view(B, T, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x [B, heads, T', hd]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=_key_mask(mask), dropout_p=self.dropout if self.training else 0.0
        )  # [B, heads, T', hd]
        x = x + self.drop(self.proj(out.transpose(1, 2).reshape(B, T, d)))
        return x + self.drop(self.mlp(self.norm2(x)))  # [B, T', d]


class DilatedConvBlock(nn.Module):
    """Residual dilated temporal conv: norm -> depthwise conv (kernel 3) -> GELU -> pointwise.

    `forward(x [B, T', d], mask [B, T']) -> [B, T', d]`; padded positions are zeroed
    before the conv, so they read as the conv's zero padding.
    """

    def __init__(self, width: int, dilation: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.conv = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation, groups=width)
        self.act = nn.GELU()
        self.pointwise = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.norm(x) * _valid(mask, x)  # [B, T', d]
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)  # [B, T', d]
        return x + self.drop(self.pointwise(self.act(h)))


class LongRangeAdapter(nn.Module):
    """Context across the untrimmed window.

    `forward(pooled [B, T', D], mask [B, T'] bool) -> [B, T', d]`: LayerNorm +
    down-projection of the first `tap_width` channels (default D; the rest is padding)
    to d, then `long_layers` temporal self-attention blocks over the
    whole window, or (long_mode "dilated") `long_layers` repeats of one dilated conv
    layer per entry of `dilations`.
    """

    def __init__(self, dim: int, cfg: LoSAConfig, tap_width: int | None = None):
        super().__init__()
        width = cfg.adapter_width(dim)
        self.tap_width = _tap_width(dim, tap_width)
        self.norm_in = nn.LayerNorm(self.tap_width)
        self.down = nn.Linear(self.tap_width, width)
        if cfg.long_mode == "attention":
            layers = [TemporalAttentionBlock(width, cfg.num_heads, cfg.dropout) for _ in range(cfg.long_layers)]
        else:
            layers = [
                DilatedConvBlock(width, dilation, cfg.dropout)
                for _ in range(cfg.long_layers)
                for dilation in cfg.dilations
            ]
        self.layers = nn.ModuleList(layers)

    def forward(self, pooled: Tensor, mask: Tensor) -> Tensor:
        x = self.down(self.norm_in(pooled[..., : self.tap_width]))  # [B, T', d]
        for layer in self.layers:
            x = layer(x, mask)
        return x * _valid(mask, x)  # [B, T', d]


# ---------------------------------------------------------------------------------------
# Fusion
# ---------------------------------------------------------------------------------------


class GatedFusion(nn.Module):
    """Long-Short-range Gated Fusion.

    `forward(long [B, T', L, d], short [B, T', L, d], last [B, T', g*g, D], mask [B, T'])
    -> [B, T', D]`, where `base = last.mean(dim=2)` (head-only transfer's features):

    * per tap l, a per-channel sigmoid gate computed from both outputs mixes them:
      `m_l = s * long_l + (1 - s) * short_l`, `s = sigmoid(W_l [long_l, short_l])`;
    * a softmax over learnable tap logits (uniform at start) weights the layers;
    * an up-projection d -> D, added to `base` through a per-channel scale that starts
      at 0;
    * the layout read: a linear map of the last layer's g*g tokens, concatenated
      (g*g*D -> D), whose weights and bias start at 0. The spatial mean `base` loses where
      in the frame things are; this keeps it, at the scale of the backbone's features.
      Its weights train from the first step, whereas the adapters' path through `scale`
      gets gradients only once the scale has moved. On the demo's world (where the
      direction of a glide shows only in which cells an object is over time) it carries
      most of LoSA's gain (research/README.md).

    At initialisation the output is `base` exactly (head-only transfer).
    """

    def __init__(self, dim: int, num_taps: int, cfg: LoSAConfig, grid: int = 2):
        super().__init__()
        width = cfg.adapter_width(dim)
        self.gates = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(num_taps))
        self.tap_logits = nn.Parameter(torch.zeros(num_taps))
        self.up = nn.Linear(width, dim)
        self.scale = nn.Parameter(torch.zeros(dim))
        self.layout = nn.Linear(grid * grid * dim, dim)
        nn.init.zeros_(self.layout.weight)
        nn.init.zeros_(self.layout.bias)

    def forward(self, long: Tensor, short: Tensor, last: Tensor, mask: Tensor) -> Tensor:
        mixed = []
        for i, gate in enumerate(self.gates):
            long_i, short_i = long[:, :, i], short[:, :, i]  # [B, T', d]
            s = torch.sigmoid(gate(torch.cat((long_i, short_i), dim=-1)))  # [B, T', d]
            mixed.append(s * long_i + (1.0 - s) * short_i)
        weights = torch.softmax(self.tap_logits, dim=0)  # [L]
        combined = (torch.stack(mixed, dim=2) * weights[:, None]).sum(dim=2)  # [B, T', d]
        valid = _valid(mask, combined)
        update = self.up(combined) * valid  # [B, T', D]
        layout = self.layout(last.flatten(2)) * valid  # [B, T', D]
        return last.mean(dim=2) + layout + self.scale * update  # [B, T', D]


class LoSAAdapters(nn.Module):
    """Short- and long-range adapters for every tap, then the gated fusion.

    `forward(tapped [B, T', L, g*g, D], last [B, T', g*g, D], mask [B, T'] bool | None)
    -> fused [B, T', D]`, where `tapped` / `last` are `FrozenBackbone` outputs (with a
    batch axis) and mask marks valid (un-padded) positions; None means all valid.
    `tap_widths` are the real channels of each tap (`FrozenBackbone.tap_widths`); None
    means all D; `grid` is the side g of the pooled grid (`FrozenPassConfig.grid`).
    """

    def __init__(self, dim: int, num_taps: int, cfg: LoSAConfig, tap_widths: Sequence[int] | None = None,
                 grid: int = 2):
        super().__init__()
        if num_taps < 1:
            raise ValueError(f"num_taps must be >= 1, got {num_taps}")
        tap_widths = tuple(tap_widths) if tap_widths is not None else (dim,) * num_taps
        if len(tap_widths) != num_taps:
            raise ValueError(f"tap_widths {tap_widths} name {len(tap_widths)} taps; expected {num_taps}")
        self.dim = dim
        self.num_taps = num_taps
        self.grid = grid
        self.short = nn.ModuleList(ShortRangeAdapter(dim, cfg, w, grid) for w in tap_widths)
        self.long = nn.ModuleList(LongRangeAdapter(dim, cfg, w) for w in tap_widths)
        self.fusion = GatedFusion(dim, num_taps, cfg, grid)

    def forward(self, tapped: Tensor, last: Tensor, mask: Tensor | None = None) -> Tensor:
        B, T, L, S, D = tapped.shape  # [B, T', L, g*g, D]
        expected = (self.num_taps, self.grid * self.grid, self.dim)
        if (L, S, D) != expected or last.shape != (B, T, S, D):
            raise ValueError(
                f"expected tapped [B, T', {expected[0]}, {expected[1]}, {expected[2]}] and last [B, T', "
                f"{expected[1]}, {expected[2]}]; got {tuple(tapped.shape)} and {tuple(last.shape)}"
            )
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=tapped.device)
        elif mask.shape != (B, T) or mask.dtype != torch.bool:
            raise ValueError(f"expected a bool mask [B, T'] = [{B}, {T}], got {mask.dtype} {tuple(mask.shape)}")

        pooled = tapped.mean(dim=3)  # [B, T', L, D]
        short = torch.stack([adapter(tapped[:, :, i], mask) for i, adapter in enumerate(self.short)], dim=2)
        long = torch.stack([adapter(pooled[:, :, i], mask) for i, adapter in enumerate(self.long)], dim=2)
        return self.fusion(long, short, last, mask)  # [B, T', D]
