"""Backbone presets by name, built with their weights, and what identifies those weights.

    backbone = build_backbone("vit-g", "vit_g_hybrid_pt_1200e_k710_ft.pth")
    backbone.module, backbone.checkpoint_sha256

A config names a preset in its `backbone:` section (`BackboneConfig`); the CLI's
`--backbone` takes the same names.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from e2etal.backbones.checkpoint import load_backbone_checkpoint
from e2etal.backbones.tsm_resnet import tsm_resnet18, tsm_resnet50
from e2etal.backbones.vit import vit_base, vit_giant, vit_huge, vit_large, vit_small, vit_tiny

__all__ = ["BACKBONES", "VIT_BACKBONES", "Backbone", "BackboneConfig", "build_backbone", "file_sha256", "module_sha256"]

# Presets: name -> constructor (random weights until a checkpoint is loaded).
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "vit-tiny": vit_tiny,
    "vit-s": vit_small,
    "vit-b": vit_base,
    "vit-l": vit_large,
    "vit-h": vit_huge,
    "vit-g": vit_giant,
    "tsm-r18": tsm_resnet18,
    "tsm-r50": tsm_resnet50,
}
VIT_BACKBONES = ("vit-s", "vit-b", "vit-l", "vit-h", "vit-g")  # the released VideoMAE / VideoMAEv2 sizes

_HASH_BLOCK_BYTES = 8 << 20


@dataclass
class BackboneConfig:
    """The `backbone:` section of an experiment config."""

    name: str = "vit-b"  # a preset of BACKBONES: a ViT (vit-*) or a TSM-ResNet (tsm-r18, tsm-r50)
    # Official VideoMAE/VideoMAEv2 (or HF) weights for a ViT, torchvision / official TSM
    # weights for a TSM-ResNet (read weights-only); None = random.
    checkpoint: str | None = None
    kwargs: dict = field(default_factory=dict)  # constructor overrides, e.g. a small ViT's depth

    def __post_init__(self) -> None:
        if self.name not in BACKBONES:
            raise ValueError(f"backbone.name: expected one of {', '.join(BACKBONES)}, got {self.name!r}")


@dataclass
class Backbone:
    """A backbone module with what identifies its weights: the checkpoint file's SHA-256,
    or without a checkpoint the SHA-256 of the state dict (and the seed that drew it, for
    a preset built with one)."""

    module: nn.Module
    name: str  # preset name, or the class name of a module given directly
    checkpoint: Path | None = None
    checkpoint_sha256: str | None = None  # of the checkpoint file, streamed
    seed: int | None = None  # random weights of a preset drawn with this seed (None: the global RNG)
    weights_sha256: str | None = None  # no checkpoint: `module_sha256` of the weights, once computed

    def load(self, checkpoint: str | os.PathLike) -> None:
        """Load official weights into the module (`load_backbone_checkpoint`, weights-only)
        and record the file's SHA-256."""
        path = Path(checkpoint)
        load_backbone_checkpoint(self.module, path)
        self.checkpoint = path
        self.checkpoint_sha256 = file_sha256(path)

    def weights_id(self) -> str:
        """The checkpoint file's SHA-256, else that of the weights in memory."""
        if self.checkpoint_sha256 is not None:
            return self.checkpoint_sha256
        if self.weights_sha256 is None:
            self.weights_sha256 = module_sha256(self.module)
        return self.weights_sha256


def build_backbone(
    name: str, checkpoint: str | os.PathLike | None = None, seed: int | None = None, **kwargs: Any
) -> Backbone:
    """Build a preset of `BACKBONES` (keyword arguments go to its constructor) and load
    `checkpoint` into it, recording the file's SHA-256.

    Without a checkpoint the weights are random: fine for benchmarks, meaningless features.
    They are drawn from the global RNG, or with `seed` from a generator seeded with it (the
    global RNG left as it was), so that the same seed gives the same weights; the seed is
    recorded in `Backbone.seed`.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    if seed is None:
        module = BACKBONES[name](**kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = BACKBONES[name](**kwargs)
    backbone = Backbone(module, name)
    if checkpoint is not None:
        backbone.load(checkpoint)
    else:
        backbone.seed = seed
    return backbone


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in blocks (a ViT-g checkpoint need not fit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def module_sha256(module: nn.Module) -> str:
    """SHA-256 of a state dict (names, dtypes, shapes, bytes): identifies in-memory weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, not a copy
    return digest.hexdigest()
