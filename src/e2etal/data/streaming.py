"""A video's clips as a stream: decoded in chunks in a background thread, cut into
micro-batches of clips, and handed to whatever runs a backbone on them, so that a long
video is never held in memory and decoding overlaps the backbone.

Feature extraction (`e2etal.extract`) and the tap cache (`e2etal.adapters.tap_cache`) are
the two per-video passes of a frozen backbone; both read their clips from `ClipStream`.

    with ClipStream(videos, open_video, sampler, micro_batch=32) as stream:
        for event in stream.events():   # per video: VideoStart, ClipBatch..., VideoEnd
            ...                          # or VideoFailed (possibly after some batches)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from e2etal.data.video import ClipSampler, VideoError, _channel_values

__all__ = ["ClipBatch", "ClipStream", "VideoEnd", "VideoFailed", "VideoStart", "stream_clips"]

PREFETCH_BATCHES = 4  # decoded micro-batches waiting for the backbone, at most
_STOP_POLL_S = 0.1

# How a stream opens one video: its frame rate and its frames in chunks `[K, H, W, 3]`
# (uint8, or float32 in [0, 1] when already resized by the caller). Raises VideoError for a
# file that cannot be read.
OpenVideo = Callable[[Any], tuple[float, Iterator[Tensor]]]


@dataclass
class ClipBatch:
    """A micro-batch of clips as a span of consecutive frames plus indices into it.

    Sending the span rather than the gathered clips moves each frame once (clips overlap
    `clip_frames / stride_frames` times with the default extraction settings).
    """

    # frames first_frame .. first_frame + F - 1 of the video: uint8 [F, H, W, 3], or float32
    # in [0, 1] (already resized by the caller)
    frames: Tensor
    indices: Tensor  # long [B, clip_frames], into `frames`
    first_clip: int  # index in the video of the first clip of the batch
    first_frame: int  # index in the video of frames[0]
    frames_decoded: int  # frames of the video decoded so far (for progress)

    def pin_memory(self) -> ClipBatch:
        return ClipBatch(
            self.frames.pin_memory(), self.indices.pin_memory(), self.first_clip, self.first_frame, self.frames_decoded
        )

    def clips(self, device: torch.device, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
              dtype: torch.dtype = torch.float32) -> Tensor:
        """The clips `[B, 3, clip_frames, H, W]` on `device`: frames gathered there, scaled
        to [0, 1] (uint8 frames), then `(x - mean) / std` per RGB channel when given, as
        `e2etal.data.video.normalize_clip` does."""
        non_blocking = device.type == "cuda"  # the stream pins batches for CUDA
        frames = self.frames.to(device, non_blocking=non_blocking)  # [F, H, W, 3]
        x = frames[self.indices.to(device, non_blocking=non_blocking)]  # [B, clip_frames, H, W, 3]
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255.0)
        if mean is not None:
            x = x - _channel_values(mean, "mean").to(device)
        if std is not None:
            x = x / _channel_values(std, "std").to(device)
        return x.permute(0, 4, 1, 2, 3).to(dtype).contiguous()  # [B, 3, clip_frames, H, W]


def stream_clips(
    chunks: Iterable[Tensor], sampler: ClipSampler, micro_batch: int
) -> Generator[ClipBatch, None, int]:
    """Cut a stream of frame chunks (`[K, H, W, 3]`, any dtype) into micro-batches of clips.

    The clips are those of `sampler` for the whole stream, in order; all but the last batch
    have `micro_batch` clips. Only the frames still needed by clips not yet emitted are
    kept. Returns (as the generator's value) the number of frames in the stream.
    """
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    offsets = torch.arange(sampler.clip_frames, dtype=torch.long) * sampler.frame_interval  # [clip_frames]
    stride, window = sampler.stride_frames, sampler.window_frames
    buffer = torch.empty(0)  # frames base .. base + len(buffer) - 1 (the first chunk replaces it)
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


@dataclass
class VideoStart:
    video: Hashable  # what the stream was given for this video: a path, a video id
    fps: float


@dataclass
class VideoEnd:
    video: Hashable
    num_frames: int  # decoded; the video had `sampler.num_clips(num_frames)` clips (0 for a
    # video shorter than one clip when the sampler keeps whole clips only)


@dataclass
class VideoFailed:
    video: Hashable
    error: VideoError


@dataclass
class _Crash:
    error: BaseException


class _Stopped(Exception):
    pass


_END = object()


class ClipStream:
    """Decodes videos one after another in a background thread into a bounded queue of
    `ClipBatch`es (at most `PREFETCH_BATCHES` waiting).

    Use as a context manager and read `events()`: per video a `VideoStart`, its
    `ClipBatch`es and a `VideoEnd`, or a `VideoFailed` (possibly after some batches) when
    `open_video` or decoding raises `VideoError`; the stream then goes on with the next
    video. Any other error in the thread is re-raised by `events()`. Leaving the context
    stops the thread and closes the file being decoded. `pin_memory` pins each batch (for
    copies to CUDA that overlap compute).
    """

    def __init__(self, videos: Sequence[Hashable], open_video: OpenVideo, sampler: ClipSampler, micro_batch: int,
                 pin_memory: bool = False):
        self._videos = list(videos)
        self._open_video = open_video
        self._sampler = sampler
        self._micro_batch = micro_batch
        self._pin_memory = pin_memory
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2etal-decode", daemon=True)

    def __enter__(self) -> ClipStream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def events(self) -> Iterator[VideoStart | ClipBatch | VideoEnd | VideoFailed]:
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
            for video in self._videos:
                self._decode(video)
            self._put(_END)
        except _Stopped:
            pass
        except BaseException as e:  # handed to the main thread, which re-raises it
            try:
                self._put(_Crash(e))
            except _Stopped:
                pass

    def _decode(self, video: Hashable) -> None:
        try:
            fps, chunks = self._open_video(video)
            self._put(VideoStart(video, fps))
            batches = stream_clips(chunks, self._sampler, self._micro_batch)
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
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
            if num_frames == 0:
                raise VideoError(str(video), "no frames decoded")
            self._put(VideoEnd(video, num_frames))
        except VideoError as e:
            self._put(VideoFailed(video, e))
