"""The head as it was at commit 2cdc314, before the speed work: the baseline column of
benchmarks/head_speed.py. A frozen private copy of this project's own
heads/transformer.py, heads/targets.py and the forward and loss path of
heads/actionformer.py, kept so the benchmark compares against the same code whatever the
package becomes. Not imported by the package; do not edit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from e2etal.heads.config import HeadConfig

# Two ground truths whose lengths differ by less than this (feature steps) tie for a point.
_LENGTH_TIE = 1e-3


def make_points(
    level_lengths: Sequence[int],
    strides: Sequence[int],
    regression_ranges: Sequence[tuple[float, float]],
    device: torch.device | str | None = None,
) -> Tensor:  # [P, 4], P = sum(level_lengths)
    """One row (position, range low, range high, stride) per step of every pyramid level.

    Step i of a level of stride s sits at position i * s on the input grid (the input
    step its conv windows are centred on). Levels are concatenated in order."""
    if not len(level_lengths) == len(strides) == len(regression_ranges):
        raise ValueError(
            f"make_points: one length, stride and regression range per level expected, got "
            f"{len(level_lengths)}, {len(strides)} and {len(regression_ranges)}"
        )
    rows = []
    for length, stride, (low, high) in zip(level_lengths, strides, regression_ranges):
        position = torch.arange(length, dtype=torch.float32, device=device) * stride  # [T_l]
        rest = torch.tensor([low, high, float(stride)], dtype=torch.float32, device=device).expand(length, 3)
        rows.append(torch.cat([position[:, None], rest], dim=1))  # [T_l, 4]
    return torch.cat(rows, dim=0)


def assign_targets(
    points: Tensor,  # [P, 4] from make_points
    gt_segments: Tensor,  # [N, 2] (start, end), feature steps
    gt_labels: Tensor,  # [N] long, class index in [0, num_classes)
    num_classes: int,
    center_sample: bool = True,
    radius: float = 1.5,
) -> tuple[Tensor, Tensor]:  # cls_targets [P, K] float, reg_targets [P, 2] float
    """ActionFormer's assignment of ground truths to points (FCOS-style).

    A point at position t is a candidate for a ground truth (s, e) when
      * it lies strictly inside (s, e); with center sampling, strictly inside the part of
        (s, e) within `radius` strides of its centre instead (so a short action still
        gets a point on coarse levels, and a long one only central points), and
      * max(t - s, e - t) lies in the point's level range [low, high] (both inclusive),
        which sends each ground truth to the level whose scale fits it.
    Among its candidates a point takes the shortest ground truth: its class becomes a
    positive (1.0) in `cls_targets` and its regression target is (t - s, e - t) / stride.
    Candidates as short as the shortest (within 1e-3) also set their classes to 1.0, the
    regression target coming from the first of them. Points with no candidate are
    negatives: an all-zero row and a (0, 0) regression target."""
    num_points = points.shape[0]
    num_gt = gt_segments.shape[0]
    dtype = points.dtype
    cls_targets = points.new_zeros(num_points, num_classes)
    reg_targets = points.new_zeros(num_points, 2)
    if num_gt == 0:
        return cls_targets, reg_targets
    if gt_labels.shape != (num_gt,):
        raise ValueError(f"assign_targets: gt_labels must be [N] = [{num_gt}], got shape {tuple(gt_labels.shape)}")
    if bool((gt_labels < 0).any()) or bool((gt_labels >= num_classes).any()):
        raise ValueError(f"assign_targets: gt_labels must lie in [0, {num_classes}), got {gt_labels.tolist()}")
    gt_segments = gt_segments.to(dtype)
    position, low, high, stride = points[:, 0:1], points[:, 1:2], points[:, 2:3], points[:, 3:4]  # [P, 1] each
    start, end = gt_segments[None, :, 0], gt_segments[None, :, 1]  # [1, N] each

    left = position - start  # [P, N]
    right = end - position  # [P, N]
    if center_sample:
        centre = 0.5 * (start + end)  # [1, N]
        inner_start = torch.maximum(centre - radius * stride, start)  # [P, N]
        inner_end = torch.minimum(centre + radius * stride, end)
        inside = (position > inner_start) & (position < inner_end)
    else:
        inside = (left > 0) & (right > 0)
    reach = torch.maximum(left, right)  # [P, N]
    in_range = (reach >= low) & (reach <= high)

    length = (end - start).expand(num_points, num_gt)  # [P, N]
    length = torch.where(inside & in_range, length, torch.full_like(length, float("inf")))
    shortest, index = length.min(dim=1)  # [P], [P]
    chosen = (length <= shortest[:, None] + _LENGTH_TIE) & torch.isfinite(length)  # [P, N]
    one_hot = F.one_hot(gt_labels.long(), num_classes).to(dtype)  # [N, K]
    cls_targets = (chosen.to(dtype) @ one_hot).clamp(max=1.0)  # [P, K]

    positive = torch.isfinite(shortest)  # [P]
    rows = torch.arange(num_points, device=points.device)
    offsets = torch.stack([left[rows, index], right[rows, index]], dim=1) / stride  # [P, 2]
    reg_targets = torch.where(positive[:, None], offsets, reg_targets)
    return cls_targets, reg_targets


def sigmoid_focal_loss(
    logits: Tensor,  # [*]
    targets: Tensor,  # [*] in [0, 1]
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:  # [*], not reduced
    """Focal loss of independent sigmoid classifiers (Lin et al. 2017), element-wise.

    BCE(p, y) * (1 - p_t)^gamma with p_t = p y + (1 - p)(1 - y), weighted by
    alpha y + (1 - alpha)(1 - y) when alpha >= 0. Soft targets are allowed."""
    prob = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def diou_loss_1d(
    pred_offsets: Tensor,  # [N, 2] (left, right) distances from a common point, >= 0
    target_offsets: Tensor,  # [N, 2] same units
    eps: float = 1e-8,
) -> Tensor:  # [N]
    """1-D Distance-IoU loss of segments given as distances from the same anchor point.

    1 - IoU + (distance between centres)^2 / (length of the smallest enclosing segment)^2.
    Both segments contain the anchor, so their intersection is the sum of the shorter
    left and the shorter right distance."""
    pred_left, pred_right = pred_offsets[:, 0], pred_offsets[:, 1]
    gt_left, gt_right = target_offsets[:, 0], target_offsets[:, 1]
    inter = torch.minimum(pred_left, gt_left) + torch.minimum(pred_right, gt_right)
    union = (pred_left + pred_right) + (gt_left + gt_right) - inter
    iou = inter / union.clamp(min=eps)
    enclosing = torch.maximum(pred_left, gt_left) + torch.maximum(pred_right, gt_right)
    # centres at (right - left) / 2 relative to the anchor
    centre_distance = 0.5 * ((pred_right - pred_left) - (gt_right - gt_left))
    return 1.0 - iou + centre_distance.square() / enclosing.square().clamp(min=eps)


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


@dataclass
class HeadOutput:
    """The head's raw outputs, one list entry per pyramid level (finest first)."""

    cls_logits: list[Tensor]  # [B, T_l, K]
    offsets: list[Tensor]  # [B, T_l, 2] (to start, to end) in strides of level l, >= 0
    masks: list[Tensor]  # [B, T_l] bool, True = valid step
    points: list[Tensor]  # [T_l, 4] (position in feature steps, range low, range high, stride)


class Scale(nn.Module):
    """A learnable scalar, one per level, so the shared regression tower can output
    offsets of the same magnitude at every level."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class PyramidEncoder(nn.Module):
    """Embedding convs, stem blocks at full resolution, then one stride-2 block per
    further level; every level's output is LayerNorm-ed (ActionFormer's identity FPN)."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.embed_convs = nn.ModuleList()
        self.embed_norms = nn.ModuleList()
        for layer in range(cfg.embed_layers):
            in_dim = cfg.input_dim if layer == 0 else dim
            self.embed_convs.append(MaskedConv1d(in_dim, dim, cfg.embed_kernel_size, bias=False))
            self.embed_norms.append(LayerNorm1d(dim))
        if cfg.embed_layers == 0 and cfg.input_dim != dim:
            raise ValueError(f"HeadConfig: embed_layers = 0 needs input_dim == embed_dim, got {cfg.input_dim} and {dim}")

        def block(stride: int) -> TransformerBlock:
            return TransformerBlock(
                dim,
                cfg.num_heads,
                cfg.window_size,
                stride=stride,
                mlp_ratio=cfg.mlp_ratio,
                dropout=cfg.dropout,
                drop_path=cfg.drop_path,
                layer_scale_init=cfg.layer_scale_init,
            )

        self.stem = nn.ModuleList(block(1) for _ in range(cfg.stem_layers))
        self.branch = nn.ModuleList(block(2) for _ in range(cfg.branch_layers))
        self.level_norms = nn.ModuleList(LayerNorm1d(dim) for _ in range(cfg.num_levels))

    def forward(self, x: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        # x: [B, C_in, T], mask: [B, T] -> per level [B, D, T_l], [B, T_l]
        # Whatever the padding holds, it must read as zero, like a conv's own padding.
        x = x * mask[:, None, :].to(x.dtype)
        for conv, norm in zip(self.embed_convs, self.embed_norms):
            x, _ = conv(x, mask)
            x = F.relu(norm(x)) * mask[:, None, :].to(x.dtype)
        for blk in self.stem:
            x, mask = blk(x, mask)
        feats, masks = [x], [mask]
        for blk in self.branch:
            x, mask = blk(x, mask)
            feats.append(x)
            masks.append(mask)
        feats = [norm(f) * m[:, None, :].to(f.dtype) for norm, f, m in zip(self.level_norms, feats, masks)]
        return feats, masks


class PredictionTower(nn.Module):
    """(layers - 1) x [conv + LayerNorm + ReLU], then a conv to `out_dim`; shared by all levels."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int, kernel_size: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for layer in range(layers - 1):
            self.convs.append(MaskedConv1d(in_dim if layer == 0 else hidden_dim, hidden_dim, kernel_size, bias=False))
            self.norms.append(LayerNorm1d(hidden_dim))
        self.out = MaskedConv1d(hidden_dim if layers > 1 else in_dim, out_dim, kernel_size)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        # x: [B, D, T_l], mask: [B, T_l] -> [B, out_dim, T_l]
        for conv, norm in zip(self.convs, self.norms):
            x, _ = conv(x, mask)
            x = F.relu(norm(x)) * mask[:, None, :].to(x.dtype)
        return self.out(x, mask)[0]


class ActionFormerHead(nn.Module):
    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = PyramidEncoder(cfg)
        self.cls_tower = PredictionTower(cfg.embed_dim, cfg.head_dim, cfg.num_classes, cfg.head_layers, cfg.head_kernel_size)
        self.reg_tower = PredictionTower(cfg.embed_dim, cfg.head_dim, 2, cfg.head_layers, cfg.head_kernel_size)
        self.reg_scales = nn.ModuleList(Scale() for _ in range(cfg.num_levels))
        # Running estimate of the number of positive points per batch, which normalises
        # both losses. A buffer, so a resumed run continues with the same normaliser.
        self.register_buffer("loss_norm", torch.tensor(float(cfg.loss_norm_init)))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv1d) and module.bias is not None:
                nn.init.zeros_(module.bias)
        # Start every class at probability prior_prob: with ~all points negative, a 0.5
        # start would make the first steps' focal loss huge and unstable (RetinaNet).
        nn.init.constant_(self.cls_tower.out.conv.bias, -math.log((1 - self.cfg.prior_prob) / self.cfg.prior_prob))
        # Start every offset at exactly one stride. The offsets pass through a ReLU, and
        # a randomly initialised output conv is negative on a whole level for many seeds
        # (its inputs are post-ReLU, so a common component dominates); a ReLU passes no
        # gradient there, and that side's regression never learns.
        nn.init.zeros_(self.reg_tower.out.conv.weight)
        nn.init.constant_(self.reg_tower.out.conv.bias, 1.0)

    def forward(self, features: Tensor, mask: Tensor) -> HeadOutput:
        # features: [B, C_in, T] in feature steps, mask: [B, T] bool (True = valid)
        cfg = self.cfg
        if features.ndim != 3 or features.shape[1] != cfg.input_dim:
            raise ValueError(f"ActionFormerHead: features must be [B, {cfg.input_dim}, T], got shape {tuple(features.shape)}")
        if mask.shape != (features.shape[0], features.shape[2]) or mask.dtype != torch.bool:
            raise ValueError(
                f"ActionFormerHead: mask must be bool [B, T] = {[features.shape[0], features.shape[2]]}, "
                f"got {mask.dtype} {list(mask.shape)}"
            )
        feats, masks = self.encoder(features, mask)  # per level [B, D, T_l], [B, T_l]
        cls_logits, offsets = [], []
        for level, (x, m) in enumerate(zip(feats, masks)):
            cls_logits.append(self.cls_tower(x, m).transpose(1, 2))  # [B, T_l, K]
            offsets.append(F.relu(self.reg_scales[level](self.reg_tower(x, m))).transpose(1, 2))  # [B, T_l, 2]
        lengths = [m.shape[1] for m in masks]
        points = make_points(lengths, cfg.strides, cfg.regression_ranges, device=features.device).split(lengths)
        return HeadOutput(cls_logits=cls_logits, offsets=offsets, masks=masks, points=list(points))

    def loss(
        self,
        out: HeadOutput,
        gt_segments: list[Tensor],  # per video [N_i, 2] (start, end) in feature steps
        gt_labels: list[Tensor],  # per video [N_i] long
    ) -> dict[str, Tensor]:
        """Focal loss over every valid point and class plus DIoU loss over the positive
        points, both summed and divided by the running mean of the number of positives
        (updated in training mode only). Keys: "cls", "reg", "loss" (the weighted sum)."""
        cfg = self.cfg
        logits = torch.cat(out.cls_logits, dim=1).float()  # [B, P, K]
        offsets = torch.cat(out.offsets, dim=1).float()  # [B, P, 2]
        valid = torch.cat(out.masks, dim=1)  # [B, P]
        points = torch.cat(out.points, dim=0)  # [P, 4]
        batch = logits.shape[0]
        if len(gt_segments) != batch or len(gt_labels) != batch:
            raise ValueError(
                f"ActionFormerHead.loss: one gt_segments and gt_labels entry per video expected "
                f"({batch}), got {len(gt_segments)} and {len(gt_labels)}"
            )
        cls_targets, reg_targets = [], []
        for segments, labels in zip(gt_segments, gt_labels):
            if segments.ndim != 2 or segments.shape[1] != 2:
                raise ValueError(f"ActionFormerHead.loss: gt_segments entries must be [N, 2], got {tuple(segments.shape)}")
            c, r = assign_targets(
                points,
                segments.to(points.device),
                labels.to(points.device),
                cfg.num_classes,
                cfg.center_sample,
                cfg.center_sample_radius,
            )
            cls_targets.append(c)
            reg_targets.append(r)
        cls_target = torch.stack(cls_targets)  # [B, P, K]
        reg_target = torch.stack(reg_targets)  # [B, P, 2]
        positive = valid & (cls_target.sum(dim=-1) > 0)  # [B, P]

        if self.training:
            num_positive = positive.sum().clamp(min=1).to(self.loss_norm.dtype)
            self.loss_norm.mul_(cfg.loss_norm_momentum).add_((1 - cfg.loss_norm_momentum) * num_positive)
        norm = self.loss_norm.detach()

        cls_target = cls_target * (1 - cfg.label_smoothing) + cfg.label_smoothing / (cfg.num_classes + 1)
        cls_loss = sigmoid_focal_loss(logits[valid], cls_target[valid], cfg.focal_alpha, cfg.focal_gamma).sum() / norm
        # The zero term keeps the regression branch in the graph when a batch has no
        # positive, so every parameter still gets a (zero) gradient, as DDP requires.
        reg_loss = diou_loss_1d(offsets[positive], reg_target[positive]).sum() / norm + 0.0 * offsets.sum()
        return {"cls": cls_loss, "reg": reg_loss, "loss": cls_loss + cfg.reg_loss_weight * reg_loss}

