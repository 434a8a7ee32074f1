"""Feature extraction: videos -> one `[T, C]` float32 array of clip features per video.

This is the "frozen backbone" box of the data flow, run once over a dataset so a
feature-based head can train on the result (ActionFormer's layout: `<video stem>.npy`).
Either way below, a background thread decodes a video in chunks, cuts the stream into
micro-batches of clips keeping only the frames the next clips need, and decodes the next
micro-batch (and the next video) while the backbone runs on this one
(`e2etal.data.streaming.ClipStream`, which the tap cache reads too).

**Default** (`ExtractConfig()`), for long videos and any backbone:

* frames are decoded by `iter_frames` (at the native rate, or resampled to `fps`) and
  resized bilinearly to `size x size` without a crop by FFmpeg, on uint8, while it
  converts them to RGB;
* clips follow `ClipSampler`: clip i covers frames `[i * stride_frames,
  i * stride_frames + clip_frames)`, and the tail is covered by one more clip padded with
  the last frame, so a video shorter than one clip still gets one feature (with a
  warning naming it);
* a clip is RGB scaled to [0, 1]; ViTs get no mean/std (as VideoMAEv2's TAD features),
  TSM-ResNets the ImageNet mean/std they were trained with; bf16 on CUDA, fp32 on CPU;
* the feature of a clip is `fc_norm(mean of the last block's tokens)` for a ViT
  (`VisionTransformer.clip_features`), the per-frame pooled features averaged over
  the clip for a TSM-ResNet.

**Recipe `videomaev2-tad`** (`ExtractConfig(recipe="videomaev2-tad")`, `e2etal extract
--recipe videomaev2-tad`): the official VideoMAEv2 TAD extraction (`extract_tad_feature.py`)
step by step, to compare with the features its authors host (each step and where the
script does it: the comment block "The videomaev2-tad recipe" below):

* every frame decoded at its native size and rate;
* clip starts `range(0, num_frames - 15, 4)` (stride 16 for the script's FineAction
  setting): whole clips only, the tail is dropped, and a video shorter than 16 frames has
  no clip and is reported as failed;
* float32 / 255, then `F.interpolate(mode="bilinear", align_corners=False)` to 224 x 224;
* fp32, a VideoMAEv2 ViT built at 224 px and 16 frames, feature `fc_norm(mean of tokens)`.

Why the default differs: FFmpeg resizes while it converts from YUV, so a frame never
exists at its native size in RGB or as floats (a 1080p video needs the memory of a 224
px one), any frame rate can be asked for, and the last frames of a video are covered. The
recipe holds the native frames of one decode chunk as float32 (at most
`_RECIPE_CHUNK_BYTES`) and resizes each frame once; its memory stays bounded, its
decoding is slower at high resolution. The two differ in the tail clip (303 of the
lengths 1..399 frames get one more feature by default), in the resize filter (FFmpeg's
bilinear on uint8 vs torch's on floats: features differ by up to ~1% of their magnitude)
and, on CUDA, in the dtype. `docs/extraction.md` compares the two further.

In both, feature i is centred at `(i * stride_frames + clip_frames / 2) / fps` seconds
(for the recipe: clip i starts at frame 4i, centre `(4i + 8) / fps`). With native-rate
decoding of a variable-frame-rate file, `fps` in the sidecar is the stream's average rate
and the feature times are approximate.

Weights: a checkpoint is identified by its file's SHA-256; without one a preset's random
weights are drawn with `ExtractConfig.seed` and identified by the seed and the SHA-256 of
the state dict. A resumed job skips a video only when its sidecar records the same
weights and settings.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from e2etal.backbones.factory import BACKBONES, VIT_BACKBONES, Backbone, build_backbone
from e2etal.backbones.vit import VisionTransformer
from e2etal.data.streaming import ClipBatch, ClipStream, VideoEnd, VideoFailed, VideoStart
from e2etal.data.video import ClipSampler, VideoError, iter_frames, probe_video
from e2etal.engine.trainer import resolve_device
from e2etal.io import atomic_path, output_dir, read_json, write_json

__all__ = [
    "RECIPES",
    "ExtractConfig",
    "ExtractReport",
    "extract_features",
    "extract_video",
    "finished_with",
    "save_features",
    "videomaev2_tad_resize",
]

log = logging.getLogger(__name__)

# Extraction recipes that reproduce a published script step by step (`--recipe`).
VIDEOMAEV2_TAD = "videomaev2-tad"
RECIPES = (VIDEOMAEV2_TAD,)
# What `extract_tad_feature.py` fixes (where each comes from: "The videomaev2-tad recipe" below).
_TAD_SIZE = 224
_TAD_CLIP_FRAMES = 16
_TAD_STRIDES = {4: "THUMOS14", 16: "FINEACTION"}  # its `--data_set` choices
_TAD_GRID_FRAMES = 16  # `all_frames=16`
_TAD_TUBELET = 2

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}

SIDECAR_FORMAT = 2  # 2: seed, weights_sha256 of random presets, recipe
_DECODE_CHUNK_FRAMES = 64  # frames per `iter_frames` chunk
_RECIPE_CHUNK_BYTES = 256 << 20  # native frames of one chunk as float32, at most (at least one frame)


# ---------------------------------------------------------------------------------------
# Configuration and backbones


@dataclass
class ExtractConfig:
    fps: float | None = None  # resample to this rate; None = the video's own frames
    clip_frames: int = 16  # frames per clip
    stride_frames: int = 4  # frames between the starts of consecutive clips
    size: int = 224  # frames are resized to size x size (bilinear, no crop)
    micro_batch: int = 32  # clips per backbone call
    device: str = "auto"  # "auto" = cuda when available, else cpu; or "cpu", "cuda:1", ...
    dtype: str = "auto"  # "auto" = bf16 on CUDA, fp32 on CPU (fp32 with a recipe); or fp32, bf16, fp16
    seed: int = 0  # draws the random weights of a preset built without a checkpoint; unused otherwise
    recipe: str | None = None  # None = the default extraction; or one of RECIPES (module docstring)

    def __post_init__(self) -> None:
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be positive or None (native rate), got {self.fps}")
        for name in ("clip_frames", "stride_frames", "size", "micro_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.recipe is not None:
            self._check_recipe()

    def _check_recipe(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; expected one of {', '.join(RECIPES)} (or none)")
        conflicts = []
        if self.fps is not None:
            conflicts.append(f"fps {self.fps} (--fps; the recipe reads every native frame)")
        if self.size != _TAD_SIZE:
            conflicts.append(f"size {self.size} (--size; the recipe resizes to {_TAD_SIZE})")
        if self.clip_frames != _TAD_CLIP_FRAMES:
            conflicts.append(
                f"clip_frames {self.clip_frames} (--clip-frames; the recipe's clips have {_TAD_CLIP_FRAMES})"
            )
        if self.stride_frames not in _TAD_STRIDES:
            strides = " or ".join(f"{s} ({name})" for s, name in _TAD_STRIDES.items())
            conflicts.append(f"stride_frames {self.stride_frames} (--stride; the recipe's are {strides})")
        if self.dtype not in ("auto", "fp32"):
            conflicts.append(f"dtype {self.dtype} (--dtype; the recipe runs fp32)")
        if conflicts:
            raise ValueError(
                f"recipe {self.recipe!r} reproduces the official VideoMAEv2 TAD extraction and conflicts with "
                + "; ".join(conflicts) + ": drop those options or the recipe"
            )

    def sampler(self) -> ClipSampler:
        # The recipe keeps whole clips only: the official starts `range(0, n - 15, stride)`.
        return ClipSampler(clip_frames=self.clip_frames, stride_frames=self.stride_frames,
                           cover_tail=self.recipe is None)

    def resolve_device(self) -> torch.device:
        return resolve_device(self.device, "device")

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" and self.recipe is None else torch.float32
        return _DTYPES[self.dtype]


def _check_backbone(module: nn.Module, cfg: ExtractConfig) -> None:
    if not callable(getattr(module, "clip_features", None)):
        raise TypeError(
            f"backbone {type(module).__name__} has no clip_features(clips [B, 3, T, H, W]) -> [B, C]; "
            "expected a VisionTransformer, a TSMResNet or a module with the backbone interface "
            "(e2etal.backbones.layout)"
        )
    if cfg.recipe is not None:
        _check_recipe_backbone(module, cfg.recipe)
    # A patchified backbone (a ViT) takes whole patches and whole tubelets only.
    patch = getattr(module, "patch_size", 1)
    if cfg.size % patch:
        nearest = sorted({s for s in (cfg.size // patch * patch, (cfg.size // patch + 1) * patch) if s > 0})
        raise ValueError(
            f"size {cfg.size} is not a multiple of this ViT's patch size {patch}; "
            f"use {' or '.join(map(str, nearest))}"
        )
    tubelet = module.tap_layout().frames_per_position if callable(getattr(module, "tap_layout", None)) else 1
    if cfg.clip_frames % tubelet:
        raise ValueError(
            f"clip_frames {cfg.clip_frames} is not a multiple of this ViT's tubelet size {tubelet}"
        )


# ---------------------------------------------------------------------------------------
# The videomaev2-tad recipe
#
# Each step as OpenGVLab/VideoMAEv2 `extract_tad_feature.py` does it (commit 29eab1e), with
# where it is done there:
#
#   decode     `dataset/loader.py: get_video_loader` opens decord's `VideoReader(path,
#              num_threads=1)`: RGB24 frames at native size, `len(vr)` of them. Here:
#              `iter_frames` at native rate and size (PyAV; FFmpeg's swscale converts to RGB24
#              in both, not compared bit for bit: docs/extraction.md).
#   starts     `get_start_idx_range`: `range(0, num_frames - 15, 4)` for THUMOS14, stride 16
#              for FINEACTION. Here: `ClipSampler(cover_tail=False)` (`ExtractConfig.sampler`).
#   clip       `extract_feature`: `vr.get_batch(np.arange(start_idx, start_idx + 16))`.
#              Here: `stream_clips` indices.
#   to float   `to_normalized_float_tensor`: `vid.permute(3, 0, 1, 2).to(torch.float32) / 255`,
#              `[16, H, W, 3] -> [3, 16, H, W]`, no mean/std. Here: `videomaev2_tad_resize`.
#   resize     `resize` (the `Resize((224, 224))` transform): `F.interpolate(vid, size=(224,
#              224), mode="bilinear", align_corners=False)` on that 4-D tensor, on the CPU.
#              Here: `videomaev2_tad_resize`, in the decoding thread (CPU).
#   model      `extract_feature`: `create_model(args.model, img_size=224, all_frames=16,
#              tubelet_size=2, use_mean_pooling=True, ...)`, `model.eval()`, `model.cuda()`,
#              fp32 (no autocast), one clip per call under `torch.no_grad()`. Here:
#              `_check_recipe_backbone`, `ExtractConfig.resolve_dtype`; clips in micro-batches.
#   feature    `models/modeling_finetune.py: VisionTransformer.forward_features`:
#              `self.fc_norm(x.mean(1))` after the last block. Here:
#              `VisionTransformer.clip_features`.
#   output     one `[N, C]` `.npy` per video, row i = clip starting at frame `4 * i`.


def videomaev2_tad_resize(frames: Tensor, size: int = _TAD_SIZE) -> Tensor:
    """Native uint8 frames `[K, H, W, 3]` -> float32 `[K, size, size, 3]` in [0, 1], as
    `extract_tad_feature.py` turns a clip into the network's input.

    The script permutes a clip `[16, H, W, 3]` to `[3, 16, H, W]`, divides by 255 and calls
    `F.interpolate` on it as a batch of 3 images of 16 channels. Bilinear interpolation
    treats each (channel, frame) plane on its own, so the same calls on `[3, K, H, W]` give
    every frame the values it has in each clip that contains it, while each frame is
    resized once rather than once per clip (4 times at stride 4).
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise TypeError(f"expected uint8 frames [K, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    x = frames.permute(3, 0, 1, 2).to(torch.float32) / 255  # [3, K, H, W], the script's layout
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)  # [3, K, size, size]
    return x.permute(1, 2, 3, 0).contiguous()  # [K, size, size, 3]


def _check_recipe_backbone(module: nn.Module, recipe: str) -> None:
    if not isinstance(module, VisionTransformer):
        raise ValueError(
            f"recipe {recipe!r} runs a VideoMAEv2 ViT (backbone {', '.join(VIT_BACKBONES)} or a "
            f"VisionTransformer); got {type(module).__name__}: drop the recipe for other backbones"
        )
    built = (module.img_size, module.num_frames, module.tubelet_size)
    if built != (_TAD_SIZE, _TAD_GRID_FRAMES, _TAD_TUBELET):
        raise ValueError(
            f"recipe {recipe!r} runs the ViT as the official script builds it (img_size={_TAD_SIZE}, "
            f"num_frames={_TAD_GRID_FRAMES}, tubelet_size={_TAD_TUBELET}: its position table is not "
            f"resized); this one has img_size={built[0]}, num_frames={built[1]}, tubelet_size={built[2]}"
        )


def _opener(cfg: ExtractConfig):
    """How `ClipStream` opens a video for extraction: its frame rate and its frames in
    chunks, uint8 `[K, size, size, 3]` resized by FFmpeg, or with the recipe float32
    `[K, 224, 224, 3]` in [0, 1] resized by torch from the native frames
    (`videomaev2_tad_resize`)."""

    def open_video(path: Path) -> tuple[float, Iterator[Tensor]]:
        if cfg.recipe is None:
            fps = cfg.fps if cfg.fps is not None else probe_video(path).fps
            frames = iter_frames(path, fps=cfg.fps, size=(cfg.size, cfg.size), chunk_frames=_DECODE_CHUNK_FRAMES)
            return fps, _chunks(frames)
        info = probe_video(path)  # the recipe decodes at the native rate and size
        native_frame_bytes = 4 * 3 * max(1, info.height) * max(1, info.width)  # float32
        chunk_frames = max(1, min(_DECODE_CHUNK_FRAMES, _RECIPE_CHUNK_BYTES // native_frame_bytes))
        frames = iter_frames(path, chunk_frames=chunk_frames)
        return info.fps, _chunks(frames, lambda chunk: videomaev2_tad_resize(chunk, cfg.size))

    return open_video


def _chunks(frames: Iterator[tuple[Tensor, np.ndarray]], transform: Callable[[Tensor], Tensor] | None = None):
    """The frame chunks of an `iter_frames` stream (transformed), closing it when closed."""
    try:
        for chunk, _ in frames:
            yield chunk if transform is None else transform(chunk)
    finally:
        frames.close()


# ---------------------------------------------------------------------------------------
# Running the backbone


class _Runner:
    """The backbone on its device and dtype, turning `ClipBatch`es into features."""

    def __init__(self, module: nn.Module, cfg: ExtractConfig):
        _check_backbone(module, cfg)
        self.module = module
        self.device = cfg.resolve_device()
        self.dtype = cfg.resolve_dtype(self.device)
        module.eval().to(device=self.device, dtype=self.dtype)
        self.mean_rgb, self.std_rgb = getattr(module, "pixel_mean", None), getattr(module, "pixel_std", None)

    def features(self, batch: ClipBatch) -> Tensor:
        with torch.inference_mode():
            x = batch.clips(self.device, self.mean_rgb, self.std_rgb, self.dtype)  # [B, 3, clip_frames, H, W]
            return self.module.clip_features(x).float()  # [B, C]

    def describe(self) -> dict[str, Any]:
        return {
            "dtype": _DTYPE_NAMES[self.dtype],
            "mean": None if self.mean_rgb is None else list(self.mean_rgb),
            "std": None if self.std_rgb is None else list(self.std_rgb),
        }


@dataclass
class _VideoResult:
    path: Path
    features: np.ndarray | None  # float32 [T, C]
    meta: dict[str, Any] | None
    error: VideoError | None = None
    short: bool = False  # shorter than one clip (warned about): one padded clip


def _run_videos(
    videos: Sequence[Path],
    runner: _Runner,
    cfg: ExtractConfig,
    on_frames: Callable[[int], None] = lambda n: None,
) -> Iterator[_VideoResult]:
    """Features of each video in order, decoding ahead in a background thread."""
    sampler = cfg.sampler()
    stream = ClipStream(videos, _opener(cfg), sampler, cfg.micro_batch, pin_memory=runner.device.type == "cuda")
    with stream:
        fps, started_s, frames_reported, outputs = 0.0, 0.0, 0, []
        for event in stream.events():
            if isinstance(event, VideoStart):
                fps, started_s, frames_reported, outputs = event.fps, time.perf_counter(), 0, []
            elif isinstance(event, ClipBatch):
                outputs.append(runner.features(event))  # stays on the device: no sync per batch
                on_frames(event.frames_decoded - frames_reported)
                frames_reported = event.frames_decoded
            elif isinstance(event, VideoFailed):
                outputs = []
                yield _VideoResult(event.video, None, None, event.error)
            elif isinstance(event, VideoEnd):
                on_frames(event.num_frames - frames_reported)
                if sampler.num_clips(event.num_frames) == 0:  # only with the recipe: the default pads a short video
                    yield _VideoResult(event.video, None, None, _too_short(event.video, event.num_frames, sampler, cfg))
                    continue
                features = torch.cat(outputs).cpu().numpy()  # [T, C]
                outputs = []
                expected = sampler.num_clips(event.num_frames)
                if features.shape[0] != expected:  # a bug, not a bad file
                    raise RuntimeError(f"{event.video}: {features.shape[0]} features for {expected} clips")
                short = event.num_frames < sampler.window_frames
                if short:
                    log.warning("%s", _short_video_warning(event.video, event.num_frames, sampler))
                meta = _video_meta(event.video, cfg, fps, event.num_frames, features, runner)
                meta["elapsed_s"] = round(time.perf_counter() - started_s, 3)
                yield _VideoResult(event.video, features, meta, short=short)


def _too_short(path: Path, num_frames: int, sampler: ClipSampler, cfg: ExtractConfig) -> VideoError:
    return VideoError(
        path,
        f"{num_frames} frames, shorter than one {sampler.window_frames}-frame clip: recipe {cfg.recipe!r} keeps "
        f"whole clips only (official starts range(0, num_frames - {sampler.window_frames - 1}, "
        f"{sampler.stride_frames})), so it has no feature; without the recipe it is one clip padded with its "
        "last frame",
    )


def _short_video_warning(path: Path, num_frames: int, sampler: ClipSampler) -> str:
    return (
        f"{path}: {num_frames} frames, shorter than one {sampler.window_frames}-frame clip: its only feature "
        f"is a clip padded with its last frame ({sampler.window_frames - num_frames} repeats)"
    )


def _video_meta(
    path: Path, cfg: ExtractConfig, fps: float, num_frames: int, features: np.ndarray, runner: _Runner
) -> dict[str, Any]:
    return {
        "video": str(path),
        "recipe": cfg.recipe,  # None: the default extraction (module docstring)
        "fps": fps,
        "fps_requested": cfg.fps,  # None: the video's own frames
        "clip_frames": cfg.clip_frames,
        "stride_frames": cfg.stride_frames,
        "size": cfg.size,
        "num_frames": num_frames,
        "num_features": int(features.shape[0]),
        "feature_dim": int(features.shape[1]),
        "offset_frames": cfg.clip_frames / 2,
        "feature_center_s": "(i * stride_frames + clip_frames / 2) / fps",
        "step_s": cfg.stride_frames / fps,
        "offset_s": cfg.clip_frames / 2 / fps,
        **runner.describe(),
    }


def extract_video(
    path: str | os.PathLike, backbone: nn.Module, cfg: ExtractConfig | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Features of one video: float32 `[T, C]` (T = `cfg.sampler().num_clips(num_frames)`)
    and a dict of how they were made (fps, num_frames, clip/stride/size, dtype, ...).

    `backbone` is moved to the configured device and dtype and put in eval mode, in place.
    Raises `VideoError` when the file cannot be decoded, or with a recipe when the video
    is shorter than one clip.
    """
    cfg = cfg or ExtractConfig()
    runner = _Runner(backbone, cfg)
    with closing(_run_videos([Path(path)], runner, cfg)) as results:
        (result,) = list(results)
    if result.error is not None:
        raise result.error
    assert result.features is not None and result.meta is not None
    return result.features, result.meta


# ---------------------------------------------------------------------------------------
# A dataset of videos -> a folder of features


@dataclass
class ExtractReport:
    out_dir: Path
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # already extracted with the same settings
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (video, reason)
    short: list[Path] = field(default_factory=list)  # done, shorter than one clip: one padded clip
    num_frames: int = 0  # frames decoded by this run
    elapsed_s: float = 0.0

    @property
    def frames_per_s(self) -> float:
        return self.num_frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        lines = [
            f"extracted {len(self.done)}, skipped {len(self.skipped)} (already done), failed {len(self.failed)}; "
            f"{self.num_frames} frames in {self.elapsed_s:.1f} s ({self.frames_per_s:.1f} frames/s) -> {self.out_dir}"
        ]
        lines += [f"failed: {video}: {reason}" for video, reason in self.failed]
        lines += [f"warning: {video}: shorter than one clip, its only feature is a padded clip" for video in self.short]
        return "\n".join(lines)


def _settings(backbone: Backbone, cfg: ExtractConfig, runner: _Runner) -> dict[str, Any]:
    """What a finished video's sidecar must match to be skipped on resume."""
    return {
        "format": SIDECAR_FORMAT,
        "backbone": backbone.name,
        # The weights: the checkpoint file, or (None) the seed of a preset and the weights' hash.
        "checkpoint_sha256": backbone.checkpoint_sha256,
        "seed": backbone.seed,
        "weights_sha256": backbone.weights_sha256,
        "recipe": cfg.recipe,
        "fps_requested": cfg.fps,
        "clip_frames": cfg.clip_frames,
        "stride_frames": cfg.stride_frames,
        "size": cfg.size,
        **runner.describe(),
    }


def finished_with(npy: Path, sidecar: Path, settings: dict[str, Any]) -> str | None:
    """None when `npy` and `sidecar` hold this video done with `settings`; else why not."""
    if not npy.is_file() or not sidecar.is_file():
        return "not extracted yet"
    try:
        meta = read_json(sidecar)
        shape = np.load(npy, mmap_mode="r", allow_pickle=False).shape
    except (ValueError, OSError) as e:
        return f"unreadable previous output ({e})"
    if not isinstance(meta, dict):
        return f"{sidecar}: not a JSON object"
    changed = [f"{k} {meta.get(k)!r} -> {v!r}" for k, v in settings.items() if meta.get(k) != v]
    if changed:
        return "settings changed: " + ", ".join(changed)
    if shape != (meta.get("num_features"), meta.get("feature_dim")):
        return f"{npy.name} has shape {shape}, sidecar says [{meta.get('num_features')}, {meta.get('feature_dim')}]"
    return None


def save_features(npy: Path, sidecar: Path, features: np.ndarray, meta: dict[str, Any]) -> None:
    """Write one video's features and their sidecar, each atomically."""
    # The stale sidecar goes first: features and sidecar of different runs never pair up.
    sidecar.unlink(missing_ok=True)
    with atomic_path(npy) as tmp, open(tmp, "wb") as f:
        np.save(f, features)
    write_json(sidecar, meta)


def extract_features(
    videos: Sequence[str | os.PathLike],
    backbone: str | nn.Module,
    out_dir: str | os.PathLike,
    cfg: ExtractConfig | None = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
) -> ExtractReport:
    """Extract features of `videos` into `out_dir/<stem>.npy` (float32 `[T, C]`) with a
    `out_dir/<stem>.json` sidecar (settings, fps, num_frames, feature-time convention).

    `backbone`: a `BACKBONES` preset name or a module (moved to the device and dtype in
    place); `checkpoint` is loaded into it and its SHA-256 recorded. Without a checkpoint a
    preset gets random weights drawn with `cfg.seed`, and a module given is used as it is;
    either is identified by the SHA-256 of its state dict. Resumable: a video whose outputs
    exist with the same weights and settings is skipped. A video that cannot be decoded (or,
    with a recipe, is shorter than one clip) is reported in `ExtractReport.failed` and the
    run goes on; other errors stop it (the videos finished so far are kept).

    The settings and `out_dir` are checked before any weights are loaded or video decoded:
    an `out_dir` that cannot be created or written raises `ValueError`.
    """
    cfg = cfg or ExtractConfig()
    out_dir = Path(out_dir)
    videos = [Path(v) for v in videos]
    _check_unique_stems(videos)
    if cfg.recipe is not None and isinstance(backbone, str) and backbone in BACKBONES:
        if backbone not in VIT_BACKBONES:
            raise ValueError(
                f"recipe {cfg.recipe!r} runs a VideoMAEv2 ViT; expected backbone {', '.join(VIT_BACKBONES)}, "
                f"got {backbone!r}"
            )
    output_dir(out_dir, "out_dir")
    chosen = _choose_backbone(backbone, checkpoint, cfg.seed)
    runner = _Runner(chosen.module, cfg)
    settings = _settings(chosen, cfg, runner)

    report = ExtractReport(out_dir)
    todo = []
    for video in videos:
        reason = finished_with(out_dir / f"{video.stem}.npy", out_dir / f"{video.stem}.json", settings)
        if reason is None:
            report.skipped.append(video)
        else:
            log.debug("%s: extracting (%s)", video, reason)
            todo.append(video)
    if report.skipped:
        log.info("skipping %d video(s) already extracted with these settings", len(report.skipped))

    started_s = time.perf_counter()
    bar = tqdm(total=None, unit="frame", unit_scale=True, dynamic_ncols=True, disable=not (progress and todo),
               desc=f"extract 0/{len(todo)} videos")

    def count(frames: int) -> None:
        report.num_frames += frames
        bar.update(frames)

    checkpoint_path = str(chosen.checkpoint) if chosen.checkpoint else None
    try:
        with closing(_run_videos(todo, runner, cfg, on_frames=count)) as results:
            for result in results:
                if result.error is not None:
                    report.failed.append((result.path, result.error.problem))
                    log.warning("%s", result.error)
                else:
                    assert result.features is not None and result.meta is not None
                    meta = {"video": None, **settings, "checkpoint": checkpoint_path, **result.meta}
                    stem = result.path.stem
                    save_features(out_dir / f"{stem}.npy", out_dir / f"{stem}.json", result.features, meta)
                    report.done.append(result.path)
                    if result.short:
                        report.short.append(result.path)
                bar.set_description_str(f"extract {len(report.done) + len(report.failed)}/{len(todo)} videos")
    finally:
        bar.close()
        report.elapsed_s = time.perf_counter() - started_s
    return report


def _choose_backbone(backbone: str | nn.Module, checkpoint: str | os.PathLike | None, seed: int) -> Backbone:
    """The backbone and what identifies its weights: the checkpoint file's SHA-256, else the
    weights' own (random weights of a preset are drawn with `seed`)."""
    if isinstance(backbone, str):
        chosen = build_backbone(backbone, checkpoint, seed=seed)
        if checkpoint is None:
            log.warning("backbone %r has random weights (no checkpoint given; seed %d): features only good for "
                        "timing", backbone, seed)
    else:
        chosen = Backbone(backbone, type(backbone).__name__)
        if checkpoint is not None:
            chosen.load(checkpoint)
    if checkpoint is None:
        chosen.weights_id()  # hashes the weights into `weights_sha256`, recorded in every sidecar
    return chosen


def _check_unique_stems(videos: Sequence[Path]) -> None:
    seen: dict[str, Path] = {}
    for video in videos:
        other = seen.setdefault(video.stem, video)
        if other != video:
            raise ValueError(
                f"{other} and {video} would both write '{video.stem}.npy'; "
                "expected video file names (without extension) to be unique"
            )

