"""Feature extraction: videos -> one `[T, C]` float32 array of clip features per video.

This is the "frozen backbone" box of the data flow, run once over a dataset so a
feature-based head can train on the result (ActionFormer's layout: `<video stem>.npy`).

Per video:

* frames are decoded by `iter_frames` (at the native rate, or resampled to `fps`) and
  resized bilinearly to `size x size` without a crop, in a background thread that cuts the
  stream into micro-batches of clips (`stream_clips`) and keeps only the frames the next
  clips need, so a long video is never held in memory; while the backbone runs on one
  micro-batch, the thread decodes the next (and the next video);
* clips follow `ClipSampler`: clip i covers frames `[i * stride_frames,
  i * stride_frames + clip_frames)`, the tail is covered by one clip padded with the
  last frame;
* a clip is RGB scaled to [0, 1]; ViTs get no mean/std (the official VideoMAEv2 TAD
  extraction), TSM-ResNets the ImageNet mean/std they were trained with;
* the feature of a clip is `fc_norm(mean of the last block's tokens)` for a ViT
  (`VisionTransformer.extract_features`), the per-frame pooled features averaged over
  the clip for a TSM-ResNet;
* feature i is centred at `(i * stride_frames + clip_frames / 2) / fps` seconds.

The official extraction resizes with its own (PIL / OpenCV) bilinear filter; ours is
FFmpeg's, so features agree closely with the released ones, not bit for bit. With
native-rate decoding of a variable-frame-rate file, `fps` in the sidecar is the stream's
average rate and the feature times are approximate.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from e2etal.backbones import (
    TSMResNet,
    VisionTransformer,
    load_backbone_checkpoint,
    tsm_resnet18,
    tsm_resnet50,
    vit_base,
    vit_giant,
    vit_huge,
    vit_large,
    vit_small,
)
from e2etal.data.video import ClipSampler, VideoError, iter_frames, probe_video
from e2etal.io import atomic_path, read_json, write_json

__all__ = [
    "BACKBONES",
    "Backbone",
    "ClipBatch",
    "ExtractConfig",
    "ExtractReport",
    "build_backbone",
    "clip_features",
    "extract_features",
    "extract_video",
    "file_sha256",
    "input_normalization",
    "stream_clips",
]

log = logging.getLogger(__name__)

# CLI presets: name -> constructor (random weights until a checkpoint is loaded).
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "vit-s": vit_small,
    "vit-b": vit_base,
    "vit-l": vit_large,
    "vit-h": vit_huge,
    "vit-g": vit_giant,
    "tsm-r18": tsm_resnet18,
    "tsm-r50": tsm_resnet50,
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}

SIDECAR_FORMAT = 1
_DECODE_CHUNK_FRAMES = 64  # frames per `iter_frames` chunk
_PREFETCH_BATCHES = 4  # decoded micro-batches waiting for the backbone, at most
_STOP_POLL_S = 0.1
_HASH_BLOCK_BYTES = 8 << 20


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
    dtype: str = "auto"  # "auto" = bf16 on CUDA, fp32 on CPU; or fp32, bf16, fp16

    def __post_init__(self) -> None:
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be positive or None (native rate), got {self.fps}")
        for name in ("clip_frames", "stride_frames", "size", "micro_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {self.dtype!r}")

    def sampler(self) -> ClipSampler:
        return ClipSampler(clip_frames=self.clip_frames, stride_frames=self.stride_frames)

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"device {self.device!r} not understood; expected auto, cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but CUDA is not available")
        return device

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return _DTYPES[self.dtype]


@dataclass
class Backbone:
    """A backbone module with what identifies its weights (recorded in every sidecar)."""

    module: nn.Module
    name: str  # CLI preset name, or the class name of a module given directly
    checkpoint: Path | None = None
    checkpoint_sha256: str | None = None  # of the checkpoint file, streamed


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in blocks (a ViT-g checkpoint need not fit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def build_backbone(name: str, checkpoint: str | os.PathLike | None = None, **kwargs: Any) -> Backbone:
    """Build a preset of `BACKBONES` (keyword arguments go to its constructor) and load
    `checkpoint` into it (read with `weights_only=True`, converted by
    `load_backbone_checkpoint`), recording the file's SHA-256.

    Without a checkpoint the weights are random: fine for benchmarks, meaningless features.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    module = BACKBONES[name](**kwargs)
    backbone = Backbone(module, name)
    if checkpoint is not None:
        _load_checkpoint(backbone, checkpoint)
    return backbone


def _load_checkpoint(backbone: Backbone, checkpoint: str | os.PathLike) -> None:
    path = Path(checkpoint)
    load_backbone_checkpoint(backbone.module, path)
    backbone.checkpoint = path
    backbone.checkpoint_sha256 = file_sha256(path)


def module_sha256(module: nn.Module) -> str:
    """SHA-256 of a state dict (names, dtypes, shapes, bytes): identifies in-memory weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def input_normalization(module: nn.Module) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(mean, std) applied to [0, 1] RGB before the backbone; (None, None) for none."""
    if isinstance(module, TSMResNet):
        return IMAGENET_MEAN, IMAGENET_STD
    return None, None


def clip_features(module: nn.Module, clips: Tensor) -> Tensor:
    """One feature per clip: `[B, 3, T, H, W] -> [B, C]` (see the module docstring)."""
    if isinstance(module, TSMResNet):
        return module(clips).mean(dim=1)  # [B, T, C] -> [B, C]
    return module.extract_features(clips)  # [B, C]


def _check_backbone(module: nn.Module, cfg: ExtractConfig) -> None:
    if not isinstance(module, TSMResNet) and not callable(getattr(module, "extract_features", None)):
        raise TypeError(
            f"backbone {type(module).__name__} has no extract_features(clips [B, 3, T, H, W]) -> [B, C]; "
            "expected a VisionTransformer, a TSMResNet or a module with that method"
        )
    if isinstance(module, VisionTransformer):
        patch, tubelet = module.patch_size, module.tubelet_size
        if cfg.size % patch:
            nearest = sorted({s for s in (cfg.size // patch * patch, (cfg.size // patch + 1) * patch) if s > 0})
            raise ValueError(
                f"size {cfg.size} is not a multiple of this ViT's patch size {patch}; "
                f"use {' or '.join(map(str, nearest))}"
            )
        if cfg.clip_frames % tubelet:
            raise ValueError(
                f"clip_frames {cfg.clip_frames} is not a multiple of this ViT's tubelet size {tubelet}"
            )


# ---------------------------------------------------------------------------------------
# Streaming clips


@dataclass
class ClipBatch:
    """A micro-batch of clips as a span of consecutive frames plus indices into it.

    Sending the span rather than the gathered clips moves each frame once (clips overlap
    `clip_frames / stride_frames` times with the default settings).
    """

    frames: Tensor  # uint8 [F, H, W, 3], frames first_frame .. first_frame + F - 1 of the video
    indices: Tensor  # long [B, clip_frames], into `frames`
    first_clip: int  # index in the video of the first clip of the batch
    first_frame: int  # index in the video of frames[0]
    frames_decoded: int  # frames of the video decoded so far (for progress)

    def pin_memory(self) -> ClipBatch:
        return ClipBatch(
            self.frames.pin_memory(), self.indices.pin_memory(), self.first_clip, self.first_frame, self.frames_decoded
        )


def stream_clips(
    chunks: Iterable[Tensor], sampler: ClipSampler, micro_batch: int
) -> Generator[ClipBatch, None, int]:
    """Cut a stream of frame chunks (uint8 `[K, H, W, 3]`) into micro-batches of clips.

    The clips are those of `sampler` for the whole stream, in order; all but the last batch
    have `micro_batch` clips. Only the frames still needed by clips not yet emitted are
    kept. Returns (as the generator's value) the number of frames in the stream.
    """
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    offsets = torch.arange(sampler.clip_frames, dtype=torch.long) * sampler.frame_interval  # [clip_frames]
    stride, window = sampler.stride_frames, sampler.window_frames
    buffer = torch.empty(0, dtype=torch.uint8)  # frames base .. base + len(buffer) - 1
    base = 0
    next_clip = 0

    def trim() -> None:
        # Drop frames before the next clip's start, but always keep the last frame seen:
        # clips past the end of the video repeat it.
        nonlocal buffer, base
        drop = min(next_clip * stride, base + buffer.shape[0] - 1) - base
        if drop > 0:
            buffer, base = buffer[drop:], base + drop

    def emit(num_clips: int, num_frames: int | None) -> ClipBatch:
        nonlocal next_clip
        starts = (torch.arange(num_clips, dtype=torch.long) + next_clip) * stride  # [B]
        indices = starts[:, None] + offsets  # [B, clip_frames], frame indices in the video
        if num_frames is not None:  # end of stream: the tail repeats the last frame
            indices = indices.clamp(max=num_frames - 1)
        span_end = int(indices.max()) + 1
        batch = ClipBatch(
            frames=buffer[: span_end - base],
            indices=indices - base,
            first_clip=next_clip,
            first_frame=base,
            frames_decoded=base + buffer.shape[0],
        )
        next_clip += num_clips
        trim()
        return batch

    for chunk in chunks:  # [K, H, W, 3]
        if chunk.shape[0] == 0:
            continue
        buffer = chunk if buffer.shape[0] == 0 else torch.cat((buffer, chunk))
        trim()
        seen = base + buffer.shape[0]
        while seen >= window and (seen - window) // stride + 1 - next_clip >= micro_batch:
            yield emit(micro_batch, None)
    num_frames = base + buffer.shape[0]
    if num_frames == 0:
        return 0
    num_clips = sampler.num_clips(num_frames)
    while next_clip < num_clips:
        yield emit(min(micro_batch, num_clips - next_clip), num_frames)
    return num_frames


# ---------------------------------------------------------------------------------------
# Background decoding


@dataclass
class _VideoStart:
    path: Path
    fps: float


@dataclass
class _VideoEnd:
    path: Path
    num_frames: int


@dataclass
class _VideoFailed:
    path: Path
    error: VideoError


@dataclass
class _Crash:
    error: BaseException


class _Stopped(Exception):
    pass


_END = object()


class _Decoder:
    """Decodes videos one after another in a background thread into a bounded queue.

    Use as a context manager and read `events()`: per video a `_VideoStart`, its
    `ClipBatch`es and a `_VideoEnd`, or a `_VideoFailed` (possibly after some batches).
    Any other error in the thread is re-raised by `events()`. Leaving the context stops
    the thread and closes the file being decoded.
    """

    def __init__(self, videos: Sequence[Path], cfg: ExtractConfig, pin_memory: bool):
        self._videos = list(videos)
        self._cfg = cfg
        self._pin_memory = pin_memory
        self._queue: queue.Queue = queue.Queue(maxsize=_PREFETCH_BATCHES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2etal-decode", daemon=True)

    def __enter__(self) -> _Decoder:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def events(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Crash):
                raise item.error
            yield item

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_STOP_POLL_S)
                return
            except queue.Full:
                continue
        raise _Stopped

    def _run(self) -> None:
        try:
            for path in self._videos:
                self._decode(path)
            self._put(_END)
        except _Stopped:
            pass
        except BaseException as e:  # handed to the main thread, which re-raises it
            try:
                self._put(_Crash(e))
            except _Stopped:
                pass

    def _decode(self, path: Path) -> None:
        cfg = self._cfg
        try:
            fps = cfg.fps if cfg.fps is not None else probe_video(path).fps
            self._put(_VideoStart(path, fps))
            frames = iter_frames(path, fps=cfg.fps, size=(cfg.size, cfg.size), chunk_frames=_DECODE_CHUNK_FRAMES)
            batches = stream_clips((chunk for chunk, _ in frames), cfg.sampler(), cfg.micro_batch)
            try:
                while True:
                    try:
                        batch = next(batches)
                    except StopIteration as done:
                        num_frames = done.value
                        break
                    self._put(batch.pin_memory() if self._pin_memory else batch)
            finally:
                batches.close()
                frames.close()
            if num_frames == 0:
                raise VideoError(path, "no frames decoded")
            self._put(_VideoEnd(path, num_frames))
        except VideoError as e:
            self._put(_VideoFailed(path, e))


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
        self.mean_rgb, self.std_rgb = input_normalization(module)
        self._mean = None if self.mean_rgb is None else torch.tensor(self.mean_rgb, device=self.device)
        self._std = None if self.std_rgb is None else torch.tensor(self.std_rgb, device=self.device)

    def features(self, batch: ClipBatch) -> Tensor:
        non_blocking = self.device.type == "cuda"  # the decoder pinned the batch
        frames = batch.frames.to(self.device, non_blocking=non_blocking)  # uint8 [F, H, W, 3]
        indices = batch.indices.to(self.device, non_blocking=non_blocking)  # [B, clip_frames]
        with torch.inference_mode():
            x = frames[indices].to(torch.float32).div_(255.0)  # [B, clip_frames, H, W, 3]
            if self._mean is not None:
                x = (x - self._mean) / self._std
            x = x.permute(0, 4, 1, 2, 3).to(self.dtype).contiguous()  # [B, 3, clip_frames, H, W]
            return clip_features(self.module, x).float()  # [B, C]

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


def _run_videos(
    videos: Sequence[Path],
    runner: _Runner,
    cfg: ExtractConfig,
    on_frames: Callable[[int], None] = lambda n: None,
) -> Iterator[_VideoResult]:
    """Features of each video in order, decoding ahead in a background thread."""
    sampler = cfg.sampler()
    with _Decoder(videos, cfg, pin_memory=runner.device.type == "cuda") as decoder:
        fps, started_s, frames_reported, outputs = 0.0, 0.0, 0, []
        for event in decoder.events():
            if isinstance(event, _VideoStart):
                fps, started_s, frames_reported, outputs = event.fps, time.perf_counter(), 0, []
            elif isinstance(event, ClipBatch):
                outputs.append(runner.features(event))  # stays on the device: no sync per batch
                on_frames(event.frames_decoded - frames_reported)
                frames_reported = event.frames_decoded
            elif isinstance(event, _VideoFailed):
                outputs = []
                yield _VideoResult(event.path, None, None, event.error)
            elif isinstance(event, _VideoEnd):
                features = torch.cat(outputs).cpu().numpy()  # [T, C]
                outputs = []
                on_frames(event.num_frames - frames_reported)
                expected = sampler.num_clips(event.num_frames)
                if features.shape[0] != expected:  # a bug, not a bad file
                    raise RuntimeError(f"{event.path}: {features.shape[0]} features for {expected} clips")
                meta = _video_meta(event.path, cfg, fps, event.num_frames, features, runner)
                meta["elapsed_s"] = round(time.perf_counter() - started_s, 3)
                yield _VideoResult(event.path, features, meta)


def _video_meta(
    path: Path, cfg: ExtractConfig, fps: float, num_frames: int, features: np.ndarray, runner: _Runner
) -> dict[str, Any]:
    return {
        "video": str(path),
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
    Raises `VideoError` when the file cannot be decoded.
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
        return "\n".join(lines)


def _settings(backbone: Backbone, weights_sha256: str | None, cfg: ExtractConfig, runner: _Runner) -> dict[str, Any]:
    """What a finished video's sidecar must match to be skipped on resume."""
    return {
        "format": SIDECAR_FORMAT,
        "backbone": backbone.name,
        "checkpoint_sha256": backbone.checkpoint_sha256,
        "weights_sha256": weights_sha256,
        "fps_requested": cfg.fps,
        "clip_frames": cfg.clip_frames,
        "stride_frames": cfg.stride_frames,
        "size": cfg.size,
        **runner.describe(),
    }


def _finished(npy: Path, sidecar: Path, settings: dict[str, Any]) -> str | None:
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


def _save(npy: Path, sidecar: Path, features: np.ndarray, meta: dict[str, Any]) -> None:
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
    place); `checkpoint` is loaded into it and its SHA-256 recorded. A module given without
    a checkpoint is identified by the SHA-256 of its state dict. Resumable: a video whose
    outputs exist with the same settings is skipped. A video that cannot be decoded is
    reported in `ExtractReport.failed` and the run goes on; other errors stop it (the
    videos finished so far are kept).
    """
    cfg = cfg or ExtractConfig()
    out_dir = Path(out_dir)
    videos = [Path(v) for v in videos]
    _check_unique_stems(videos)
    weights_sha256 = None
    if isinstance(backbone, str):
        chosen = build_backbone(backbone, checkpoint)
        if checkpoint is None:
            log.warning("backbone %r has random weights (no checkpoint given): features only good for timing", backbone)
    else:
        chosen = Backbone(backbone, type(backbone).__name__)
        if checkpoint is not None:
            _load_checkpoint(chosen, checkpoint)
        else:
            weights_sha256 = module_sha256(chosen.module)
    runner = _Runner(chosen.module, cfg)
    settings = _settings(chosen, weights_sha256, cfg, runner)

    report = ExtractReport(out_dir)
    todo = []
    for video in videos:
        reason = _finished(out_dir / f"{video.stem}.npy", out_dir / f"{video.stem}.json", settings)
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
                    _save(out_dir / f"{stem}.npy", out_dir / f"{stem}.json", result.features, meta)
                    report.done.append(result.path)
                bar.set_description_str(f"extract {len(report.done) + len(report.failed)}/{len(todo)} videos")
    finally:
        bar.close()
        report.elapsed_s = time.perf_counter() - started_s
    return report


def _check_unique_stems(videos: Sequence[Path]) -> None:
    seen: dict[str, Path] = {}
    for video in videos:
        other = seen.setdefault(video.stem, video)
        if other != video:
            raise ValueError(
                f"{other} and {video} would both write '{video.stem}.npy'; "
                "expected video file names (without extension) to be unique"
            )

