"""The ActionFormer-style head: its building blocks against their reference forms, local
attention, padding, shapes, gradients, decoding, and a tiny model that must learn one
synthetic sequence."""

import math

import pytest
import torch
import torch.nn.functional as F

from e2etal.activations import InplaceGELU
from e2etal.config import from_dict
from e2etal.geometry import pairwise_tiou
from e2etal.heads import HeadConfig, HeadOutput, build_head, padded_length
from e2etal.heads import actionformer, transformer
from e2etal.heads.actionformer import encoder_passes
from e2etal.heads.targets import make_points
from e2etal.heads.transformer import DepthwiseConv1d, StepLinear, local_attention, masked_max_pool, same_conv
from e2etal.postprocess import postprocess


def tiny_config(**overrides) -> HeadConfig:
    values = dict(
        input_dim=16,
        embed_dim=32,
        head_dim=32,
        num_classes=2,
        num_heads=4,
        branch_layers=2,  # 3 levels, strides 1, 2, 4
        window_size=5,
        regression_ranges=((0, 4), (4, 8), (8, 10000)),
        max_seq_len=64,
    )
    values.update(overrides)
    return HeadConfig(**values)


def dense_band_attention(q, k, v, mask, window_size):
    """Reference: full softmax attention over the valid keys with |i - j| <= w // 2."""
    t = q.shape[2]
    idx = torch.arange(t)
    allowed = ((idx[:, None] - idx[None, :]).abs() <= window_size // 2)[None] & mask[:, None, :]  # [B, T, T]
    allowed |= ~mask[:, :, None]  # padded queries: any finite row will do, it is never read
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, H, T, T]
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    return torch.softmax(logits, dim=-1) @ v


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("t, window, block", [(37, 5, None), (37, 5, 4), (37, 7, 16), (12, 19, None), (64, 3, 64)])
def test_local_attention_equals_dense_band_attention(t, window, block, channels_last):
    g = torch.Generator().manual_seed(t + window)
    b, h, d = 2, 3, 8
    shape = (b, t, h, d) if channels_last else (b, h, t, d)  # the head passes [B, T, H, D] memory
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    if channels_last:
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, t - 9 :] = False  # trailing padding
    mask[1, 3] = mask[1, 4] = False  # holes: padded keys inside the sequence
    got = local_attention(q, k, v, mask, window, block_size=block)
    want = dense_band_attention(q, k, v, mask, window)
    assert torch.isfinite(got).all()
    assert torch.allclose(got[mask[:, None, :].expand(b, h, t)], want[mask[:, None, :].expand(b, h, t)], atol=1e-10)
    # Gradients agree too, through the valid outputs.
    weight = torch.randn(b, h, t, d, generator=g, dtype=torch.float64) * mask[:, None, :, None]
    grads_got = torch.autograd.grad((got * weight).sum(), (q, k, v))
    grads_want = torch.autograd.grad((want * weight).sum(), (q, k, v))
    for a, w in zip(grads_got, grads_want):
        assert torch.allclose(a, w, atol=1e-10)


@pytest.mark.parametrize("t, kernel_size, bias", [(9, 3, True), (9, 1, False), (9, 5, True), (2, 5, False)])
def test_same_conv_equals_conv1d(t, kernel_size, bias):
    g = torch.Generator().manual_seed(t + kernel_size)
    x = torch.randn(2, 6, t, generator=g, dtype=torch.float64, requires_grad=True)  # channels-first
    w = torch.randn(5, 6, kernel_size, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    got = same_conv(x.transpose(1, 2), w, b)  # read as a transposed view, [B, T, 5]
    want = F.conv1d(x, w, b, padding=kernel_size // 2).transpose(1, 2)
    assert torch.allclose(got, want, atol=1e-12)
    weight = torch.randn(got.shape, generator=g, dtype=torch.float64)
    inputs = (x, w) if b is None else (x, w, b)
    for a, e in zip(torch.autograd.grad((got * weight).sum(), inputs), torch.autograd.grad((want * weight).sum(), inputs)):
        assert torch.allclose(a, e, atol=1e-12)


@pytest.fixture(params=["onednn", "matmul"])
def kernels(request, monkeypatch):
    """Runs a test with every product of the head on the CPU's large-size kernels (a
    oneDNN convolution, or Winograd F(4, 3) for float32 kernel-3 convolutions), then
    with none (the path GPUs and small products take), whatever the sizes."""
    monkeypatch.setattr(transformer, "ONEDNN_MIN_MACS", 0 if request.param == "onednn" else 2**62)
    return request.param


@pytest.mark.parametrize("t, kernel_size, bias", [(9, 3, True), (9, 1, False), (2, 5, False)])
def test_same_conv_and_step_linear_on_both_kernel_paths(t, kernel_size, bias, kernels):
    """float32 (oneDNN has no float64): both paths equal F.conv1d / F.linear, forward and
    backward, for a channels-first view and a contiguous channels-last input alike."""
    g = torch.Generator().manual_seed(t + kernel_size)
    x = torch.randn(2, 6, t, generator=g, requires_grad=True)  # channels-first
    w = torch.randn(5, 6, kernel_size, generator=g, requires_grad=True)
    b = torch.randn(5, generator=g, requires_grad=True) if bias else None
    inputs = (x, w) if b is None else (x, w, b)
    want = F.conv1d(x, w, b, padding=kernel_size // 2).transpose(1, 2)  # [B, T, 5]
    weight = torch.randn(want.shape, generator=g)
    want_grads = torch.autograd.grad((want * weight).sum(), inputs)
    for view in (x.transpose(1, 2), x.transpose(1, 2).contiguous()):
        got = same_conv(view, w, b)
        assert torch.allclose(got, want, atol=1e-5)
        for a, e in zip(torch.autograd.grad((got * weight).sum(), inputs), want_grads):
            assert torch.allclose(a, e, atol=1e-4)
    same_conv(x.transpose(1, 2), w, b).masked_fill_(torch.ones(1, t, 1, dtype=torch.bool), 0.0)  # callers write in place

    linear = StepLinear(6, 5)
    tokens = torch.randn(2, t, 6, generator=g)
    assert torch.allclose(linear(tokens), F.linear(tokens, linear.weight, linear.bias), atol=1e-5)
    assert list(linear.state_dict()) == ["weight", "bias"]


def test_small_products_stay_matrix_products():
    x = torch.randn(2, 64, 128)
    assert not transformer._onednn(x, torch.zeros(128, 128, 3))  # the demo's sizes: 6.3M multiply-adds
    assert transformer._onednn(torch.randn(2, 2304, 512), torch.zeros(512, 512, 1))  # ActionFormer's projections
    tower = torch.randn(1, 8517, 512)  # ActionFormer's towers: every level of 2 videos
    assert transformer._winograd(tower, torch.zeros(512, 512, 3))
    assert not transformer._winograd(tower, torch.zeros(512, 512, 5))  # F(4, 3) is for kernel 3 only
    assert not transformer._winograd(tower.bfloat16(), torch.zeros(512, 512, 3))  # bf16 keeps the oneDNN path
    assert not transformer._winograd(x, torch.zeros(128, 128, 3))


def test_large_kernel3_convolutions_run_as_winograd_both_ways(monkeypatch):
    """The equality tests pass on any path; this one checks that the forward and the
    input's gradient of a large float32 kernel-3 convolution do take Winograd's, and
    that other kernels do not."""
    monkeypatch.setattr(transformer, "ONEDNN_MIN_MACS", 0)
    calls = []
    real = transformer.winograd_conv3
    monkeypatch.setattr(transformer, "winograd_conv3", lambda *a: calls.append(a[0].shape) or real(*a))
    x = torch.randn(2, 9, 6, requires_grad=True)
    for kernel_size, expected in ((3, 2), (5, 0)):
        calls.clear()
        same_conv(x, torch.randn(5, 6, kernel_size)).sum().backward()
        assert len(calls) == expected


@pytest.mark.parametrize("t", [1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 17])
@pytest.mark.parametrize("tiles", [1, 2, 256])
def test_winograd_conv3_equals_conv1d(t, tiles, monkeypatch):
    """Exact in float64 (so the transforms are right) for every length modulo 4, with
    blocks of 1 and 2 quadruples (every block boundary and both ends in the padding),
    for a channels-first view and a contiguous input, with and without bias."""
    monkeypatch.setattr(transformer, "WINOGRAD_TILES", tiles)
    g = torch.Generator().manual_seed(t)
    x = torch.randn(3, 5, t, generator=g, dtype=torch.float64)  # channels-first
    w = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    for bias in (None, b):
        want = F.conv1d(x, w, bias, padding=1).transpose(1, 2)  # [B, T, 4]
        for view in (x.transpose(1, 2), x.transpose(1, 2).contiguous()):
            got = transformer.winograd_conv3(view, *w.unbind(2), bias)
            assert got.shape == want.shape
            assert torch.allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("c, t", [(64, 100), (256, 600), (512, 2304)])
def test_winograd_conv3_in_float32_errs_by_a_few_roundings_of_the_sum(c, t):
    """Against float64, in units of float32's eps times sum |w| |x| (what a dot product's
    rounding scales with, whatever the library's order of summation): the transforms
    amplify the products' rounding, measured 2-7 units where a direct float32
    convolution errs by 0.4-1.5 (benchmarks/RESULTS.md); a wrong transform or a
    product in a narrower type errs by orders of magnitude more."""
    g = torch.Generator().manual_seed(c)
    x = torch.randn(1, c, t, generator=g)  # channels-first
    w = torch.randn(c, c, 3, generator=g) / (3 * c) ** 0.5
    exact = F.conv1d(x.double(), w.double(), padding=1).transpose(1, 2)
    unit = torch.finfo(torch.float32).eps * F.conv1d(x.double().abs(), w.double().abs(), padding=1).transpose(1, 2)
    got = transformer.winograd_conv3(x.transpose(1, 2), *w.unbind(2)).double()
    assert ((got - exact).abs() / unit).max() <= 16


@pytest.mark.parametrize("t, stride", [(9, 1), (9, 2), (8, 2)])
def test_depthwise_conv_and_max_pool_equal_their_channels_first_forms(t, stride):
    torch.manual_seed(t + stride)
    conv = DepthwiseConv1d(6, stride).double()
    x = torch.randn(2, t, 6, dtype=torch.float64)  # [B, T, C]
    want = F.conv1d(x.transpose(1, 2), conv.conv.weight, stride=stride, padding=1, groups=6).transpose(1, 2)
    assert torch.allclose(conv(x), want, atol=1e-12)
    mask = torch.ones(2, t, dtype=torch.bool)
    mask[0, t - 3 :] = False
    mask[1, 1] = False
    pooled = masked_max_pool(x, mask, stride)  # [B, ceil(T / stride), C]
    for b in range(2):
        for i, centre in enumerate(range(0, t, stride)):
            window = [j for j in (centre - 1, centre, centre + 1) if 0 <= j < t and mask[b, j]]
            expected = x[b, window].max(dim=0).values if mask[b, centre] else torch.zeros(6, dtype=torch.float64)
            assert torch.equal(pooled[b, i], expected), (b, i)


def test_blocks_use_the_inplace_gelu_and_keep_their_state_dict_keys():
    block = transformer.TransformerBlock(8, 2, 3)
    assert isinstance(block.mlp[1], InplaceGELU)
    assert {k for k in block.state_dict() if k.startswith("mlp.")} == {"mlp.0.weight", "mlp.0.bias", "mlp.3.weight", "mlp.3.bias"}


def test_parameter_count_equals_actionformers():
    """ActionFormer's LocPointTransformer at configs/thumos_i3d.yaml has 29,251,612
    parameters; HeadConfig() is that setting, so the head must have as many."""
    assert sum(p.numel() for p in build_head(HeadConfig()).parameters()) == 29_251_612


def test_config_defaults_and_validation():
    cfg = HeadConfig()
    assert cfg.num_levels == 6 and cfg.strides == (1, 2, 4, 8, 16, 32)
    assert cfg.max_seq_len % cfg.max_stride == 0
    with pytest.raises(ValueError, match="one \\(low, high\\) pair per pyramid level"):
        HeadConfig(branch_layers=2)
    with pytest.raises(ValueError, match="window_size: expected a positive odd integer"):
        tiny_config(window_size=4)
    with pytest.raises(ValueError, match="embed_dim: expected a multiple of num_heads"):
        tiny_config(embed_dim=30)
    # Through the project's config loader (lists from YAML become tuples).
    cfg = from_dict(HeadConfig, {"branch_layers": 1, "regression_ranges": [[0, 8], [8, 1000]], "postprocess": {"method": "hard"}})
    assert cfg.regression_ranges == ((0.0, 8.0), (8.0, 1000.0)) and cfg.postprocess.method == "hard"
    with pytest.raises(ValueError, match="regression_ranges"):
        from_dict(HeadConfig, {"regression_ranges": [[0, 8]]})


def test_padded_length():
    cfg = tiny_config()  # largest stride 4
    assert [padded_length(t, cfg) for t in (1, 4, 5, 37, 64)] == [4, 4, 8, 40, 64]
    assert padded_length(2000, HeadConfig()) == 2016


def test_forward_shapes():
    cfg = tiny_config()
    model = build_head(cfg).eval()
    x = torch.randn(2, 16, 64)
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[1, 50:] = False
    out = model(x, mask)
    assert isinstance(out, HeadOutput)
    for level, (stride, length) in enumerate(zip((1, 2, 4), (64, 32, 16))):
        assert out.cls_logits[level].shape == (2, length, 2)
        assert out.offsets[level].shape == (2, length, 2)
        assert (out.offsets[level] >= 0).all()
        assert out.masks[level].shape == (2, length) and out.masks[level].dtype == torch.bool
        assert out.points[level].shape == (length, 4)
        assert torch.equal(out.points[level][:, 0], torch.arange(length, dtype=torch.float32) * stride)
        assert torch.all(out.points[level][:, 3] == stride)
    assert out.masks[1][1].sum() == 25 and out.masks[2][1].sum() == 13  # steps 0, 2, .., 48 and 0, 4, .., 48
    with pytest.raises(ValueError, match=r"features must be \[B, 16, T\]"):
        model(torch.randn(2, 8, 64), mask)


def test_padding_does_not_change_valid_outputs():
    cfg = tiny_config()  # drop path and dropout are inactive in eval mode
    torch.manual_seed(0)
    model = build_head(cfg).eval()
    x = torch.randn(1, 16, 37)
    alone = model(x, torch.ones(1, 37, dtype=torch.bool))
    # Garbage (not zeros, not even finite) in the padding, and a second video in the batch.
    padded = torch.cat([x, 100 * torch.randn(1, 16, 27)], dim=2)
    padded[0, 3, 40], padded[0, 5, 60] = float("nan"), float("inf")
    other = torch.randn(1, 16, 64)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[0, :37] = True
    mask[1] = True
    batched = model(torch.cat([padded, other]), mask)
    for level, stride in enumerate((1, 2, 4)):
        n = math.ceil(37 / stride)
        assert alone.cls_logits[level].shape[1] == n
        assert torch.allclose(batched.cls_logits[level][0, :n], alone.cls_logits[level][0], atol=1e-5)
        assert torch.allclose(batched.offsets[level][0, :n], alone.offsets[level][0], atol=1e-5)
        assert torch.equal(batched.masks[level][0, :n], alone.masks[level][0])
        assert not batched.masks[level][0, n:].any()


@pytest.mark.parametrize("head_kernel_size", [3, 5])
def test_towers_see_all_levels_at_once_as_each_level_alone(head_kernel_size):
    """The towers run every level of every video as one sequence with padded gaps between
    them; each level's outputs must be what the towers give on that level alone."""
    cfg = tiny_config(head_kernel_size=head_kernel_size)
    torch.manual_seed(0)
    model = build_head(cfg).eval()
    torch.nn.init.normal_(model.reg_tower.out.conv.weight)  # not the all-equal initial offsets
    for level, scale in enumerate(model.reg_scales):
        scale.scale.data.fill_(level + 2.0)
    x = torch.randn(2, 16, 64)
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[1, 40:] = False
    with torch.no_grad():
        out = model(x, mask)
        feats, masks = model.encoder(x, mask)
        for level, (f, m) in enumerate(zip(feats, masks)):
            f = torch.where(m[:, :, None], f, 0.0)
            assert torch.allclose(out.cls_logits[level], model.cls_tower(f, m), atol=1e-5)
            offsets = F.relu(model.reg_tower(f, m) * model.reg_scales[level].scale)
            assert torch.allclose(out.offsets[level], offsets, atol=1e-5)


def test_encoder_passes_split_off_videos_only_when_the_skipped_steps_pay():
    cfg = HeadConfig()  # ActionFormer's THUMOS size: input 2048, embed 512, largest stride 32
    mask = torch.zeros(3, 2304, dtype=torch.bool)
    mask[0] = True
    mask[1, :2000] = True  # 288 steps past padded_length(2000) = 2016
    mask[2, :2300] = True  # needs all 2304
    assert encoder_passes(mask, cfg) == [([0, 2], 2304), ([1], 2016)]
    mask[0, 1990:] = False  # 0 and 1 both need 2016 now: one pass for both
    assert encoder_passes(mask, cfg) == [([2], 2304), ([0, 1], 2016)]
    assert encoder_passes(mask[:2], cfg) == [([0, 1], 2016)]  # a batch shorter than its length: trimmed
    mask[1, 1980:] = True  # needs 2272 of 2304: 32 steps skipped are not worth a pass
    assert encoder_passes(mask[1:], cfg) == [([0, 1], 2304)]
    mask[1, :3] = False  # valid steps after a hole still count; a video of padding only runs at one stride
    assert encoder_passes(mask[1:], cfg) == [([0, 1], 2304)]
    assert encoder_passes(torch.zeros(2, 2304, dtype=torch.bool), cfg) == [([0, 1], 32)]
    # The demo's head (input 96, embed 128) never splits.
    small = tiny_config(input_dim=96, embed_dim=128, head_dim=128, max_seq_len=128)
    short = torch.zeros(2, 128, dtype=torch.bool)
    short[0], short[1, :20] = True, True
    assert encoder_passes(short, small) == [([0, 1], 128)]


def test_split_passes_give_the_one_pass_outputs_and_gradients(monkeypatch, kernels):
    """Three videos of 64, 20 and 40 valid steps run in three passes (any split allowed)
    and in one: equal outputs at valid steps, zeros at padded ones, equal gradients."""
    cfg = tiny_config(drop_path=0.0)
    torch.manual_seed(0)
    model = build_head(cfg).train()
    x = torch.randn(3, 16, 64)
    mask = torch.zeros(3, 64, dtype=torch.bool)
    mask[0], mask[1, :20], mask[2, :40] = True, True, True
    mask[2, 7] = False  # a hole
    segments = [torch.tensor([[5.0, 12.0]]), torch.tensor([[2.0, 9.0]]), torch.tensor([[20.0, 38.0]])]
    labels = [torch.tensor([0]), torch.tensor([1]), torch.tensor([1])]
    results = {}
    for name, bound in (("split", 0), ("one", 2**62)):
        monkeypatch.setattr(actionformer, "ONEDNN_MIN_MACS", bound)
        assert len(encoder_passes(mask, cfg)) == (3 if name == "split" else 1)
        model.zero_grad()
        out = model(x, mask)
        model.loss_norm.fill_(cfg.loss_norm_init)
        model.loss(out, segments, labels)["loss"].backward()
        results[name] = (out, {n: p.grad.clone() for n, p in model.named_parameters()})
    (split, split_grads), (one, one_grads) = results["split"], results["one"]
    for level in range(cfg.num_levels):
        valid = one.masks[level]
        assert torch.equal(split.masks[level], valid)
        for a, b in ((split.cls_logits[level], one.cls_logits[level]), (split.offsets[level], one.offsets[level])):
            assert a.shape == b.shape
            assert torch.allclose(a[valid], b[valid], atol=1e-5)
            assert not a[~valid].any()
    for name, grad in one_grads.items():
        assert torch.allclose(split_grads[name], grad, atol=1e-5), name


def test_backward_gives_finite_gradients_everywhere():
    cfg = tiny_config(dropout=0.1)  # drop path (0.1 by default) and dropout active
    torch.manual_seed(0)
    model = build_head(cfg).train()
    x = torch.randn(2, 16, 64)
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[1, 40:] = False
    losses = model.loss(
        model(x, mask),
        [torch.tensor([[5.0, 12.0], [20.0, 50.0]]), torch.zeros(0, 2)],
        [torch.tensor([0, 1]), torch.zeros(0, dtype=torch.long)],
    )
    assert set(losses) == {"cls", "reg", "loss"}
    assert torch.allclose(losses["loss"], losses["cls"] + cfg.reg_loss_weight * losses["reg"])
    assert losses["reg"] > 0
    losses["loss"].backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


def test_forward_and_backward_under_autocast(kernels):
    """The convolutions run as in-place matrix products, which autocast leaves alone, or
    as oneDNN convolutions; either way they must follow the autocast dtype (the trainer
    uses bfloat16 autocast)."""
    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_head(cfg).train()
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[1, 40:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 16, 64), mask)
        loss = model.loss(out, [torch.tensor([[5.0, 12.0]]), torch.tensor([[20.0, 30.0]])], [torch.tensor([0]), torch.tensor([1])])
    assert out.cls_logits[0].dtype == torch.bfloat16
    loss["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_loss_normaliser_is_an_ema_buffer():
    cfg = tiny_config()
    model = build_head(cfg)
    assert "loss_norm" in model.state_dict() and model.loss_norm.item() == 100.0
    x, mask = torch.randn(1, 16, 64), torch.ones(1, 64, dtype=torch.bool)
    gt, label = [torch.tensor([[10.0, 16.0]])], [torch.tensor([1])]  # 5 positive points (see targets tests)
    model.train()
    model.loss(model(x, mask), gt, label)
    assert model.loss_norm.item() == pytest.approx(0.9 * 100 + 0.1 * 5)
    model.eval()
    model.loss(model(x, mask), gt, label)  # validation losses leave it alone
    assert model.loss_norm.item() == pytest.approx(90.5)
    restored = build_head(cfg)
    restored.load_state_dict(model.state_dict())
    assert restored.loss_norm.item() == pytest.approx(90.5)


def test_classification_starts_at_prior_probability():
    cfg = tiny_config(num_classes=5)
    torch.manual_seed(0)
    model = build_head(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(4, 16, 64), torch.ones(4, 64, dtype=torch.bool))
    prob = torch.sigmoid(torch.cat(out.cls_logits, dim=1))
    assert prob.mean().item() == pytest.approx(cfg.prior_prob, rel=0.5)
    assert prob.max().item() < 0.1


def test_regression_starts_at_one_stride_with_a_gradient_on_both_sides():
    """The offsets pass through a ReLU. A randomly initialised output conv started a whole
    level at 0 for many seeds, where the ReLU passes no gradient, and that side's
    regression never learned (a demo LoSA run ended at 13 % average mAP)."""
    cfg = tiny_config()
    gt, labels = [torch.tensor([[5.0, 12.0], [20.0, 50.0]])], [torch.tensor([0, 1])]
    for seed in range(8):
        torch.manual_seed(seed)
        model = build_head(cfg).train()
        out = model(torch.randn(1, 16, 64), torch.ones(1, 64, dtype=torch.bool))
        for level, offsets in enumerate(out.offsets):
            assert torch.equal(offsets, torch.ones_like(offsets)), (seed, level)
        model.loss(out, gt, labels)["reg"].backward()
        weight_grad = model.reg_tower.out.conv.weight.grad  # [2, C, k]: left, right
        assert (weight_grad.abs().sum(dim=(1, 2)) > 0).all(), seed


def test_decode_gives_candidates_in_feature_steps_per_level_best_first():
    cfg = tiny_config()
    model = build_head(cfg)
    lengths = [64, 32, 16]
    points = list(make_points(lengths, cfg.strides, cfg.regression_ranges).split(lengths))
    logits = [torch.full((1, n, 2), -20.0) for n in lengths]
    offsets = [torch.zeros(1, n, 2) for n in lengths]
    masks = [torch.ones(1, n, dtype=torch.bool) for n in lengths]
    logits[1][0, 10, 1] = 2.0  # stride 2, position 20, class 1
    offsets[1][0, 10] = torch.tensor([3.0, 2.0])  # -> (20 - 6, 20 + 4)
    logits[0][0, 40, 0] = 0.0  # stride 1, position 40, class 0
    offsets[0][0, 40] = torch.tensor([1.0, 1.5])  # -> (39, 41.5)
    logits[0][0, 41, 0] = 1.0  # overlaps the one above: decoding suppresses nothing
    offsets[0][0, 41] = torch.tensor([1.0, 1.0])  # -> (40, 42)
    logits[0][0, 50, 1] = 3.0  # shorter than min_segment_length: dropped
    offsets[0][0, 50] = torch.tensor([0.01, 0.01])
    logits[2][0, 15, 0] = 5.0  # stride 4, position 60, but padding: never a candidate
    masks[2][0, 15] = False
    out = HeadOutput(cls_logits=logits, offsets=offsets, masks=masks, points=points)

    [(segments, scores, labels)] = model.decode(out)
    # Level by level (finest first), best first within a level; nothing suppressed or clipped.
    assert segments.tolist() == [[40.0, 42.0], [39.0, 41.5], [14.0, 24.0]]
    assert scores.tolist() == pytest.approx(torch.sigmoid(torch.tensor([1.0, 0.0, 2.0])).tolist())
    assert labels.tolist() == [0, 0, 1]


def test_decode_keeps_pre_nms_topk_per_level_above_the_threshold():
    cfg = tiny_config(pre_nms_topk=3, pre_nms_threshold=0.5)
    torch.manual_seed(0)
    model = build_head(cfg).eval()
    out = model(torch.randn(1, 16, 64), torch.ones(1, 64, dtype=torch.bool))
    out.cls_logits = [3 * torch.randn_like(logits) for logits in out.cls_logits]  # half of them above 0.5
    [(segments, scores, labels)] = model.decode(out)
    assert len(scores) == 3 * cfg.num_levels
    assert bool((scores > 0.5).all())
    level0 = torch.sigmoid(out.cls_logits[0][0]).flatten()
    assert scores[:3].tolist() == pytest.approx(level0.sort(descending=True).values[:3].tolist())
    assert torch.all(segments[:, 1] - segments[:, 0] > cfg.min_segment_length)


def recovered(model, x, mask, gt_segments, gt_labels) -> bool:
    """Whether each ground truth's class has its top detection at tIoU > 0.5 with it."""
    model.eval()
    [candidates] = model.decode(model(x, mask))
    segments, scores, labels = postprocess(*candidates, model.cfg.postprocess, duration_s=float(x.shape[2]))
    for gt, label in zip(gt_segments, gt_labels):
        mine = segments[labels == label]  # sorted: the first is the class's best
        if len(mine) == 0 or pairwise_tiou(mine[:1], gt[None]).item() <= 0.5:
            return False
    return True


def test_tiny_model_learns_one_sequence():
    torch.manual_seed(0)
    t, dim = 64, 16
    gt_segments = torch.tensor([[8.0, 20.0], [34.0, 54.0]])
    gt_labels = torch.tensor([0, 1])
    patterns = torch.randn(2, dim)  # one feature pattern per class, buried in noise
    x = 0.5 * torch.randn(1, dim, t)
    for (s, e), c in zip(gt_segments.long().tolist(), gt_labels.tolist()):
        x[0, :, s:e] += patterns[c][:, None]
    mask = torch.ones(1, t, dtype=torch.bool)

    cfg = tiny_config(drop_path=0.0, dropout=0.0, layer_scale_init=None)
    model = build_head(cfg)
    assert not recovered(model, x, mask, gt_segments, gt_labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(100):
        model.train()
        loss = model.loss(model(x, mask), [gt_segments], [gt_labels])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert recovered(model, x, mask, gt_segments, gt_labels)
