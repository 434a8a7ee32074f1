"""LoSA: the frozen tap pass (no autograd through the backbone) and the adapters."""

import pytest
import torch
from torch import nn

from e2etal.adapters import (
    FrozenBackbone,
    FrozenPassConfig,
    LoSAAdapters,
    LoSAConfig,
    LongRangeAdapter,
    ShortRangeAdapter,
    frozen_taps,
    pool_tokens,
)
from e2etal.backbones import tsm_resnet18, vit_giant
from e2etal.backbones.tsm_resnet import TSMResNet
from e2etal.backbones.vit import VisionTransformer


# Tiny ViT: 4 frames at 64 px, patch 16, tubelet 2 -> token grid (2, 4, 4) per clip.
D, HEADS, FRAMES, PX, PATCH = 64, 4, 4, 64, 16
T_CLIP, H_TOK = FRAMES // 2, PX // PATCH
N_CLIPS, GRID = 3, 2


def tiny_vit(depth: int = 4, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=PX, patch_size=PATCH, num_frames=FRAMES, embed_dim=D, depth=depth,
                             num_heads=HEADS, mlp_dim=2 * D).eval()


def tiny_tsm(seed: int = 0) -> TSMResNet:
    """A TSM-ResNet18 (stage widths 64/128/256/512) with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = tsm_resnet18()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def clips(n: int = N_CLIPS, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, FRAMES, PX, PX, generator=torch.Generator().manual_seed(seed))


def adapter_params(module: nn.Module) -> dict[str, nn.Parameter]:
    return dict(module.named_parameters())


# ---------------------------------------------------------------------------------------
# Frozen pass
# ---------------------------------------------------------------------------------------


def test_pool_tokens_matches_hand_computation():
    tokens = torch.randn(2, 3, 4, 4, 5)  # [B, T', h, w, D]
    pooled = pool_tokens(tokens, 2)  # [B, T', 4, D]
    assert pooled.shape == (2, 3, 4, 5)
    cells = [(0, 0), (0, 1), (1, 0), (1, 1)]  # row-major (y, x)
    for c, (i, j) in enumerate(cells):
        block = tokens[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(dim=(2, 3))
        torch.testing.assert_close(pooled[:, :, c], block)
    torch.testing.assert_close(pool_tokens(tokens, 1)[:, :, 0], tokens.mean(dim=(2, 3)))

    # Not divisible: cell i covers rows floor(i*h/g) .. ceil((i+1)*h/g) - 1 (overlapping).
    odd = torch.randn(1, 2, 3, 5, 4)
    pooled = pool_tokens(odd, 2)
    rows, cols = [(0, 2), (1, 3)], [(0, 3), (2, 5)]
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            torch.testing.assert_close(pooled[:, :, 2 * i + j], odd[:, :, r0:r1, c0:c1].mean(dim=(2, 3)))


def test_frozen_taps_order_and_concatenation_match_direct_calls():
    vit, x = tiny_vit(), clips()
    taps = (4, 2)  # not sorted: the output follows this order
    tapped, last = frozen_taps(vit, x, taps, GRID, micro_batch=2)
    assert tapped.shape == (N_CLIPS * T_CLIP, 2, GRID * GRID, D)
    assert last.shape == (N_CLIPS * T_CLIP, GRID * GRID, D)
    assert tapped.dtype == last.dtype == torch.float32
    with torch.no_grad():
        for n in range(N_CLIPS):
            tokens, layers = vit(x[n:n + 1], taps=taps)  # [1, T, h, w, D]
            rows = slice(n * T_CLIP, (n + 1) * T_CLIP)
            for i, layer in enumerate(taps):
                torch.testing.assert_close(tapped[rows, i], pool_tokens(layers[layer], GRID)[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(last[rows], pool_tokens(tokens, GRID)[0], atol=1e-5, rtol=1e-5)
    # Layer 4 is the last block of this depth-4 model.
    torch.testing.assert_close(tapped[:, 0], last)


def test_micro_batching_gives_the_same_taps():
    vit, x = tiny_vit(), clips()
    one = frozen_taps(vit, x, (2, 3), GRID, micro_batch=N_CLIPS)
    for micro in (1, 2):
        split = frozen_taps(vit, x, (2, 3), GRID, micro_batch=micro)
        for a, b in zip(one, split):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_frozen_outputs_have_no_autograd_history():
    vit = tiny_vit()
    torch.set_grad_enabled(True)
    tapped, last = FrozenBackbone(vit, taps=(2, 4), grid=GRID)(clips())
    for out in (tapped, last):
        assert out.grad_fn is None and not out.requires_grad


def test_bf16_autocast_pass_returns_float32():
    vit, x = tiny_vit(), clips(2)
    ref, _ = frozen_taps(vit, x, (2,), GRID, micro_batch=2)
    tapped, last = frozen_taps(vit, x, (2,), GRID, micro_batch=2, dtype=torch.bfloat16)
    assert tapped.dtype == last.dtype == torch.float32
    torch.testing.assert_close(tapped, ref, atol=0.1, rtol=0.05)


def test_frozen_backbone_stays_frozen_and_in_eval_mode():
    vit = tiny_vit()
    frozen = FrozenBackbone(vit, grid=GRID, micro_batch=2)
    assert frozen.taps == (4,)  # default_taps(4)
    assert frozen.grid == GRID and frozen.width == D
    parent = nn.ModuleDict({"backbone": frozen, "head": nn.Linear(D, 1)})
    parent.train()
    assert parent["head"].training and frozen.training
    assert not any(m.training for m in vit.modules())
    assert not any(p.requires_grad for p in vit.parameters())
    with pytest.raises(ValueError, match="out of range"):
        FrozenBackbone(vit, taps=(5,))


# ---------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------


def build(depth: int = 4, taps=(2, 4), long_mode: str = "attention", seed: int = 0, backbone: str = "vit"):
    """Frozen backbone and adapters; for "tsm" a TSM-ResNet18 with its default taps, stages (2, 3, 4)."""
    module = tiny_vit(depth, seed) if backbone == "vit" else tiny_tsm(seed)
    cfg = LoSAConfig(reduction=4, short_window=2, num_heads=4, long_mode=long_mode, dilations=(1, 2))
    frozen = FrozenBackbone(module, taps=taps if backbone == "vit" else None, grid=GRID, micro_batch=2)
    torch.manual_seed(seed + 100)
    adapters = LoSAAdapters(frozen.width, len(frozen.taps), cfg, frozen.tap_widths, grid=GRID)
    return frozen, adapters


def positions(frozen: FrozenBackbone, n: int = N_CLIPS) -> int:
    return n * FRAMES // frozen.frames_per_position


def run(frozen: FrozenBackbone, adapters: LoSAAdapters, x: torch.Tensor, mask=None) -> torch.Tensor:
    tapped, last = frozen(x)  # [T', L, g*g, D], [T', g*g, D]
    return adapters(tapped[None], last[None], mask)  # [1, T', D]


@pytest.mark.parametrize("backbone", ["vit", "tsm"])
def test_initial_output_is_head_only_transfer_exactly(backbone):
    frozen, adapters = build(backbone=backbone)
    x = clips()
    tapped, last = frozen(x)
    mask = torch.ones(1, tapped.shape[0], dtype=torch.bool)
    mask[0, -2:] = False
    fused = adapters(tapped[None], last[None], mask)
    assert fused.shape == (1, positions(frozen), frozen.width)
    assert torch.equal(fused, last[None].mean(dim=2))


@pytest.mark.parametrize("long_mode,backbone", [("attention", "vit"), ("dilated", "vit"), ("attention", "tsm")])
def test_gradients_reach_every_adapter_parameter_and_no_backbone_parameter(long_mode, backbone):
    frozen, adapters = build(long_mode=long_mode, backbone=backbone)
    with torch.no_grad():
        adapters.fusion.scale.normal_()  # the zero-initialised scale blocks gradients upstream of it
        adapters.fusion.tap_logits.normal_()
    x = clips()
    mask = torch.ones(1, positions(frozen), dtype=torch.bool)
    mask[0, -1] = False
    fused = run(frozen, adapters, x, mask)
    target = torch.randn(fused.shape, generator=torch.Generator().manual_seed(3))
    ((fused - target) ** 2).mean().backward()
    for name, p in adapter_params(adapters).items():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name
    assert all(p.grad is None for p in frozen.parameters())


def test_layout_read_sees_where_things_are_and_trains_from_the_first_step():
    """Two positions whose grid cells hold the same tokens in another order have the same
    spatial mean (head-only transfer cannot tell them apart); at initialisation LoSA returns
    that mean for both, the layout read gets a gradient from the first backward pass, and
    once it has moved the two positions differ."""
    cfg = LoSAConfig(reduction=2)
    adapters = LoSAAdapters(D, 2, cfg, grid=GRID)
    g = torch.Generator().manual_seed(4)
    tapped = torch.randn(1, 6, 2, GRID * GRID, D, generator=g)
    last = torch.randn(1, 6, GRID * GRID, D, generator=g)
    last[0, 3] = last[0, 2].flip(0)  # position 3: position 2's cells in reverse order
    fused = adapters(tapped, last)
    torch.testing.assert_close(fused[0, 3], fused[0, 2])  # only the mean reaches the output
    fused.square().mean().backward()
    assert adapters.fusion.layout.weight.grad.abs().max() > 0
    assert adapters.fusion.up.weight.grad.abs().max() == 0  # the adapters' path waits for the scale
    with torch.no_grad():
        adapters.fusion.layout.weight.normal_(0, 0.02)
        moved = adapters(tapped, last)
    assert (moved[0, 3] - moved[0, 2]).abs().max() > 1e-3


def _saved_bytes(depth: int, taps) -> tuple[int, list[tuple[int, ...]]]:
    """Bytes and shapes of every tensor autograd saves during frozen pass + adapters."""
    frozen, adapters = build(depth=depth, taps=taps)
    shapes, sizes = [], []

    def pack(t):
        shapes.append(tuple(t.shape))
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        tapped, last = frozen(clips())
        assert not shapes, "the frozen pass saved tensors for backward"
        adapters(tapped[None], last[None])
    return sum(sizes), shapes


def test_no_backbone_activation_is_saved_for_backward():
    shallow, shapes = _saved_bytes(depth=2, taps=(1, 2))
    deep, _ = _saved_bytes(depth=6, taps=(3, 6))
    assert shallow == deep > 0  # saved memory does not grow with the backbone's depth
    tokens = T_CLIP * H_TOK * H_TOK
    for shape in shapes:
        assert shape[-3:] != (H_TOK, H_TOK, D), shape  # [*, T', h, w, D]
        assert shape[-2:] != (tokens, D), shape  # [*, N_tokens, D]
        assert shape[-2:] != (N_CLIPS * tokens, D), shape


def _masked_pair(T: int = 11, valid: int = 7, seed: int = 5):
    """The same valid prefix twice, different garbage after it, and the truncated input."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(2, T, GRID * GRID, D, generator=g)
    b = a.clone()
    b[1, valid:] = 100.0 * torch.randn(T - valid, GRID * GRID, D, generator=g)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, valid:] = False
    return a, b, mask, valid


@pytest.mark.parametrize("long_mode", ["attention", "dilated"])
def test_masked_positions_do_not_influence_valid_outputs(long_mode):
    cfg = LoSAConfig(reduction=2, short_window=2, long_mode=long_mode, dilations=(1, 2))
    torch.manual_seed(0)
    short, long = ShortRangeAdapter(D, cfg, grid=GRID).eval(), LongRangeAdapter(D, cfg).eval()
    a, b, mask, valid = _masked_pair()
    with torch.no_grad():
        for adapter, fa, fb, ft in (
            (short, short(a, mask), short(b, mask), short(a[1:, :valid], mask[1:, :valid])),
            (long, long(a.mean(2), mask), long(b.mean(2), mask), long(a[1:, :valid].mean(2), mask[1:, :valid])),
        ):
            name = type(adapter).__name__
            assert fa.shape == (2, a.shape[1], D // 2), name
            torch.testing.assert_close(fa[1, :valid], fb[1, :valid], atol=1e-6, rtol=0, msg=name)
            # ... and equal the outputs on the unpadded sequence.
            torch.testing.assert_close(fa[1, :valid], ft[0], atol=1e-5, rtol=1e-5, msg=name)
            assert torch.equal(fb[1, valid:], torch.zeros_like(fb[1, valid:])), name
            assert torch.isfinite(fb).all(), name


def test_fully_padded_sequence_stays_finite():
    frozen, adapters = build()
    with torch.no_grad():
        adapters.fusion.scale.fill_(1.0)
        tapped, last = frozen(clips(1))
        mask = torch.zeros(1, T_CLIP, dtype=torch.bool)
        fused = adapters(tapped[None], last[None], mask)
    assert torch.equal(fused, last[None].mean(dim=2))  # padded positions: pooled features only


def test_dilated_mode_runs_and_covers_the_dilation_stack():
    cfg = LoSAConfig(reduction=2, long_mode="dilated", long_layers=2, dilations=(1, 2, 4))
    adapters = LoSAAdapters(D, 3, cfg, grid=1)
    assert len(adapters.long[0].layers) == 6
    with torch.no_grad():
        adapters.fusion.scale.fill_(1.0)
    tapped, last = torch.randn(2, 20, 3, 1, D), torch.randn(2, 20, 1, D)
    fused = adapters(tapped, last)
    assert fused.shape == (2, 20, D) and torch.isfinite(fused).all()
    assert not torch.allclose(fused, last.mean(dim=2))


@pytest.mark.parametrize("kernel, reaches", [(None, True), (3, False)])
def test_short_range_conv_spans_the_neighbourhood_by_default(kernel, reaches):
    # The conv is the short-range adapter's only operator that can subtract one token from
    # another (motion); by default its temporal kernel covers the whole +-w neighbourhood.
    w = 3
    cfg = LoSAConfig(reduction=2, short_window=w, short_conv_kernel=kernel)
    assert cfg.conv_kernel == (2 * w + 1 if kernel is None else kernel)
    torch.manual_seed(0)
    short = ShortRangeAdapter(D, cfg, grid=GRID).eval()
    assert short.conv.kernel_size == (cfg.conv_kernel, 3, 3)
    with torch.no_grad():
        short.proj.weight.zero_()  # silence the attention: what is left is the conv path
        short.proj.bias.zero_()
        tap = torch.randn(1, 12, GRID * GRID, D)
        moved = tap.clone()
        moved[:, 4 + w] += torch.randn(GRID * GRID, D)  # w positions after the query at 4
        mask = torch.ones(1, 12, dtype=torch.bool)
        changed = not torch.allclose(short(tap, mask)[0, 4], short(moved, mask)[0, 4])
    assert changed == reaches


def test_config_validation_and_parameter_count():
    assert LoSAConfig(dilations=[1, 3]).dilations == (1, 3)
    assert FrozenPassConfig(taps=[24, 40]).taps == (24, 40)
    with torch.device("meta"):
        assert FrozenBackbone(vit_giant(), taps=FrozenPassConfig().taps).taps == (24, 28, 32, 36, 40)
    for bad in ({"long_mode": "lstm"}, {"dropout": 1.0}, {"dilations": (0,)}, {"long_layers": 0},
                {"short_window": -1}, {"short_conv_kernel": 4}, {"short_conv_kernel": 0}):
        with pytest.raises(ValueError):
            LoSAConfig(**bad)
    for bad in ({"grid": 0}, {"taps": ()}, {"taps": (3, 3)}, {"micro_batch": 0}, {"dtype": "fp16"}):
        with pytest.raises(ValueError):
            FrozenPassConfig(**bad)
    with pytest.raises(ValueError, match="num_heads"):
        LoSAAdapters(64, 1, LoSAConfig(reduction=4, num_heads=5))
    with pytest.raises(ValueError, match="name 2 taps; expected 3"):
        LoSAAdapters(64, 3, LoSAConfig(), tap_widths=(16, 64))
    with pytest.raises(ValueError, match="tap width 128 out of range"):
        LoSAAdapters(64, 2, LoSAConfig(), tap_widths=(128, 64))
    # ViT-g (D = 1408), 5 taps, r = 4: about 14 M trainable parameters in the adapters and
    # 8 M in the layout read (2x2 grid), ~2.2 % of the backbone.
    adapters = LoSAAdapters(1408, 5, LoSAConfig())
    count = sum(p.numel() for p in adapters.parameters())
    assert sum(p.numel() for p in adapters.fusion.layout.parameters()) == 4 * 1408 * 1408 + 1408
    assert 20e6 < count < 25e6


# ---------------------------------------------------------------------------------------
# TSM-ResNet backbone: stages as taps, one position per frame, narrower taps zero-padded
# ---------------------------------------------------------------------------------------


def test_frozen_taps_of_a_tsm_resnet_are_its_pooled_stages_zero_padded():
    tsm, x = tiny_tsm(), clips()
    taps = (4, 2, 3)
    tapped, last = frozen_taps(tsm, x, taps, GRID, micro_batch=2)
    assert tapped.shape == (N_CLIPS * FRAMES, 3, GRID * GRID, 512)  # one position per frame, D = stage 4's width
    assert last.shape == (N_CLIPS * FRAMES, GRID * GRID, 512)
    with torch.no_grad():
        for n in range(N_CLIPS):
            tokens, stages = tsm.forward_taps(x[n:n + 1], taps=taps)  # [1, F, h, w, 512]
            rows = slice(n * FRAMES, (n + 1) * FRAMES)
            for i, (stage, width) in enumerate(zip(taps, (512, 128, 256))):
                torch.testing.assert_close(tapped[rows, i, :, :width], pool_tokens(stages[stage], GRID)[0])
                assert torch.equal(tapped[rows, i, :, width:], torch.zeros_like(tapped[rows, i, :, width:]))
            torch.testing.assert_close(last[rows], pool_tokens(tokens, GRID)[0])
    torch.testing.assert_close(tapped[:, 0], last)


def test_frozen_tsm_resnet_defaults_widths_and_eval_mode():
    tsm = tiny_tsm()
    frozen = FrozenBackbone(tsm, grid=GRID, micro_batch=2)
    assert frozen.taps == (2, 3, 4) and frozen.tap_widths == (128, 256, 512)
    assert frozen.width == 512 and frozen.frames_per_position == 1
    before = frozen(clips(1))
    nn.ModuleDict({"backbone": frozen}).train()
    assert not any(m.training for m in tsm.modules())  # BatchNorm keeps its running statistics
    for a, b in zip(before, frozen(clips(1))):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"stage numbers in 1\.\.4"):
        FrozenBackbone(tsm, taps=(5,))
    with pytest.raises(TypeError, match="VisionTransformer or a TSMResNet"):
        FrozenBackbone(nn.Linear(3, 3))


def test_padded_channels_of_narrow_taps_have_no_influence():
    cfg = LoSAConfig(reduction=4, short_window=2, num_heads=4)
    widths = (16, 32, D)
    torch.manual_seed(0)
    adapters = LoSAAdapters(D, len(widths), cfg, widths, grid=GRID).eval()
    with torch.no_grad():
        adapters.fusion.scale.normal_()
        adapters.fusion.tap_logits.normal_()
    g = torch.Generator().manual_seed(7)
    tapped = torch.randn(2, 9, len(widths), GRID * GRID, D, generator=g)
    last = torch.randn(2, 9, GRID * GRID, D, generator=g)
    padded, garbage = tapped.clone(), tapped.clone()
    for i, width in enumerate(widths):
        padded[:, :, i, :, width:] = 0.0
        garbage[:, :, i, :, width:] = 100.0 * torch.randn(garbage[:, :, i, :, width:].shape, generator=g)
    with torch.no_grad():
        fused = adapters(padded, last)
        assert not torch.allclose(fused, last.mean(dim=2))  # the adapters do contribute
        assert torch.equal(adapters(garbage, last), fused)
        real = padded.clone()
        real[:, :, 0, :, widths[0] - 1] += 1.0  # the last real channel of the narrowest tap does count
        assert not torch.allclose(adapters(real, last), fused)
