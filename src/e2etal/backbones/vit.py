"""VideoMAE / VideoMAEv2 video Vision Transformer (ViT-S/B/L/H/g).

Parameter names follow the official VideoMAEv2 release, so its checkpoints load after
the prefix clean-up in `e2etal.backbones.checkpoint` (the one place that converts
foreign checkpoints):

    patch_embed.proj                      Conv3d, kernel = stride = (tubelet, p, p)
    blocks.N.norm1 / norm2                LayerNorm, eps 1e-6
    blocks.N.attn.qkv                     Linear without bias, rows q, k, v
    blocks.N.attn.q_bias / v_bias         (k has no bias)
    blocks.N.attn.proj
    blocks.N.mlp.fc1 / fc2                exact (erf) GELU between them
    fc_norm                               LayerNorm applied to the mean of the last tokens
    head                                  only when num_classes > 0

Tokens are ordered (t, h, w) with t slowest, as the official `flatten(2)` of the Conv3d
output. The position table is the fixed 1-D sinusoid over that flattened index; it is
never a parameter and never in a state dict (see `position_table` for other grids).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from e2etal.activations import InplaceGELU
from e2etal.backbones.layout import TapFn, TapLayout

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "Mlp",
    "PatchEmbed",
    "VisionTransformer",
    "default_taps",
    "position_table",
    "sinusoid_table",
    "vit_base",
    "vit_giant",
    "vit_huge",
    "vit_large",
    "vit_small",
]



# ---------------------------------------------------------------------------------------
# Position table
# ---------------------------------------------------------------------------------------


def sinusoid_table(num_positions: int, dim: int) -> Tensor:
    """The official 1-D sinusoid table, float64: `[num_positions, dim]`.

    Entry (pos, j) is sin (j even) or cos (j odd) of `pos / 10000 ** (2 * (j // 2) / dim)`.
    Computed in float64 because a float32 computation is off by ~1e-4 at 1568 positions.
    """
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]  # [N, 1]
    j = torch.arange(dim, dtype=torch.float64)
    inv_freq = 10000.0 ** (-2.0 * torch.div(j, 2, rounding_mode="floor") / dim)  # [D]
    angle = pos * inv_freq  # [N, D]
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table


def position_table(grid: tuple[int, int, int], trained_grid: tuple[int, int, int], dim: int) -> Tensor:
    """Position table for a token grid `(t, h, w)`, float64: `[t*h*w, dim]`.

    The official model adds `sinusoid_table(t0*h0*w0)` for the grid it was trained at
    (`trained_grid`, e.g. (8, 14, 14) for 16 frames at 224 px, patch 16). For that grid
    the table is returned unchanged. For any other grid, the trained table is viewed as a
    3-D map `[t0, h0, w0, dim]` and resized, as the VideoMAEv2-based TAD code does
    (OpenTAD / AdaTAD run ViTs at 160 px this way) rather than recomputing a 1-D table
    for the new token count, whose positions would no longer line up with (t, h, w):

    * time: linear interpolation (align_corners=False) when `t != t0`;
    * space: bicubic interpolation (align_corners=False) per temporal slice when
      `(h, w) != (h0, w0)` -- OpenTAD's choice for the spatial resize.

    The resize runs in float64; callers cast to the activation dtype.
    """
    t0, h0, w0 = trained_grid
    t, h, w = grid
    table = sinusoid_table(t0 * h0 * w0, dim)  # [t0*h0*w0, D]
    if grid == trained_grid:
        return table
    table = table.view(t0, h0, w0, dim)
    if t != t0:
        seq = table.reshape(t0, h0 * w0 * dim).T[None]  # [1, h0*w0*D, t0]
        seq = F.interpolate(seq, size=t, mode="linear", align_corners=False)  # [1, h0*w0*D, t]
        table = seq[0].T.reshape(t, h0, w0, dim)
    if (h, w) != (h0, w0):
        maps = table.permute(0, 3, 1, 2)  # [t, D, h0, w0]
        maps = F.interpolate(maps, size=(h, w), mode="bicubic", align_corners=False)  # [t, D, h, w]
        table = maps.permute(0, 2, 3, 1)  # [t, h, w, D]
    return table.reshape(t * h * w, dim)


# ---------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Video to tubelet tokens: `[B, C, T, H, W] -> [B, T/tubelet, H/p, W/p, D]`."""

    def __init__(self, patch_size: int = 16, tubelet_size: int = 2, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: Tensor) -> Tensor:
        _, _, T, H, W = x.shape
        if T % self.tubelet_size or H % self.patch_size or W % self.patch_size:
            raise ValueError(
                f"video of {T} frames at {H}x{W} px does not tile into tubelets of "
                f"{self.tubelet_size} frames x {self.patch_size}x{self.patch_size} px; expected "
                f"frames divisible by {self.tubelet_size} and height/width by {self.patch_size}"
            )
        x = self.proj(x)  # [B, D, T', h, w]
        return x.permute(0, 2, 3, 4, 1)  # [B, T', h, w, D]


class Attention(nn.Module):
    """Multi-head self-attention with the VideoMAE bias layout (q and v biased, k not)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.register_parameter("q_bias", None)
            self.register_parameter("v_bias", None)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape  # [B, N, D]
        bias = None
        if self.q_bias is not None:
            # k's bias is a constant zero, not a parameter: the released weights have none.
            bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)  # [B, N, 3D]
        q, k, v = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, heads, N, hd]
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )  # [B, heads, N, hd]
        x = x.transpose(1, 2).reshape(B, N, D)
        return self.proj_drop(self.proj(x))  # [B, N, D]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = InplaceGELU()  # exact erf form, as released; in place without gradients
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))  # [B, N, D]


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim, drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))  # [B, N, D]
        return x + self.drop_path(self.mlp(self.norm2(x)))


def default_taps(depth: int) -> tuple[int, ...]:
    """Layers LoSA reads by default: every 4th layer of the second half, plus the last.

    Layers are 1-based block numbers; the second half is layers `depth//2 + 1 .. depth`,
    and its every 4th layer is `depth//2 + 4, depth//2 + 8, ...`.
    ViT-g (40): (24, 28, 32, 36, 40); ViT-L (24): (16, 20, 24); ViT-B (12): (10, 12).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    taps = set(range(depth // 2 + 4, depth + 1, 4))
    taps.add(depth)
    return tuple(sorted(taps))


class VisionTransformer(nn.Module):
    """VideoMAE / VideoMAEv2 encoder with mean-pooling `fc_norm` (no class token), with the
    interface of every backbone (`e2etal.backbones.layout`): its layers are its blocks,
    one temporal position per tubelet.

    `img_size` and `num_frames` fix only the grid the position table was trained at;
    any input whose size tiles into tubelets is accepted (see `position_table`).
    """

    # The official VideoMAE / VideoMAEv2 TAD extraction feeds RGB in [0, 1] without mean/std.
    pixel_mean: tuple[float, float, float] | None = None
    pixel_std: tuple[float, float, float] | None = None

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        num_frames: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: int | None = None,
        qkv_bias: bool = True,
        num_classes: int = 0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if img_size % patch_size or num_frames % tubelet_size:
            raise ValueError(
                f"img_size {img_size} must be divisible by patch_size {patch_size} and "
                f"num_frames {num_frames} by tubelet_size {tubelet_size}"
            )
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_frames = num_frames
        self.tubelet_size = tubelet_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim if mlp_dim is not None else 4 * embed_dim
        self.num_classes = num_classes
        self.grad_checkpointing = grad_checkpointing
        self.frozen_layers = 0  # `freeze_layers`
        self.trained_grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)

        self.patch_embed = PatchEmbed(patch_size, tubelet_size, in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        drop_paths = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, self.mlp_dim, qkv_bias, drop_rate, attn_drop_rate, drop_paths[i])
            for i in range(depth)
        )
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else None
        # Position tables per (grid, device, dtype); plain attribute, so never in a state dict.
        self._pos_cache: dict[tuple, Tensor] = {}
        self.apply(_init_weights)

    def position_embedding(self, grid: tuple[int, int, int], device: torch.device, dtype: torch.dtype) -> Tensor:
        """Position table for a token grid, `[t*h*w, D]`, cached per grid, device and dtype."""
        key = (grid, device, dtype)
        table = self._pos_cache.get(key)
        if table is None:
            table = position_table(grid, self.trained_grid, self.embed_dim).to(device=device, dtype=dtype)
            self._pos_cache[key] = table
        return table

    def forward(
        self, x: Tensor, taps: Sequence[int] = (), tap_fn: TapFn | None = None
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Encode a batch of clips.

        x: `[B, 3, T, H, W]`. Returns the last block's tokens `[B, T', h, w, D]`
        (before `fc_norm`) and `{layer: tapped}` for each 1-based layer in `taps`, where
        layer L is the output of block L and `tapped` is `tap_fn(tokens [B, T', h, w, D])`
        (the tokens themselves without `tap_fn`). `tap_fn` runs as soon as the layer is
        computed, so a pooled tap does not keep the full token map alive.
        """
        tap_set = set(taps)
        bad = sorted(L for L in tap_set if not 1 <= L <= self.depth)
        if bad:
            raise ValueError(f"tap layers {bad} out of range; expected 1-based block numbers in 1..{self.depth}")

        grad = torch.is_grad_enabled()
        with torch.set_grad_enabled(grad and self.frozen_layers == 0):
            x = self.patch_embed(x)  # [B, T', h, w, D]
            B, t, h, w, D = x.shape
            x = x.flatten(1, 3)  # [B, N, D], N = T'*h*w in (t, h, w) order
            x = x + self.position_embedding((t, h, w), x.device, x.dtype)
            x = self.pos_drop(x)

        tapped: dict[int, Tensor] = {}
        for layer, block in enumerate(self.blocks, start=1):
            with torch.set_grad_enabled(grad and layer > self.frozen_layers):
                if self.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            if layer in tap_set:
                tokens = x.view(B, t, h, w, D)
                tapped[layer] = tap_fn(tokens) if tap_fn is not None else tokens
        return x.view(B, t, h, w, D), tapped

    def forward_taps(
        self, x: Tensor, taps: Sequence[int] = (), tap_fn: TapFn | None = None
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """The tapped forward every backbone has: this model's `forward`."""
        return self.forward(x, taps, tap_fn)

    def tap_layout(self) -> TapLayout:
        return TapLayout(widths=(self.embed_dim,) * self.depth, frames_per_position=self.tubelet_size,
                         default_taps=default_taps(self.depth), unit="block")

    def shard_units(self) -> list[nn.Module]:
        return list(self.blocks)

    def freeze_layers(self, count: int) -> None:
        """Leave only the blocks after the first `count` trainable: the patch embedding and
        blocks 1..count take no gradient, run under no_grad (nothing of them is kept for
        backward) and in eval mode. 0 trains everything."""
        if not 0 <= count <= self.depth:
            raise ValueError(f"freeze_layers: expected 0..{self.depth} blocks, got {count}")
        self.frozen_layers = count
        for module in (self.patch_embed, *self.blocks[:count]):
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> VisionTransformer:
        super().train(mode)
        if self.frozen_layers:
            for module in (self.patch_embed, self.pos_drop, *self.blocks[: self.frozen_layers]):
                module.eval()
        return self

    def clip_features(self, x: Tensor) -> Tensor:
        """The official TAD clip feature: `fc_norm(mean of the last block's tokens)`, `[B, D]`."""
        tokens, _ = self.forward(x)  # [B, T', h, w, D]
        return self.fc_norm(tokens.flatten(1, 3).mean(dim=1))  # [B, D]

    def classify(self, x: Tensor) -> Tensor:
        """Class logits `[B, num_classes]` from the head of a fine-tuned checkpoint."""
        if self.head is None:
            raise ValueError("this VisionTransformer has no head (built with num_classes=0)")
        return self.head(self.clip_features(x))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------
# Sizes (patch 16, tubelet 2, 16 frames, 224 px unless overridden)
# ---------------------------------------------------------------------------------------


def vit_tiny(**kwargs) -> VisionTransformer:
    """A toy ViT for the demo and tests: width 96, 6 blocks, 4 heads (not a released size;
    narrower than DeiT's 192-wide ViT-Ti). Fast enough to pretrain on a CPU in minutes."""
    return VisionTransformer(**{"embed_dim": 96, "depth": 6, "num_heads": 4, **kwargs})


def vit_small(**kwargs) -> VisionTransformer:
    return VisionTransformer(**{"embed_dim": 384, "depth": 12, "num_heads": 6, **kwargs})


def vit_base(**kwargs) -> VisionTransformer:
    return VisionTransformer(**{"embed_dim": 768, "depth": 12, "num_heads": 12, **kwargs})


def vit_large(**kwargs) -> VisionTransformer:
    return VisionTransformer(**{"embed_dim": 1024, "depth": 24, "num_heads": 16, **kwargs})


def vit_huge(**kwargs) -> VisionTransformer:
    return VisionTransformer(**{"embed_dim": 1280, "depth": 32, "num_heads": 16, **kwargs})


def vit_giant(**kwargs) -> VisionTransformer:
    """VideoMAEv2 ViT-g: width 1408, 40 blocks, 16 heads, MLP 6144, patch 14."""
    return VisionTransformer(
        **{"embed_dim": 1408, "depth": 40, "num_heads": 16, "mlp_dim": 6144, "patch_size": 14, **kwargs}
    )


# Width -> heads of the released sizes; used when a checkpoint alone must fix the model.
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
