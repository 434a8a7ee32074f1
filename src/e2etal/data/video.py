"""Video decoding (PyAV), frame-rate resampling, resizing, and clip sampling.

Times are seconds measured from the first frame of the video stream (the stream's
`start_time` is subtracted), which is the convention of frame-index based pipelines
(`frame_index / fps`). Every timestamp comes from the frame's own `pts × time_base`, so
variable-frame-rate files are handled exactly.

Frame-rate resampling rule: the output frame for target time `t_k = k / fps` is the
**latest** decoded frame whose timestamp is `<= t_k` (a sample-and-hold, as a display
would show it; never a frame from the future). A target that falls before the first frame
takes the first frame. Each frame is held for its duration, so the targets cover
`[0, last_frame_time + last_frame_duration)`. Resampled outputs are stamped with their
target times `k / fps`, a uniform grid; native-rate outputs with the frames' own times.

Windows `[start_s, end_s)` are half-open. Timestamps are compared with a tolerance of half a
`time_base` tick (at most 1 ms), so that a frame stored at 0.067 s in a millisecond time
base counts as the 30 fps frame at 2/30 s.

Not handled: display rotation metadata and non-square sample aspect ratios (frames come
back as coded).
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
import torch

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".webm", ".mov")
LIST_EXTENSIONS = (".txt", ".lst", ".list")
MAX_TIME_TOLERANCE_S = 1e-3
# Decoding that ends this much before the header's declared duration means the file was cut.
TRUNCATION_TOLERANCE_S = 1.0

__all__ = [
    "VIDEO_EXTENSIONS",
    "ClipSampler",
    "VideoError",
    "VideoInfo",
    "find_videos",
    "iter_frames",
    "normalize_clip",
    "probe_video",
    "read_frames",
    "read_frames_at",
    "to_clips",
]


class VideoError(ValueError):
    """A video file that cannot be read as asked; the message starts with the file."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.problem))


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    fps: float  # average frame rate of the video stream
    num_frames: int  # from the container header, else counted packets
    duration_s: float
    width: int
    height: int


# ---------------------------------------------------------------------------------------
# Opening and probing


def _ffmpeg_reason(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)


def _starts_like_mp4(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8)[4:8] == b"ftyp"


@contextmanager
def _open_video(path: str | os.PathLike) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    path = Path(path)
    if not path.exists():
        raise VideoError(path, "file not found")
    if not path.is_file():
        raise VideoError(path, "expected a video file, found a directory or special file")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        reason = _ffmpeg_reason(err)
        if _starts_like_mp4(path):
            raise VideoError(
                path,
                f"truncated or incomplete MP4/MOV: it has no readable index (moov atom) ({reason}); "
                "the download or recording was probably interrupted",
            ) from err
        raise VideoError(
            path, f"cannot be opened as a video ({reason}); the file is corrupt or not a video"
        ) from err
    try:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise VideoError(path, f"has no video stream (streams found: {kinds})")
        yield container, container.streams.video[0]
    finally:
        container.close()


def _average_fps(stream: av.VideoStream, path: Path) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    raise VideoError(path, "video stream declares no frame rate")


def _parse_clock_s(text: str) -> float | None:
    """'HH:MM:SS.fffffffff' (Matroska DURATION tag) -> seconds."""
    try:
        hours, minutes, seconds = text.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _declared_duration_s(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    """The video stream's duration as the header states it, or None when unknown.

    The container duration is used only for single-stream files: with audio it may be the
    audio's length.
    """
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION")
    if tag:
        parsed = _parse_clock_s(tag)
        if parsed:
            return parsed
    if container.duration and len(container.streams) == 1:
        return container.duration / av.time_base
    return None


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Header facts of the first video stream; counts packets when the header has no count."""
    path = Path(path)
    with _open_video(path) as (container, stream):
        fps = _average_fps(stream, path)
        num_frames = stream.frames
        if not num_frames:
            try:
                num_frames = sum(1 for packet in container.demux(stream) if packet.size)
            except av.error.FFmpegError as err:
                reason = _ffmpeg_reason(err)
                raise VideoError(path, f"reading packets failed ({reason}); the file is corrupt") from err
        if num_frames == 0:
            raise VideoError(path, "zero-length video: the video stream has no frames")
        duration_s = _declared_duration_s(container, stream) or num_frames / fps
        return VideoInfo(
            path=path,
            fps=fps,
            num_frames=num_frames,
            duration_s=duration_s,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
        )


# ---------------------------------------------------------------------------------------
# Decoding with exact timestamps


class _Decoded(NamedTuple):
    frame: av.VideoFrame
    time_s: float
    duration_s: float
    tolerance_s: float


def _decode_timed(path: Path, seek_s: float, threads: int) -> Generator[_Decoded, None, bool]:
    """Yield `_Decoded` frames in presentation order, starting at the keyframe before `seek_s`.

    Returns True (as the generator's value) without yielding anything when the seek landed
    after `seek_s`, so the caller can decode from the start instead.
    """
    with _open_video(path) as (container, stream):
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        time_base = stream.time_base
        origin_pts = stream.start_time or 0
        tolerance_s = min(float(time_base) / 2, MAX_TIME_TOLERANCE_S) + 1e-9
        default_duration_s = 1.0 / _average_fps(stream, path)
        previous: _Decoded | None = None
        try:
            if seek_s > 0:
                target_pts = origin_pts + math.floor(Fraction(seek_s) / time_base)
                container.seek(target_pts, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is not None:
                    time_s = float((frame.pts - origin_pts) * time_base)
                elif previous is not None:
                    time_s = previous.time_s + previous.duration_s
                else:
                    time_s = 0.0
                if previous is None and seek_s > 0 and time_s > seek_s + tolerance_s:
                    return True
                duration_s = float(frame.duration * time_base) if frame.duration else default_duration_s
                previous = _Decoded(frame, time_s, duration_s, tolerance_s)
                yield previous
        except av.error.FFmpegError as err:
            reached = f"after {previous.time_s:.3f} s" if previous else "before the first frame"
            raise VideoError(
                path,
                f"decoding failed {reached} ({_ffmpeg_reason(err)}); the file is truncated or corrupt",
            ) from err
        if previous is None:
            raise VideoError(path, "zero-length video: no decodable video frames")
        declared_s = _declared_duration_s(container, stream)
        decoded_end_s = previous.time_s + previous.duration_s
        if declared_s is not None and decoded_end_s < declared_s - TRUNCATION_TOLERANCE_S:
            raise VideoError(
                path,
                f"truncated: decoding ended at {decoded_end_s:.3f} s but the header declares "
                f"{declared_s:.3f} s",
            )
    return False


def _timed_frames(path: Path, seek_s: float, threads: int) -> Iterator[_Decoded]:
    if seek_s > 0:
        seek_overshot = yield from _decode_timed(path, seek_s, threads)
        if not seek_overshot:
            return
    yield from _decode_timed(path, 0.0, threads)


def _select_native(
    decoded: Iterator[_Decoded], start_s: float, end_s: float
) -> Iterator[tuple[_Decoded, float]]:
    for item in decoded:
        if item.time_s >= end_s - item.tolerance_s:
            return
        if item.time_s >= start_s - item.tolerance_s:
            yield item, item.time_s


def _select_resampled(
    decoded: Iterator[_Decoded], fps: float, start_s: float, end_s: float
) -> Iterator[tuple[_Decoded, float]]:
    """Sample-and-hold: target `k / fps` takes the latest frame at or before it."""
    k = math.ceil(start_s * fps - 1e-6)
    k_stop = math.ceil(end_s * fps - 1e-6) if math.isfinite(end_s) else math.inf  # targets k < k_stop
    held: _Decoded | None = None
    for item in decoded:
        while k < k_stop and item.time_s > k / fps + item.tolerance_s:
            yield (item if held is None else held), k / fps  # before the first frame: the first frame
            k += 1
        if k >= k_stop:
            return
        held = item
    if held is None:
        return
    video_end_s = held.time_s + held.duration_s
    while k < k_stop and k / fps < video_end_s - held.tolerance_s:
        yield held, k / fps
        k += 1


def _output_hw(height: int, width: int, size: int | tuple[int, int] | None) -> tuple[int, int]:
    """int: the shorter side becomes `size`, aspect kept; (H, W): exact; None: unchanged."""
    if size is None:
        return height, width
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        scale = size / min(height, width)
        if height <= width:
            return size, max(1, round(width * scale))
        return max(1, round(height * scale)), size
    out_h, out_w = size
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size (H, W) must be positive, got {size}")
    return int(out_h), int(out_w)


def _check_window(fps: float | None, start_s: float, end_s: float | None, chunk_frames: int) -> float:
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if start_s < 0:
        raise ValueError(f"start_s must be >= 0, got {start_s}")
    end = math.inf if end_s is None else float(end_s)
    if end <= start_s:
        raise ValueError(f"end_s ({end_s}) must be after start_s ({start_s})")
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    return end


def iter_frames(
    path: str | os.PathLike,
    fps: float | None = None,
    size: int | tuple[int, int] | None = None,
    start_s: float = 0.0,
    end_s: float | None = None,
    threads: int = 0,
    chunk_frames: int = 64,
) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Stream RGB frames of `[start_s, end_s)` in chunks of at most `chunk_frames`.

    Yields `(frames, timestamps_s)`: uint8 `[K, H, W, 3]` and float64 `[K]`. With `fps` the
    frames are resampled onto the grid `k / fps` (see the module docstring); `size` resizes
    bilinearly while converting (int: shorter side; (H, W): exact). `threads=0` lets FFmpeg
    choose the number of decoding threads. Only the frames that are output are converted
    to RGB, so a resampled or windowed read is cheaper than a full one.
    """
    path = Path(path)
    end = _check_window(fps, start_s, end_s, chunk_frames)
    decoded = _timed_frames(path, float(start_s), threads)
    if fps is None:
        selected = _select_native(decoded, start_s, end)
    else:
        selected = _select_resampled(decoded, float(fps), start_s, end)
    out_hw: tuple[int, int] | None = None
    arrays: list[np.ndarray] = []
    times_s: list[float] = []
    last: tuple[av.VideoFrame, np.ndarray] | None = None  # upsampling repeats frames: convert once
    try:
        for item, time_s in selected:
            if out_hw is None:
                out_hw = _output_hw(item.frame.height, item.frame.width, size)
            if last is None or last[0] is not item.frame:
                last = (item.frame, _to_rgb(item.frame, out_hw))
            arrays.append(last[1])
            times_s.append(time_s)
            if len(arrays) == chunk_frames:
                yield torch.from_numpy(np.stack(arrays)), np.asarray(times_s, dtype=np.float64)
                arrays, times_s = [], []
        if arrays:
            yield torch.from_numpy(np.stack(arrays)), np.asarray(times_s, dtype=np.float64)
    finally:
        selected.close()
        decoded.close()


# A target further ahead of the decoder than this is reached by seeking (to the keyframe
# before it) rather than by decoding every frame in between.
SEEK_AHEAD_S = 2.0


def _to_rgb(frame: av.VideoFrame, out_hw: tuple[int, int]) -> np.ndarray:
    return frame.to_ndarray(format="rgb24", height=out_hw[0], width=out_hw[1], interpolation="BILINEAR")  # [H, W, 3]


def read_frames_at(
    path: str | os.PathLike,
    times_s: Sequence[float],
    size: int | tuple[int, int] | None = None,
    threads: int = 0,
) -> torch.Tensor:
    """The frames shown at `times_s` (seconds, non-decreasing): uint8 `[N, H, W, 3]`.

    Each time takes the latest frame at or before it (the first frame before the first,
    the last after the end), the sample-and-hold rule of resampling (module docstring).
    Sparse times are cheap: the decoder seeks to the keyframe before a time that is more
    than `SEEK_AHEAD_S` ahead of it, and only the frames returned are converted to RGB
    (and resized, as `iter_frames` does), each once however many times it is returned.
    """
    path = Path(path)
    times = [float(t) for t in times_s]
    if any(t < 0 or not math.isfinite(t) for t in times):
        raise ValueError(f"{path}: times_s must be finite and >= 0")
    if any(b < a for a, b in zip(times, times[1:])):
        raise ValueError(f"{path}: times_s must be in non-decreasing order")
    decoded: Iterator[_Decoded] | None = None
    held: _Decoded | None = None  # the latest frame at or before the current time
    ahead: _Decoded | None = None  # the frame after it, decoded but not yet reached
    out_hw: tuple[int, int] | None = None
    last: tuple[av.VideoFrame, np.ndarray] | None = None
    arrays: list[np.ndarray] = []
    try:
        for t in times:
            if decoded is None or (ahead is not None and t - ahead.time_s > SEEK_AHEAD_S):
                if decoded is not None:
                    decoded.close()
                decoded = _timed_frames(path, t, threads)
                held, ahead = None, next(decoded, None)
            while ahead is not None and ahead.time_s <= t + ahead.tolerance_s:
                held, ahead = ahead, next(decoded, None)
            frame = held if held is not None else ahead
            if frame is None:
                raise VideoError(path, "zero-length video: no decodable video frames")
            if out_hw is None:
                out_hw = _output_hw(frame.frame.height, frame.frame.width, size)
            if last is None or last[0] is not frame.frame:
                last = (frame.frame, _to_rgb(frame.frame, out_hw))
            arrays.append(last[1])
    finally:
        if decoded is not None:
            decoded.close()
    if not arrays:
        with _open_video(path) as (_, stream):
            out_h, out_w = _output_hw(stream.codec_context.height, stream.codec_context.width, size)
        return torch.empty((0, out_h, out_w, 3), dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays))


def read_frames(
    path: str | os.PathLike,
    fps: float | None = None,
    size: int | tuple[int, int] | None = None,
    start_s: float = 0.0,
    end_s: float | None = None,
    threads: int = 0,
) -> tuple[torch.Tensor, np.ndarray]:
    """All frames of `[start_s, end_s)` at once: uint8 `[T, H, W, 3]`, float64 `[T]` seconds.

    Same arguments and rules as `iter_frames`. A window with no frames (e.g. past the end)
    gives `T = 0`; a file with no frames at all raises `VideoError`.
    """
    chunks = list(iter_frames(path, fps=fps, size=size, start_s=start_s, end_s=end_s, threads=threads))
    if not chunks:
        with _open_video(path) as (_, stream):
            out_h, out_w = _output_hw(stream.codec_context.height, stream.codec_context.width, size)
        return torch.empty((0, out_h, out_w, 3), dtype=torch.uint8), np.empty(0, dtype=np.float64)
    frames = torch.cat([frames for frames, _ in chunks])  # [T, H, W, 3]
    timestamps_s = np.concatenate([times for _, times in chunks])  # [T]
    return frames, timestamps_s


# ---------------------------------------------------------------------------------------
# Clips


@dataclass(frozen=True)
class ClipSampler:
    """Clips of `clip_frames` frames, every `frame_interval`-th frame, starting every `stride_frames`.

    Clip i starts at frame `i * stride_frames` and spans the window
    `[i * stride_frames, i * stride_frames + clip_frames * frame_interval)`, of which it takes
    frames `start, start + frame_interval, ...`. Clips are added until the last window
    reaches the final frame; indices past the end repeat the final frame. For clips that fit
    entirely this matches the official VideoMAEv2 TAD extraction
    (`range(0, num_frames - 15, 4)` for 16-frame clips every 4 frames); a video whose tail
    is not covered by those gets one more, padded clip.

    With `cover_tail=False` only the windows that fit entirely are kept, exactly those
    official starts (`range(0, num_frames - window_frames + 1, stride_frames)`): the tail is
    dropped and a video shorter than one window has no clip.

    Feature i stands for the centre of its window (ActionFormer's convention, `offset =
    clip_frames / 2` frames): `(i * stride_frames + clip_frames * frame_interval / 2) / fps`.
    """

    clip_frames: int = 16
    stride_frames: int = 4
    frame_interval: int = 1
    cover_tail: bool = True

    def __post_init__(self) -> None:
        for name in ("clip_frames", "stride_frames", "frame_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ClipSampler.{name} must be a positive int, got {value!r}")

    @property
    def window_frames(self) -> int:
        return self.clip_frames * self.frame_interval

    def num_clips(self, num_frames: int) -> int:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if not self.cover_tail:
            return max(0, (num_frames - self.window_frames) // self.stride_frames + 1)
        uncovered = max(0, num_frames - self.window_frames)
        return 1 + -(-uncovered // self.stride_frames)

    def clip_starts(self, num_frames: int) -> torch.Tensor:
        return torch.arange(self.num_clips(num_frames), dtype=torch.long) * self.stride_frames  # [N]

    def clip_indices(self, num_frames: int) -> torch.Tensor:
        offsets = torch.arange(self.clip_frames, dtype=torch.long) * self.frame_interval  # [clip_frames]
        indices = self.clip_starts(num_frames)[:, None] + offsets  # [N, clip_frames]
        return indices.clamp_(max=num_frames - 1)

    def feature_centers_s(self, num_frames: int, fps: float) -> np.ndarray:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        starts = self.clip_starts(num_frames).numpy().astype(np.float64)
        return (starts + self.window_frames / 2) / fps  # [N]


def normalize_clip(
    frames: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """uint8 `[..., H, W, 3]` -> float32 `[..., 3, H, W]` in [0, 1], then `(x - mean) / std`.

    `mean`/`std` are per RGB channel on the [0, 1] scale (e.g. ImageNet's); VideoMAEv2's TAD
    features use neither.
    """
    if frames.dtype != torch.uint8 or frames.shape[-1] != 3:
        raise TypeError(f"expected uint8 frames [..., H, W, 3], got {frames.dtype} {list(frames.shape)}")
    x = frames.to(torch.float32).div_(255.0)  # [..., H, W, 3]
    if mean is not None:
        x = x - _channel_values(mean, "mean")
    if std is not None:
        x = x / _channel_values(std, "std")
    return x.movedim(-1, -3).contiguous()  # [..., 3, H, W]


def _channel_values(values: Sequence[float], name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values, dtype=torch.float32)
    if tensor.shape != (3,):
        raise ValueError(f"{name} must have 3 values (R, G, B), got {values!r}")
    return tensor


def to_clips(
    frames: torch.Tensor,
    sampler: ClipSampler,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """uint8 frames `[T, H, W, 3]` -> float32 clips `[N, 3, clip_frames, H, W]` (see `normalize_clip`).

    Holds all N clips in float32 at once; for long videos slice
    `frames[sampler.clip_indices(T)[a:b]]` in micro-batches instead.
    """
    if frames.ndim != 4:
        raise TypeError(f"expected frames [T, H, W, 3], got shape {list(frames.shape)}")
    clips = frames[sampler.clip_indices(frames.shape[0])]  # [N, clip_frames, H, W, 3]
    return normalize_clip(clips, mean, std).transpose(1, 2).contiguous()  # [N, 3, clip_frames, H, W]


# ---------------------------------------------------------------------------------------
# Finding inputs


def find_videos(path_or_list: str | os.PathLike) -> list[Path]:
    """Videos named by a directory, a single video file, or a text file listing paths.

    A directory gives its files with a video extension (`VIDEO_EXTENSIONS`, any case; not
    recursive), sorted by name. A `.txt`/`.lst`/`.list` file lists one path per line (blank
    lines and `#` comments skipped; relative paths are relative to the list's folder); each
    must exist. Any other file is taken as the single video.
    """
    path = Path(path_or_list)
    if not path.exists():
        raise VideoError(path, "not found; expected a video, a folder of videos or a list of paths")
    if path.is_dir():
        videos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        if not videos:
            raise VideoError(path, f"folder has no videos (extensions {', '.join(VIDEO_EXTENSIONS)})")
        return videos
    if path.suffix.lower() not in LIST_EXTENSIONS:
        return [path]
    videos, missing = [], []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        video = Path(entry).expanduser()
        if not video.is_absolute():
            video = path.parent / video
        if not video.is_file():
            missing.append(f"line {line_number}: {entry}")
        videos.append(video)
    if missing:
        raise VideoError(path, f"{len(missing)} listed video(s) not found: " + "; ".join(missing[:10]))
    if not videos:
        raise VideoError(path, "lists no videos; expected one path per line")
    return videos
