"""Building blocks of the head's pyramid: "same" convolutions, local-window
self-attention and the transformer block.

Layout. Everything runs channels-last, `[B, T, C]`: LayerNorm, the linear layers and
the attention all want the channels innermost, and the convolutions over time read the
same memory in place (as 2-D convolutions on a channels-last view or as matrix products
over shifted rows), so nothing is transposed between them. Every tensor comes with a
boolean mask `[B, T]` (True = a real feature step, False = padding).

Kernels. On CPU the head's large matrix products (convolutions over time, the linear
layers) run as oneDNN convolutions on that channels-last view: at ActionFormer's sizes
their AVX-512 kernels ran faster than MKL's sgemm (what `F.linear` and `torch.mm` use) on
the AMD EPYC CPU of benchmarks/RESULTS.md (head_speed.py there). The exception is the
large float32 convolutions of kernel 3 (the embedding and the towers, half the head's
multiply-adds), which run as Winograd's F(4, 3) on CPU: six matrix products over a
quarter of the steps instead of three over all of them, half the arithmetic
(`winograd_conv3`). Below about 2^27 multiply-adds a call (the demo's 128-wide head)
oneDNN's fixed cost per call made it slower, so small products stay matrix products, as
they do on GPUs (cuBLAS). Winograd stays off in bfloat16, whose 8-bit mantissa would
magnify the rounding of its transforms, and on GPUs, where it was never measured.

Padding. A module's outputs at valid steps depend only on its input's valid steps:
whatever mixes time steps (a convolution, the attention, the max-pool) first sets its
input's padded steps to a neutral value (0, or -inf for a max), exactly as a
convolution's own zero padding would read them, and the attention never reads a padded
key. Appending padded steps to a sequence therefore changes nothing at its valid steps.
At padded steps the outputs are finite but meaningless; they are not re-zeroed after
every step-wise operation, which would cost a pass over the tensor each time for
nothing. Read only valid steps, or mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from e2etal.activations import InplaceGELU


def downsample_mask(mask: Tensor, stride: int) -> Tensor:
    """Mask of a stride-`stride` output ([B, T] -> [B, ceil(T / stride)]).

    Output step i is centred on input step i * stride (odd kernels, padding k // 2), so
    it is valid exactly when that input step is."""
    return mask[:, ::stride]


ONEDNN_MIN_MACS = 2**27  # multiply-adds of one product from which oneDNN is used on CPU


def _onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether the product of `x` [..., C_in] and `weight` [C_out, C_in, k] runs as a
    oneDNN convolution (see the module's docstring)."""
    macs = x.numel() * weight.shape[0] * weight.shape[2]
    return x.device.type == "cpu" and macs >= ONEDNN_MIN_MACS and torch.backends.mkldnn.is_available()


def _winograd(x: Tensor, weight: Tensor) -> bool:
    """Whether the convolution of `x` [..., C_in] by `weight` [C_out, C_in, k] runs as
    `winograd_conv3`: a large float32 one of kernel 3 on CPU."""
    return weight.shape[2] == 3 and x.dtype == torch.float32 and _onednn(x, weight)


WINOGRAD_TILES = 256  # output quadruples per block of winograd_conv3: its buffers stay small


def winograd_conv3(x: Tensor, g0: Tensor, g1: Tensor, g2: Tensor, bias: Tensor | None = None) -> Tensor:
    """Centred ("same", zero-padded) convolution of kernel 3, y[t] = g0 x[t-1] + g1 x[t]
    + g2 x[t+1] (+ bias), by Winograd's minimal filtering F(4, 3) (Lavin & Gray, "Fast
    Algorithms for Convolutional Neural Networks", CVPR 2016, with their interpolation
    points 0, 1, -1, 2, -2 and infinity): four outputs y[4j..4j+3] read six inputs
    d0..d5 = x[4j-1..4j+4] through six matrix products m_i = u_i G_i, where

        u0 = 4 d0 - 5 d2 + d4          G0 = g0 / 4
        u1, u2 = (d4 - 4 d2) +- (d3 - 4 d1)       G1, G2 = -(g0 +- g1 + g2) / 6
        u3, u4 = (d4 - d2) +- 2 (d3 - d1)         G3, G4 = g0 / 24 +- g1 / 12 + g2 / 6
        u5 = 4 d1 - 5 d3 + d5          G5 = g2

        y0 = m0 + (m1 + m2) + (m3 + m4)      y1 = (m1 - m2) + 2 (m3 - m4)
        y2 = (m1 + m2) + 4 (m3 + m4)         y3 = (m1 - m2) + 8 (m3 - m4) + m5

    so six products over T / 4 rows replace three over T: half the multiply-adds. In
    exact arithmetic it is the convolution. In float32 the output transform amplifies the
    products' rounding: against float64, the largest error measured 2-7 times float32's
    eps x sum |g| |x|, where a direct float32 convolution errs by 0.4-1.5 of that (about
    1e-5 against 1e-6 on outputs of unit scale; tests/test_head.py).

    x: [B, T, C_in] (any strides with one unit stride per matrix), g0, g1, g2: the taps,
    [C_out, C_in] each -> [B, T, C_out] (contiguous if 4 divides T or B is 1). Outputs
    are taken 4 * WINOGRAD_TILES at a time, so the transformed inputs and the products
    stay a few MB; only the blocks at either end of a sequence, which reach into the
    padding, copy their input."""
    batch, t, c_in = x.shape
    c_out = g0.shape[0]
    tiles = (t + 3) // 4
    # The transformed taps as transposed views ([C_in, C_out]): rows of u times them give
    # rows of m. MKL reads a transposed operand as fast as a contiguous one, and a
    # transposing copy of each would cost more than the arithmetic that makes them.
    mats = [
        g.t()
        for g in (
            g0 / 4,
            -(g0 + g1 + g2) / 6,
            -(g0 - g1 + g2) / 6,
            g0 / 24 + g1 / 12 + g2 / 6,
            g0 / 24 - g1 / 12 + g2 / 6,
            g2,
        )
    ]
    out = x.new_empty(batch, 4 * tiles, c_out)
    n = min(WINOGRAD_TILES, tiles)
    u_buf, pair_buf = x.new_empty(6, n, c_in), x.new_empty(2, n, c_in)
    m_buf, sum_buf = x.new_empty(4, n, c_out), x.new_empty(4, n, c_out)
    for b in range(batch):
        for lo in range(0, tiles, n):
            hi = min(lo + n, tiles)
            first, last = 4 * lo - 1, 4 * hi + 1  # input rows first..last-1 feed tiles lo..hi-1
            if first >= 0 and last <= t:
                rows = x[b, first:last]
            else:  # reaches into the zero padding
                rows = x.new_zeros(last - first, c_in)
                rows[max(first, 0) - first : min(last, t) - first] = x[b, max(first, 0) : min(last, t)]
            k = hi - lo
            d = [rows[i : i + 4 * k : 4] for i in range(6)]  # [k, C_in] each
            u, p, q = u_buf[:, :k], pair_buf[0, :k], pair_buf[1, :k]
            torch.add(d[4], d[2], alpha=-5, out=u[0]).add_(d[0], alpha=4)
            torch.add(d[5], d[3], alpha=-5, out=u[5]).add_(d[1], alpha=4)
            torch.add(d[4], d[2], alpha=-4, out=p)
            torch.add(d[3], d[1], alpha=-4, out=q)
            torch.add(p, q, out=u[1])
            torch.sub(p, q, out=u[2])
            torch.sub(d[4], d[2], out=p)
            torch.sub(d[3], d[1], out=q)
            torch.add(p, q, alpha=2, out=u[3])
            torch.add(p, q, alpha=-2, out=u[4])
            m, sums = m_buf[:, :k], sum_buf[:, :k]
            for i in range(4):
                torch.mm(u[i + 1], mats[i + 1], out=m[i])  # m1..m4
            if bias is not None:
                m[0] += bias  # every output takes m1 exactly once
            torch.add(m[0], m[1], out=sums[0])
            torch.sub(m[0], m[1], out=sums[1])
            torch.add(m[2], m[3], out=sums[2])
            torch.sub(m[2], m[3], out=sums[3])
            y = [out[b, 4 * lo + i : 4 * hi : 4] for i in range(4)]  # [k, C_out] each
            torch.add(sums[0], sums[2], out=y[0]).addmm_(u[0], mats[0])
            torch.add(sums[1], sums[3], alpha=2, out=y[1])
            torch.add(sums[0], sums[2], alpha=4, out=y[2])
            torch.add(sums[1], sums[3], alpha=8, out=y[3]).addmm_(u[5], mats[5])
    return out[:, :t] if 4 * tiles != t else out


def channels_last_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Centred ("same", zero-padded) 1-D convolution of `[B, T, C_in]` as a 2-D
    convolution of its `[B, C_in, 1, T]` view, channels-last in memory when x is
    contiguous, so oneDNN neither copies the input nor the output.

    weight: [C_out, C_in, k] (k odd) -> [B, T, C_out]. A channels-first input (x a
    transposed `[B, C_in, T]`) is convolved as it lies and comes back as a transposed view."""
    k = weight.shape[2]
    if x.stride(1) == 1 and x.stride(2) != 1:  # a transposed channels-first tensor
        return F.conv1d(x.transpose(1, 2), weight, bias, padding=k // 2).transpose(1, 2)
    out = F.conv2d(x.unsqueeze(1).permute(0, 3, 1, 2), weight.unsqueeze(2), bias, padding=(0, k // 2))
    return out.permute(0, 2, 3, 1).squeeze(1)


class _SameConv(torch.autograd.Function):
    """Forward and backward of `same_conv` (see there). On CPU, at sizes above
    ONEDNN_MIN_MACS, the forward and the input's gradient of a float32 kernel-3
    convolution run as `winograd_conv3`, and the forward of other kernels as a oneDNN
    convolution; everything else runs as matrix products on row ranges (MKL's products
    beat oneDNN's convolution backward on the towers' one long sequence)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # x: [B, T, C_in] (any strides with one unit stride per matrix), weight: [C_out, C_in, k]
        batch, t, _ = x.shape
        k = weight.shape[2]
        # In-place and out= products are not autocast: compute in the dtype a convolution
        # would get under the active autocast, else in the input's.
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        x = x.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        ctx.has_bias = bias is not None
        weight = weight.to(dtype)
        taps = weight.permute(2, 0, 1).contiguous()  # [k, C_out, C_in]: one matrix per tap
        if _winograd(x, weight):
            ctx.save_for_backward(x, taps)
            # detach(): the same memory, but not a view, so callers may write in place.
            return winograd_conv3(x, *taps, bias).detach()
        if _onednn(x, weight):
            ctx.save_for_backward(x, taps)
            return channels_last_conv(x, weight, bias).detach()
        out = x.new_empty(batch, t, weight.shape[0])  # [B, T, C_out]
        for b in range(batch):
            if bias is None:
                torch.mm(x[b], taps[k // 2].t(), out=out[b])
            else:
                torch.addmm(bias, x[b], taps[k // 2].t(), out=out[b])
            for tap, lo, hi, shift in _shifted_rows(k, t):
                out[b, lo:hi].addmm_(x[b, lo + shift : hi + shift], taps[tap].t())  # out[i] += w_tap x[i + shift]
        ctx.save_for_backward(x, taps)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, taps = ctx.saved_tensors
        batch, t, _ = x.shape
        k = taps.shape[0]
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0] and _winograd(grad, taps.permute(2, 1, 0)):
            # The input's gradient is the same convolution of grad by the transposed taps
            # in reverse order: grad_x[t] = sum_j taps[j]^T grad[t + 1 - j].
            grad_x = winograd_conv3(grad, taps[2].t(), taps[1].t(), taps[0].t())
        elif ctx.needs_input_grad[0]:
            grad_x = x.new_empty(x.shape)
            for b in range(batch):
                torch.mm(grad[b], taps[k // 2], out=grad_x[b])
                for tap, lo, hi, shift in _shifted_rows(k, t):
                    grad_x[b, lo + shift : hi + shift].addmm_(grad[b, lo:hi], taps[tap])
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(taps)  # [k, C_out, C_in]
            for b in range(batch):
                grad_weight[k // 2].addmm_(grad[b].t(), x[b])
                for tap, lo, hi, shift in _shifted_rows(k, t):
                    grad_weight[tap].addmm_(grad[b, lo:hi].t(), x[b, lo + shift : hi + shift])
            grad_weight = grad_weight.permute(1, 2, 0)  # [C_out, C_in, k]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=(0, 1))
        return grad_x, grad_weight, grad_bias


def _shifted_rows(kernel_size: int, length: int) -> list[tuple[int, int, int, int]]:
    """(tap, lo, hi, shift) for every off-centre tap of a centred kernel: output rows
    lo..hi-1 of a sequence of `length` read input rows lo + shift..hi + shift - 1 through
    that tap (the rest of its reach is the zero padding). Taps that reach past the whole
    sequence are left out."""
    half = kernel_size // 2
    rows = []
    for tap in range(kernel_size):
        shift = tap - half
        if shift != 0 and abs(shift) < length:
            rows.append((tap, max(0, -shift), length - max(0, shift), shift))
    return rows


def same_conv(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Centred ("same", zero-padded) 1-D convolution of each sequence x[b], channels-last.

    x: [B, T, C_in], weight: [C_out, C_in, k] (k odd; nn.Conv1d's layout), bias: [C_out]
    -> [B, T, C_out]; equal to F.conv1d(x.transpose(1, 2), weight, bias, padding=k // 2)
    transposed. Computed as k matrix products over shifted row ranges, accumulated in
    place: no padded copy of the input and no change of layout, either way. oneDNN's
    convolution wants channels-first input and returns channels-first output, so around
    each LayerNorm it costs two transposing copies (and their two in the backward pass);
    the products here read a channels-first input as a transposed matrix for free.
    x may be any view whose matrices x[b] have one unit stride (a transposed
    channels-first tensor is fine)."""
    if weight.shape[2] % 2 == 0:
        raise ValueError(f"same_conv: the kernel size must be odd to stay centred, got {weight.shape[2]}")
    return _SameConv.apply(x, weight, bias)


class SameConv1d(nn.Module):
    """Centred ("same") 1-D convolution over `[B, T, C]`, stride 1 (see `same_conv`).

    The caller zeroes the input's padded steps; the output's padded steps are not
    zeroed (they are left to the LayerNorm, ReLU and mask that follow)."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"SameConv1d: kernel_size must be odd to stay centred, got {kernel_size}")
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size, padding=kernel_size // 2, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, T, C_in], any strides with one unit stride per matrix -> [B, T, C_out]
        return same_conv(x, self.conv.weight, self.conv.bias)


class StepLinear(nn.Linear):
    """nn.Linear applied at every step of `[B, T, C_in]`; on CPU run as a 1 x 1 oneDNN
    convolution of the channels-last view (see the module's docstring). Same parameters
    and state_dict keys as nn.Linear."""

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, T, C_in] -> [B, T, C_out]
        weight = self.weight[:, :, None]  # [C_out, C_in, 1]
        if x.ndim == 3 and _onednn(x, weight):
            return channels_last_conv(x, weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class DepthwiseConv1d(nn.Module):
    """Depthwise 1-D convolution (kernel 3, centred, stride 1 or 2) over `[B, T, C]`.

    Run as a 2-D convolution on a channels-last view ([B, C, 1, T], NHWC in memory): on
    CPU, oneDNN's depthwise kernel is two to three times faster on that layout than on
    channels-first 1-D input, and no copy is needed either way. (One grouped conv with
    three outputs per channel for q, k and v together is not a depthwise kernel to
    oneDNN and runs slower than the three.)"""

    def __init__(self, dim: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(dim, dim, 3, stride=stride, padding=1, groups=dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, T, C] (zero at padding) -> [B, ceil(T / stride), C]
        nhwc = x.unsqueeze(1).permute(0, 3, 1, 2)  # [B, C, 1, T], channels-last memory
        out = F.conv2d(nhwc, self.conv.weight.unsqueeze(2), stride=(1, self.stride), padding=(0, 1), groups=self.conv.groups)
        return out.permute(0, 2, 3, 1).squeeze(1)  # [B, T', C]


def masked_max_pool(x: Tensor, mask: Tensor, stride: int) -> Tensor:
    """Max over each window of 3 steps centred on every `stride`-th step, ignoring padding.

    x: [B, T, C], mask: [B, T] -> [B, ceil(T / stride), C], zero at padded output steps.
    Padding is excluded (not read as 0) so that a valid window's maximum does not depend
    on whether padding follows it."""
    filled = torch.where(mask[:, :, None], x, float("-inf")).unsqueeze(1).permute(0, 3, 1, 2)  # [B, C, 1, T] NHWC
    out = F.max_pool2d(filled, kernel_size=(1, 3), stride=(1, stride), padding=(0, 1)).permute(0, 2, 3, 1).squeeze(1)
    # An all-padding window gives -inf; keep padded steps finite.
    return out.masked_fill_(~downsample_mask(mask, stride)[:, :, None], 0.0)


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
    `block_size` steps (default: 2 * (window_size // 2), a divisor of the pyramid's
    lengths at ActionFormer's settings, so no block is padded) and each block attends,
    with one `scaled_dot_product_attention` call over all blocks, to the keys of its own
    span widened by window_size // 2 on each side.

    Inputs may have any strides; `[B, T, H, D]` memory viewed as `[B, H, T, D]` (what a
    channels-last projection gives) is the fast case, and the output comes back in it.

    Padded keys are never attended. A padded query has no valid key in general, and an
    all-masked row would make the softmax NaN (and NaN times the zero the caller masks
    it with is still NaN), so padded keys get half the dtype's most negative value
    instead of -inf: exp of it is exactly 0 next to any real score, so a query with a
    valid key in its band gives padded keys exactly zero weight, and adding a score to
    it cannot overflow, so a padded query attends to its whole band, finite garbage the
    caller must not read."""
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"local_attention: window_size must be a positive odd integer, got {window_size}")
    b, h, t, d = q.shape
    half = window_size // 2
    block = block_size or max(2 * half, 1)
    num_blocks = math.ceil(t / block)
    tail = num_blocks * block - t
    span = block + 2 * half  # keys seen by one query block
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [B, T, H, D] views

    # Fold the blocks into the batch: the fused SDPA kernels take 4-D inputs.
    q_blocks = F.pad(q, (0, 0, 0, 0, 0, tail)) if tail else q
    q_blocks = q_blocks.reshape(b * num_blocks, block, h, d).transpose(1, 2)  # [B * N, H, L, D]

    def key_blocks(x: Tensor) -> Tensor:  # [B, T, H, D] -> [B * N, H, S, D]
        x = F.pad(x, (0, 0, 0, 0, half, half + tail))  # [B, T + tail + 2 half, H, D]
        return x.unfold(1, span, block).permute(0, 1, 2, 4, 3).reshape(b * num_blocks, h, span, d)

    # Query l of a block sits at key index l + half of that block's span, so the band
    # |i - j| <= half is 0 <= s - l <= 2 half in block coordinates.
    rel = torch.arange(span, device=q.device)[None, :] - torch.arange(block, device=q.device)[:, None]  # [L, S]
    band = torch.zeros(block, span, dtype=q.dtype, device=q.device).masked_fill_((rel < 0) | (rel > 2 * half), float("-inf"))
    key_valid = F.pad(mask, (half, half + tail), value=False).unfold(1, span, block)  # [B, N, S]
    padded_key = torch.zeros(key_valid.shape, dtype=q.dtype, device=q.device).masked_fill_(~key_valid, torch.finfo(q.dtype).min / 2)
    scores = padded_key.view(b * num_blocks, 1, 1, span) + band  # [B * N, 1, L, S], added to q.k / sqrt(D)
    out = F.scaled_dot_product_attention(
        q_blocks, key_blocks(k), key_blocks(v), attn_mask=scores, dropout_p=dropout_p
    )  # [B * N, H, L, D]
    out = out.transpose(1, 2).reshape(b, num_blocks * block, h, d)
    return out[:, :t].transpose(1, 2)


class LocalSelfAttention(nn.Module):
    """Multi-head local-window self-attention with optional down-sampling, over `[B, T, C]`.

    As in ActionFormer, queries, keys and values each pass a depthwise conv (kernel 3,
    stride `stride`) and a LayerNorm before their linear projection, so with stride 2 the
    attention runs on the half-length sequence; the window is counted at that length."""

    def __init__(self, dim: int, num_heads: int, window_size: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"LocalSelfAttention: dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.window_size = window_size
        self.stride = stride
        self.q_conv = DepthwiseConv1d(dim, stride)
        self.k_conv = DepthwiseConv1d(dim, stride)
        self.v_conv = DepthwiseConv1d(dim, stride)
        self.q_norm = nn.LayerNorm(dim)
        self.k_norm = nn.LayerNorm(dim)
        self.v_norm = nn.LayerNorm(dim)
        self.q_proj = StepLinear(dim, dim)
        self.k_proj = StepLinear(dim, dim)
        self.v_proj = StepLinear(dim, dim)
        self.out_proj = StepLinear(dim, dim)
        self.out_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # x: [B, T, C] (zero at padding), mask: [B, T] -> [B, T', C], [B, T']
        out_mask = downsample_mask(mask, self.stride)
        q = self.q_proj(self.q_norm(self.q_conv(x)))  # [B, T', C]
        k = self.k_proj(self.k_norm(self.k_conv(x)))
        v = self.v_proj(self.v_norm(self.v_conv(x)))
        b, t, c = q.shape

        def heads(z: Tensor) -> Tensor:  # [B, T', C] -> [B, H, T', C / H] (a view)
            return z.view(b, t, self.num_heads, c // self.num_heads).transpose(1, 2)

        out = local_attention(heads(q), heads(k), heads(v), out_mask, self.window_size)  # [B, H, T', C / H]
        out = out.transpose(1, 2).reshape(b, t, c)  # [B, T', C]
        return self.out_drop(self.out_proj(out)), out_mask


class LayerScale(nn.Module):
    """Learnable per-channel scale of a `[B, T, C]` residual branch."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init)))


class TransformerBlock(nn.Module):
    """Pre-LN transformer block over `[B, T, C]`: local self-attention and an MLP, each
    residual, each branch scaled per channel (LayerScale) and, in training, dropped for
    whole samples with probability `drop_path` (stochastic depth; kept ones rescaled by
    1 / (1 - drop_path)). With stride 2 the attention down-samples and the skip path
    takes a max-pool (as in ActionFormer), halving the length of features and mask."""

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
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = LocalSelfAttention(dim, num_heads, window_size, stride=stride, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            StepLinear(dim, mlp_ratio * dim),
            InplaceGELU(),
            nn.Dropout(dropout),
            StepLinear(mlp_ratio * dim, dim),
            nn.Dropout(dropout),
        )
        self.scale_attn = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else None
        self.scale_mlp = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else None

    def _add_branch(self, skip: Tensor, branch: Tensor, layer_scale: LayerScale | None) -> Tensor:
        """skip + DropPath(LayerScale(branch)) in one pass over the tensor: the channel
        scale and the samples' keep / (1 - p) multiply into one [B, 1, C] factor first."""
        factor = None if layer_scale is None else layer_scale.scale  # [C]
        if self.training and self.drop_path > 0.0:
            keep = torch.rand(skip.shape[0], 1, 1, dtype=skip.dtype, device=skip.device) >= self.drop_path
            keep = keep.to(skip.dtype) / (1.0 - self.drop_path)  # [B, 1, 1]
            factor = keep if factor is None else keep * factor
        return skip + branch if factor is None else torch.addcmul(skip, branch, factor)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # x: [B, T, C], mask: [B, T] -> [B, T / stride, C], [B, T / stride]
        # LayerNorm maps a padded step to its bias; the convolutions inside the attention
        # must read padding as zero. (In place: LayerNorm's backward does not read its
        # output, and a fresh tensor costs page faults on top of the pass.)
        attn, out_mask = self.attn(self.norm1(x).masked_fill_(~mask[:, :, None], 0.0), mask)
        skip = masked_max_pool(x, mask, self.stride) if self.stride > 1 else x
        out = self._add_branch(skip, attn, self.scale_attn)
        return self._add_branch(out, self.mlp(self.norm2(out)), self.scale_mlp), out_mask
