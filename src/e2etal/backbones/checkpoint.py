"""The one place where foreign backbone checkpoints are read and converted.

`load_backbone_checkpoint(model, path)` loads a file into a `VisionTransformer` or a
`TSMResNet`; `vit_from_checkpoint(path)` first builds the ViT the file describes.
Nothing here runs inside `forward`.

Reading. `.safetensors` files are read with safetensors; anything else with
`torch.load(map_location="cpu", weights_only=True)` (no arbitrary unpickling;
`argparse.Namespace`, which training scripts store beside the weights, is allowed).
The state dict is the entry `model`, else `module`, else `state_dict` (mmengine /
OpenTAD), else the file's top-level dict.

ViT layouts understood (all converted to the official VideoMAEv2 names of `vit.py`):

* official VideoMAE / VideoMAEv2 (`patch_embed.proj`, `blocks.N.attn.qkv`, ...);
  wrapper prefixes `module.` and `_orig_mod.` are stripped wherever they appear at the
  front; for `backbone.` and then `encoder.`, when some keys carry the prefix only those
  keys are kept (so a detector's neck/head or a pretraining decoder is left out);
* mmaction2 / OpenTAD (`backbone.patch_embed.projection`, `mlp.layers.0.0`,
  `mlp.layers.1`, a stored sinusoid `pos_embed`; `cls_head.*` falls outside `backbone.`);
* Hugging Face `transformers` VideoMAE (`videomae.embeddings.patch_embeddings.projection`,
  `videomae.encoder.layer.N.attention.attention.{query,key,value}`, `q_bias`, `v_bias`,
  `attention.output.dense`, `intermediate.dense`, `output.dense`, `layernorm_before`,
  `layernorm_after`, `fc_norm`, `videomae.layernorm`, `classifier`).

Heads. `head.*` (HF `classifier.*`) is loaded when the model has a head, else dropped.

Final norm. Fine-tuned checkpoints (the released VideoMAEv2 ones, VideoMAE v1 with mean
pooling) have `fc_norm`, applied to the mean of the last tokens. Pretraining checkpoints
and v1 models without mean pooling have `norm` instead, a LayerNorm applied to every
token (before the decoder, in pretraining). When a file has `norm` and no `fc_norm`,
its `norm` weights become `fc_norm`, with a warning: `clip_features` is then
LayerNorm(mean of tokens) with those weights -- not identical to mean(LayerNorm(tokens)),
but the closest read-out this model has. The tapped and last-layer token maps (what
LoSA reads) do not depend on this norm.

Position embeddings. The table is fixed and never loaded. A stored `pos_embed` (mmaction
keeps it as a buffer) is checked against the sinusoid and dropped; a learned one is an
error, because this model cannot represent it.

Anything still missing, unexpected or of the wrong shape is a `ValueError` naming the
file and listing the keys.

TSM-ResNet layouts: torchvision ResNet names (`fc` optional) and the official TSM
release (`module.base_model.*`, `conv1.net.*` for the shifted conv, `new_fc.*`).
`num_batches_tracked` entries may be absent (older torchvision files).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from e2etal.backbones.tsm_resnet import TSMResNet
from e2etal.backbones.vit import HEADS_BY_WIDTH, VisionTransformer, sinusoid_table

__all__ = [
    "canonical_resnet_state_dict",
    "canonical_vit_state_dict",
    "infer_vit_config",
    "load_backbone_checkpoint",
    "read_checkpoint",
    "vit_from_checkpoint",
]

_SHOW = 20  # keys listed per category in error messages


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a checkpoint file and return its (still foreign-named) state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    try:
        with _allow_namespace():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError and friends; re-raised naming the file
        raise ValueError(
            f"{path}: cannot be read as a weights-only PyTorch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); expected a file saved with torch.save holding "
            "tensors (re-save just the state dict if it stores other Python objects)"
        ) from None
    return _unwrap(obj, path)


def _allow_namespace() -> contextlib.AbstractContextManager:
    # torch < 2.5 has no safe_globals; such files then fail with the error below.
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    return safe_globals([argparse.Namespace]) if safe_globals else contextlib.nullcontext()


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    for key in ("model", "module", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(
            f"{path}: expected a state dict of tensors (under 'model', 'module', 'state_dict' or "
            f"at the top level); {len(bad)} entries are not tensors: {_first(bad)}"
        )
    return dict(obj)


# ---------------------------------------------------------------------------------------
# ViT
# ---------------------------------------------------------------------------------------

_HF_PATCH_KEY = "embeddings.patch_embeddings.projection.weight"

# mmaction2 / OpenTAD name -> official name (applied as substring replacements).
_MMACTION_RENAMES = (
    ("patch_embed.projection.", "patch_embed.proj."),
    (".mlp.layers.0.0.", ".mlp.fc1."),
    (".mlp.layers.1.", ".mlp.fc2."),
)

_HF_NOT_ENCODER = ("decoder.", "encoder_to_decoder.")

# Hugging Face per-layer name -> official per-block name.
_HF_LAYER_RENAMES = {
    "attention.attention.q_bias": "attn.q_bias",
    "attention.attention.v_bias": "attn.v_bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "intermediate.dense.weight": "mlp.fc1.weight",
    "intermediate.dense.bias": "mlp.fc1.bias",
    "output.dense.weight": "mlp.fc2.weight",
    "output.dense.bias": "mlp.fc2.bias",
    "layernorm_before.weight": "norm1.weight",
    "layernorm_before.bias": "norm1.bias",
    "layernorm_after.weight": "norm2.weight",
    "layernorm_after.bias": "norm2.bias",
}


def _strip_everywhere(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def _select(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keep only the keys under `prefix` (stripped) when there are any."""
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _from_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    state = _strip_everywhere(state, "videomae.")
    out: dict[str, Tensor] = {}
    qkv: dict[int, dict[str, Tensor]] = {}
    layer_re = re.compile(r"encoder\.layer\.(\d+)\.(.+)")
    for key, value in state.items():
        m = layer_re.fullmatch(key)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            part = re.fullmatch(r"attention\.attention\.(query|key|value)\.weight", rest)
            if part:
                qkv.setdefault(i, {})[part.group(1)] = value
            else:
                out[f"blocks.{i}.{_HF_LAYER_RENAMES.get(rest, 'hf.' + rest)}"] = value
        elif key.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("layernorm."):
            out["norm." + key[len("layernorm.") :]] = value
        elif key.startswith("classifier."):
            out["head." + key[len("classifier.") :]] = value
        elif key.startswith(_HF_NOT_ENCODER) or key in ("mask_token", "embeddings.position_embeddings"):
            continue  # pretraining decoder and the sinusoid table: not encoder weights
        else:
            out[key] = value  # fc_norm.* maps to itself; anything else is reported as unexpected
    for i, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            out.update({f"blocks.{i}.hf.attention.attention.{n}.weight": w for n, w in parts.items()})
            continue
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat((parts["query"], parts["key"], parts["value"]), dim=0)
    return out


def canonical_vit_state_dict(
    state: Mapping[str, Tensor], path: str | os.PathLike = "<state dict>"
) -> dict[str, Tensor]:
    """Convert a ViT state dict of any understood layout to the official VideoMAEv2 names.

    Keeps `head.*` (if present) and `norm.*`/`fc_norm.*` as found; `load_backbone_checkpoint`
    decides about those against the model. A stored sinusoid `pos_embed` is dropped.
    """
    state = dict(state)
    for prefix in ("module.", "_orig_mod."):
        state = _strip_everywhere(state, prefix)
    if any(k.endswith(_HF_PATCH_KEY) for k in state):
        return _from_hf(state)
    state = _select(state, "backbone.")
    state = _select(state, "encoder.")
    for old, new in _MMACTION_RENAMES:
        state = {k.replace(old, new): v for k, v in state.items()}
    pos_embed = state.pop("pos_embed", None)
    if pos_embed is not None:
        _check_sinusoid(pos_embed, path)
    return state


def _check_sinusoid(pos_embed: Tensor, path: str | os.PathLike) -> None:
    table = pos_embed.reshape(-1, pos_embed.shape[-1]).double()  # [N, D]
    expected = sinusoid_table(*table.shape)
    err = (table - expected).abs().max().item()
    if err > 1e-3:
        raise ValueError(
            f"{path}: 'pos_embed' {tuple(pos_embed.shape)} is not the fixed sinusoid table (max "
            f"difference {err:.3g}); expected no pos_embed or the sinusoid -- learned position "
            "embeddings are not supported by e2etal's VisionTransformer"
        )


def infer_vit_config(state: Mapping[str, Tensor], path: str | os.PathLike = "<state dict>") -> dict[str, Any]:
    """Read width, depth, patch/tubelet size, MLP width and q/v-bias use from a canonical state dict.

    Returns keyword arguments for `VisionTransformer` (without `num_heads`,
    `img_size`, `num_frames`, which weights alone do not determine).
    """
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 5:
        raise ValueError(
            f"{path}: no Conv3d 'patch_embed.proj.weight' [D, 3, tubelet, p, p] found after conversion; "
            f"is this a VideoMAE / VideoMAEv2 checkpoint? first keys: {_first(sorted(state))}"
        )
    embed_dim, in_chans, tubelet, p_h, p_w = proj.shape
    if p_h != p_w:
        raise ValueError(f"{path}: non-square patch {p_h}x{p_w} in 'patch_embed.proj.weight'")
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not blocks or blocks != list(range(len(blocks))):
        raise ValueError(f"{path}: expected blocks numbered 0..N-1, found {_first([str(b) for b in blocks])}")
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise ValueError(f"{path}: missing 'blocks.0.mlp.fc1.weight' (needed for the MLP width)")
    return {
        "embed_dim": int(embed_dim),
        "depth": len(blocks),
        "patch_size": int(p_h),
        "tubelet_size": int(tubelet),
        "in_chans": int(in_chans),
        "mlp_dim": int(fc1.shape[0]),
        "qkv_bias": "blocks.0.attn.q_bias" in state,
    }


def vit_from_checkpoint(path: str | os.PathLike, **overrides: Any) -> VisionTransformer:
    """Build the `VisionTransformer` a checkpoint describes and load it.

    Width, depth, patch and tubelet size, MLP width and q/v biases come from the weights.
    `num_heads` comes from `overrides`, else a Hugging Face `config.json` beside the file,
    else the released sizes (384: 6, 768: 12, 1024/1280/1408: 16). `img_size` and
    `num_frames` (the grid the position table was trained at) default to 224 and 16.
    """
    path = Path(path)
    state = canonical_vit_state_dict(read_checkpoint(path), path)
    config = infer_vit_config(state, path)
    if "num_heads" not in overrides:
        heads = _hf_num_heads(path) or HEADS_BY_WIDTH.get(config["embed_dim"])
        if heads is None:
            raise ValueError(
                f"{path}: width {config['embed_dim']} is not a released VideoMAE size "
                f"({sorted(HEADS_BY_WIDTH)}); pass num_heads= explicitly"
            )
        config["num_heads"] = heads
    config.update(overrides)
    model = VisionTransformer(**config)
    _load_vit(model, state, path)
    return model


def _hf_num_heads(path: Path) -> int | None:
    config = path.parent / "config.json"
    if not config.is_file():
        return None
    try:
        heads = json.loads(config.read_text(encoding="utf-8")).get("num_attention_heads")
    except (json.JSONDecodeError, AttributeError):
        return None
    return int(heads) if heads else None


def _load_vit(model: VisionTransformer, state: dict[str, Tensor], path: str | os.PathLike) -> None:
    state = dict(state)
    if model.head is None:
        for key in [k for k in state if k.startswith("head.")]:
            del state[key]
    norm_keys = [k for k in state if k.startswith("norm.")]
    if norm_keys and not any(k.startswith("fc_norm.") for k in state):
        warnings.warn(
            f"{path}: has a per-token final 'norm' and no 'fc_norm' (a pretraining checkpoint?); "
            "using its weights as fc_norm on the mean-pooled feature",
            stacklevel=3,
        )
        for key in norm_keys:
            state["fc_norm." + key[len("norm.") :]] = state.pop(key)
    _load_exact(model, state, path, fill_ok=())


# ---------------------------------------------------------------------------------------
# TSM-ResNet
# ---------------------------------------------------------------------------------------


def canonical_resnet_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert a ResNet / TSM state dict to torchvision names (`fc` / `new_fc` kept as `fc`)."""
    state = dict(state)
    for prefix in ("module.", "_orig_mod."):
        state = _strip_everywhere(state, prefix)
    state = _select(state, "backbone.")
    state = _strip_everywhere(state, "base_model.")  # official TSM release
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.replace(".conv1.net.", ".conv1.")  # official TSM wraps the shifted conv
        if key.startswith("new_fc."):
            key = "fc." + key[len("new_fc.") :]
        out[key] = value
    return out


def _load_resnet(model: TSMResNet, state: dict[str, Tensor], path: str | os.PathLike) -> None:
    state = dict(state)
    if model.fc is None:
        for key in [k for k in state if k.startswith("fc.")]:
            del state[key]
    _load_exact(model, state, path, fill_ok=("num_batches_tracked",))


# ---------------------------------------------------------------------------------------
# Shared
# ---------------------------------------------------------------------------------------


def load_backbone_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint file into `model` (a `VisionTransformer` or `TSMResNet`), exactly.

    Raises `ValueError` naming the file and listing missing, unexpected and mis-shaped
    keys when the converted state dict does not match the model one-to-one.
    """
    path = Path(path)
    raw = read_checkpoint(path)
    if isinstance(model, VisionTransformer):
        _load_vit(model, canonical_vit_state_dict(raw, path), path)
    elif isinstance(model, TSMResNet):
        _load_resnet(model, canonical_resnet_state_dict(raw), path)
    else:
        raise TypeError(
            f"load_backbone_checkpoint: expected a VisionTransformer or TSMResNet, got {type(model).__name__}"
        )


def _load_exact(model: nn.Module, state: dict[str, Tensor], path: str | os.PathLike, fill_ok: tuple[str, ...]) -> None:
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith(fill_ok))
    unexpected = sorted(k for k in state if k not in own)
    mis_shaped = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    )
    if missing or unexpected or mis_shaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_first(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_first(unexpected)}")
        if mis_shaped:
            parts.append(f"{len(mis_shaped)} with the wrong shape: {_first(mis_shaped)}")
        raise ValueError(
            f"{path}: checkpoint does not match {type(model).__name__} "
            f"({len(own)} tensors expected, {len(state)} after conversion); " + "; ".join(parts)
        )
    for key in own:
        if key not in state:  # only `fill_ok` entries reach here
            state[key] = own[key]
    model.load_state_dict(state, strict=True)


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return f"[{shown}{', ...' if len(keys) > _SHOW else ''}]"
