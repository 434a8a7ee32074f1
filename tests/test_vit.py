"""VideoMAE / VideoMAEv2 ViT: forward against a hand-written reference, checkpoint layouts."""

import argparse
import json
import math
import pathlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from e2etal.backbones import (
    default_taps,
    load_backbone_checkpoint,
    position_table,
    sinusoid_table,
    vit_base,
    vit_from_checkpoint,
    vit_giant,
    vit_huge,
    vit_large,
    vit_small,
)
from e2etal.backbones.vit import VisionTransformer


# Tiny model: 4 frames at 32 px, patch 8, tubelet 2 -> token grid (2, 4, 4).
D, DEPTH, HEADS, P, TUB, MLP, FRAMES, PX, CLASSES = 64, 3, 4, 8, 2, 96, 4, 32, 5
GRID = (FRAMES // TUB, PX // P, PX // P)


def tiny(**kw) -> VisionTransformer:
    args = dict(img_size=PX, patch_size=P, num_frames=FRAMES, tubelet_size=TUB, embed_dim=D, depth=DEPTH,
                num_heads=HEADS, mlp_dim=MLP)
    return VisionTransformer(**{**args, **kw})


def official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the released VideoMAEv2 layout, written from the documented key list."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, base=0.0):
        return base + 0.1 * torch.randn(*shape, generator=g)

    st = {"patch_embed.proj.weight": r(D, 3, TUB, P, P), "patch_embed.proj.bias": r(D)}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        st.update({
            b + "norm1.weight": r(D, base=1.0), b + "norm1.bias": r(D),
            b + "attn.qkv.weight": r(3 * D, D), b + "attn.q_bias": r(D), b + "attn.v_bias": r(D),
            b + "attn.proj.weight": r(D, D), b + "attn.proj.bias": r(D),
            b + "norm2.weight": r(D, base=1.0), b + "norm2.bias": r(D),
            b + "mlp.fc1.weight": r(MLP, D), b + "mlp.fc1.bias": r(MLP),
            b + "mlp.fc2.weight": r(D, MLP), b + "mlp.fc2.bias": r(D),
        })
    st.update({"fc_norm.weight": r(D, base=1.0), "fc_norm.bias": r(D),
               "head.weight": r(CLASSES, D), "head.bias": r(CLASSES)})
    return st


# ---------------------------------------------------------------- independent reference


def np_sinusoid(n: int, d: int) -> np.ndarray:
    table = np.array([[pos / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for pos in range(n)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return table


def ref_layernorm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def reference(st, x, pos=None):
    """Float64 forward written out by hand; returns (per-layer tokens [B, N, D], feature [B, D])."""
    w = {k: v.double() for k, v in st.items()}
    x = x.double()
    B, C, T, H, W = x.shape
    t, h, wd = T // TUB, H // P, W // P
    # tubelets in (t, h, w) order, each flattened as (c, dt, dy, dx) like the Conv3d kernel
    patches = x.reshape(B, C, t, TUB, h, P, wd, P).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, t * h * wd, -1)
    z = patches @ w["patch_embed.proj.weight"].reshape(D, -1).T + w["patch_embed.proj.bias"]
    if pos is None:
        pos = torch.from_numpy(np_sinusoid(t * h * wd, D))
    z = z + pos
    hd = D // HEADS
    layers = []
    for i in range(DEPTH):
        b = f"blocks.{i}."
        y = ref_layernorm(z, w[b + "norm1.weight"], w[b + "norm1.bias"])
        wq, wk, wv = w[b + "attn.qkv.weight"].split(D)
        q = y @ wq.T + w[b + "attn.q_bias"]
        k = y @ wk.T
        v = y @ wv.T + w[b + "attn.v_bias"]
        q, k, v = (a.reshape(B, -1, HEADS, hd).transpose(1, 2) for a in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        attn = torch.exp(scores - scores.amax(-1, keepdim=True))
        attn = attn / attn.sum(-1, keepdim=True)
        o = (attn @ v).transpose(1, 2).reshape(B, -1, D)
        z = z + o @ w[b + "attn.proj.weight"].T + w[b + "attn.proj.bias"]
        y = ref_layernorm(z, w[b + "norm2.weight"], w[b + "norm2.bias"])
        y = y @ w[b + "mlp.fc1.weight"].T + w[b + "mlp.fc1.bias"]
        y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
        z = z + y @ w[b + "mlp.fc2.weight"].T + w[b + "mlp.fc2.bias"]
        layers.append(z)
    feat = ref_layernorm(z.mean(1), w["fc_norm.weight"], w["fc_norm.bias"])
    return layers, feat


@pytest.fixture(scope="module")
def state():
    return official_state()


@pytest.fixture(scope="module")
def video():
    return torch.randn(2, 3, FRAMES, PX, PX, generator=torch.Generator().manual_seed(1))


def loaded(state) -> VisionTransformer:
    model = tiny().eval()
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})
    return model


# ---------------------------------------------------------------- forward


def test_sinusoid_table_matches_float64_formula():
    ours = sinusoid_table(50, 24)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), np_sinusoid(50, 24), rtol=0, atol=1e-12)


def test_forward_matches_reference(state, video):
    model = loaded(state)
    with torch.no_grad():
        last, taps = model(video, taps=(1, 2, 3))
        feat = model.clip_features(video)
    layers, ref_feat = reference(state, video)
    B, (t, h, w) = video.shape[0], GRID
    assert last.shape == (B, t, h, w, D) and last.dtype == torch.float32
    torch.testing.assert_close(last.double(), layers[-1].view(B, t, h, w, D), atol=1e-5, rtol=1e-5)
    for layer in (1, 2, 3):
        torch.testing.assert_close(taps[layer].double(), layers[layer - 1].view(B, t, h, w, D), atol=1e-5, rtol=1e-5)
    assert feat.shape == (B, D)
    torch.testing.assert_close(feat.double(), ref_feat, atol=1e-5, rtol=1e-5)


def test_position_table_is_not_in_state_dict(state):
    model = loaded(state)
    model(torch.zeros(1, 3, FRAMES, PX, PX))
    assert not any("pos" in k for k in model.state_dict())
    assert set(model.state_dict()) == {k for k in state if not k.startswith("head.")}


def test_taps_and_tap_fn(state, video):
    model = loaded(state)
    seen = []

    def pool(tokens):  # [B, T', h, w, D] -> [B, T', D]
        seen.append(tuple(tokens.shape))
        return tokens.mean(dim=(2, 3))

    with torch.no_grad():
        last, taps = model(video, taps=[3, 1], tap_fn=pool)
    assert sorted(taps) == [1, 3]
    assert seen == [(2, *GRID, D)] * 2
    assert taps[1].shape == (2, GRID[0], D)
    torch.testing.assert_close(taps[3], last.mean(dim=(2, 3)))
    assert model(video, taps=())[1] == {}
    for bad in (0, DEPTH + 1):
        with pytest.raises(ValueError, match="1-based"):
            model(video, taps=[bad])


def test_default_taps():
    assert default_taps(40) == (24, 28, 32, 36, 40)
    assert default_taps(24) == (16, 20, 24)
    assert default_taps(12) == (10, 12)
    assert default_taps(3) == (3,)


def test_position_table_other_grids():
    base = sinusoid_table(2 * 4 * 4, D).view(2, 4, 4, D)
    assert torch.equal(position_table(GRID, GRID, D), base.reshape(-1, D))
    # time 2 -> 4, linear with align_corners=False: sources -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    t4 = position_table((4, 4, 4), GRID, D).view(4, 4, 4, D)
    expect = torch.stack([base[0], 0.75 * base[0] + 0.25 * base[1], 0.25 * base[0] + 0.75 * base[1], base[1]])
    torch.testing.assert_close(t4, expect, atol=1e-12, rtol=0)
    # width 4 -> 6, bicubic (A = -0.75, align_corners=False, clamped indices); height unchanged
    A = -0.75

    def cubic(x):
        x = abs(x)
        if x <= 1:
            return ((A + 2) * x - (A + 3)) * x * x + 1
        return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A

    w6 = position_table((2, 4, 6), GRID, D).view(2, 4, 6, D)
    for j in range(6):
        src = (j + 0.5) * 4 / 6 - 0.5
        i0 = math.floor(src)
        frac = src - i0
        expect = sum(cubic(frac - o) * base[:, :, min(max(i0 + o, 0), 3)] for o in (-1, 0, 1, 2))
        torch.testing.assert_close(w6[:, :, j], expect, atol=1e-12, rtol=0)


def test_other_frame_counts_and_resolutions(state):
    model = loaded(state)
    x = torch.randn(1, 3, 6, 48, 32)  # grid (3, 6, 4)
    with torch.no_grad():
        last, _ = model(x)
    assert last.shape == (1, 3, 6, 4, D)
    pos = position_table((3, 6, 4), GRID, D)
    layers, _ = reference(state, x, pos=pos)
    torch.testing.assert_close(last.double().view(1, -1, D), layers[-1], atol=1e-5, rtol=1e-5)
    assert model.clip_features(torch.randn(2, 3, 2, 16, 16)).shape == (2, D)
    with pytest.raises(ValueError, match="tubelets"):
        model(torch.randn(1, 3, 5, 32, 32))


def test_grad_checkpointing_same_gradients(state, video):
    grads = []
    for flag in (False, True):
        model = loaded(state).train()
        model.grad_checkpointing = flag
        last, taps = model(video[:1], taps=(2,))
        (last.square().mean() + taps[2].mean()).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5)


def test_bf16_autocast(state, video):
    model = loaded(state)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feat = model.clip_features(video)
    ref = model.clip_features(video)
    assert torch.isfinite(feat).all()
    assert (feat.float() - ref).abs().max() < 0.1


def test_sizes():
    with torch.device("meta"):
        expected = {vit_small: (384, 12, 6, 1536, 16), vit_base: (768, 12, 12, 3072, 16),
                    vit_large: (1024, 24, 16, 4096, 16), vit_huge: (1280, 32, 16, 5120, 16),
                    vit_giant: (1408, 40, 16, 6144, 14)}
        for fn, (width, depth, heads, mlp, patch) in expected.items():
            m = fn()
            assert (m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads) == (width, depth, heads)
            assert m.blocks[0].mlp.fc1.out_features == mlp
            assert m.patch_embed.proj.weight.shape == (width, 3, 2, patch, patch)
            assert m.trained_grid == (8, 224 // patch, 224 // patch) and m.head is None


# ---------------------------------------------------------------- checkpoints


def assert_loaded(model, state):
    own = model.state_dict()
    for k, v in own.items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("wrapper", ["module", "model", None])
def test_official_layout_loads_exactly(tmp_path, state, wrapper):
    inner = {"_orig_mod." + k: v for k, v in state.items()}
    obj = {wrapper: inner, "epoch": 3} if wrapper else inner
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = tiny()
    load_backbone_checkpoint(model, path)
    assert_loaded(model, state)
    with_head = tiny(num_classes=CLASSES)
    load_backbone_checkpoint(with_head, path)
    assert_loaded(with_head, state)


def test_weights_only_with_args_namespace_and_safetensors(tmp_path, state):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": state, "args": argparse.Namespace(lr=1e-3, model="vit_giant")}, path)
    model = tiny()
    load_backbone_checkpoint(model, path)
    assert_loaded(model, state)
    st_path = tmp_path / "ckpt.safetensors"
    save_file(state, str(st_path))
    model = tiny()
    load_backbone_checkpoint(model, st_path)
    assert_loaded(model, state)


def test_arbitrary_pickle_is_refused(tmp_path, state):
    path = tmp_path / "evil.pth"
    torch.save({"model": state, "out_dir": pathlib.Path("runs")}, path)  # not an allow-listed type
    with pytest.raises(ValueError, match="evil.pth"):
        load_backbone_checkpoint(tiny(), path)


def test_vit_from_checkpoint_infers_size(tmp_path, state, video):
    path = tmp_path / "ckpt.pth"
    torch.save({"module": state}, path)
    model = vit_from_checkpoint(path, num_heads=HEADS, img_size=PX, num_frames=FRAMES).eval()
    size = (model.embed_dim, model.depth, model.patch_size, model.tubelet_size, model.mlp_dim)
    assert size == (D, DEPTH, P, TUB, MLP)
    assert model.head is None
    with torch.no_grad():
        feat = model.clip_features(video)
    torch.testing.assert_close(feat.double(), reference(state, video)[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="num_heads"):
        vit_from_checkpoint(path)


def test_mismatched_keys_are_listed(tmp_path, state):
    bad = dict(state)
    del bad["blocks.1.mlp.fc2.bias"]
    bad["blocks.0.attn.k_bias"] = torch.zeros(D)
    path = tmp_path / "broken.pth"
    torch.save({"model": bad}, path)
    with pytest.raises(ValueError) as err:
        load_backbone_checkpoint(tiny(), path)
    msg = str(err.value)
    assert "broken.pth" in msg and "1 missing" in msg and "1 unexpected" in msg
    assert "blocks.1.mlp.fc2.bias" in msg and "blocks.0.attn.k_bias" in msg

    bad = dict(state)
    bad["fc_norm.weight"] = torch.ones(D + 1)
    torch.save(bad, path)
    with pytest.raises(ValueError, match="fc_norm.weight: file \\(65,\\) vs model \\(64,\\)"):
        load_backbone_checkpoint(tiny(), path)


def test_pretrain_layout_uses_norm_as_fc_norm(tmp_path, state):
    enc = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm."))}
    obj = {"encoder." + k: v for k, v in enc.items()}
    obj["encoder.norm.weight"], obj["encoder.norm.bias"] = state["fc_norm.weight"], state["fc_norm.bias"]
    obj.update({"decoder.blocks.0.mlp.fc1.weight": torch.zeros(8, 8), "encoder_to_decoder.weight": torch.zeros(8, D),
                "mask_token": torch.zeros(1, 1, 8)})
    path = tmp_path / "pretrain.pth"
    torch.save({"model": obj}, path)
    model = tiny()
    with pytest.warns(UserWarning, match="fc_norm"):
        load_backbone_checkpoint(model, path)
    assert_loaded(model, state)


def test_mmaction_layout(tmp_path, state):
    def mm(k):
        k = k.replace("patch_embed.proj.", "patch_embed.projection.")
        return k.replace(".mlp.fc1.", ".mlp.layers.0.0.").replace(".mlp.fc2.", ".mlp.layers.1.")

    obj = {"backbone." + mm(k): v for k, v in state.items() if not k.startswith("head.")}
    obj["backbone.pos_embed"] = sinusoid_table(32, D).float()[None]
    obj["cls_head.fc_cls.weight"] = state["head.weight"]
    obj["cls_head.fc_cls.bias"] = state["head.bias"]
    path = tmp_path / "mmaction.pth"
    torch.save({"state_dict": obj, "meta": {"epoch": 1}}, path)
    model = tiny()
    load_backbone_checkpoint(model, path)
    assert_loaded(model, state)
    obj["backbone.pos_embed"] = torch.randn(1, 32, D)
    torch.save({"state_dict": obj}, path)
    with pytest.raises(ValueError, match="learned position"):
        load_backbone_checkpoint(tiny(), path)


def hf_state(state):
    """The official state renamed to Hugging Face transformers' VideoMAEForVideoClassification."""
    out = {
        "videomae.embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "videomae.embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "fc_norm.weight": state["fc_norm.weight"], "fc_norm.bias": state["fc_norm.bias"],
        "classifier.weight": state["head.weight"], "classifier.bias": state["head.bias"],
    }
    for i in range(DEPTH):
        b, L = f"blocks.{i}.", f"videomae.encoder.layer.{i}."
        q, k, v = state[b + "attn.qkv.weight"].split(D)
        out.update({
            L + "attention.attention.query.weight": q, L + "attention.attention.key.weight": k,
            L + "attention.attention.value.weight": v,
            L + "attention.attention.q_bias": state[b + "attn.q_bias"],
            L + "attention.attention.v_bias": state[b + "attn.v_bias"],
            L + "attention.output.dense.weight": state[b + "attn.proj.weight"],
            L + "attention.output.dense.bias": state[b + "attn.proj.bias"],
            L + "intermediate.dense.weight": state[b + "mlp.fc1.weight"],
            L + "intermediate.dense.bias": state[b + "mlp.fc1.bias"],
            L + "output.dense.weight": state[b + "mlp.fc2.weight"],
            L + "output.dense.bias": state[b + "mlp.fc2.bias"],
            L + "layernorm_before.weight": state[b + "norm1.weight"],
            L + "layernorm_before.bias": state[b + "norm1.bias"],
            L + "layernorm_after.weight": state[b + "norm2.weight"],
            L + "layernorm_after.bias": state[b + "norm2.bias"],
        })
    return out


def test_hugging_face_layout(tmp_path, state):
    folder = tmp_path / "videomae-tiny"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in hf_state(state).items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"num_attention_heads": HEADS, "hidden_size": D}))
    model = vit_from_checkpoint(folder / "model.safetensors", img_size=PX, num_frames=FRAMES, num_classes=CLASSES)
    assert model.num_heads == HEADS
    assert_loaded(model, state)
