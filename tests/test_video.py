"""Decoding, resampling, windows, errors and clip sampling, on videos written here with PyAV.

Each test frame encodes its index in two flat gray halves (left: index % 32 * 8, right:
index // 32 * 8), which survive lossy compression, so we can tell which frame came back.
"""

from __future__ import annotations

import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from e2etal.data.video import (
    ClipSampler,
    VideoError,
    find_videos,
    iter_frames,
    normalize_clip,
    probe_video,
    read_frames,
    to_clips,
)

HEIGHT, WIDTH = 48, 64
VFR_PTS_MS = [0, 40, 80, 200, 240, 400, 410, 420, 900, 1000]


def _frame_image(index: int) -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)  # [H, W, 3]
    image[:, : WIDTH // 2] = (index % 32) * 8
    image[:, WIDTH // 2 :] = (index // 32) * 8
    return image


def _frame_indices(frames: torch.Tensor) -> list[int]:
    """Invert `_frame_image` on decoded (possibly resized) frames [T, H, W, 3]."""
    quarter = frames.shape[2] // 4
    low = frames[:, :, :quarter].float().mean(dim=(1, 2, 3)) / 8
    high = frames[:, :, -quarter:].float().mean(dim=(1, 2, 3)) / 8
    return (low.round() + 32 * high.round()).long().tolist()


def _write_video(
    path: Path,
    num_frames: int,
    fps: int,
    codec: str = "libx264",
    pts_ms: list[int] | None = None,
    gop_frames: int | None = None,
    container_options: dict | None = None,
) -> Path:
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if gop_frames:
            stream.codec_context.gop_size = gop_frames
        if pts_ms is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(_frame_image(index), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[index], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    return {
        "cfr30": _write_video(root / "cfr30.mp4", 60, 30, gop_frames=10),
        "cfr25": _write_video(root / "cfr25.mkv", 50, 25),
        "vfr": _write_video(root / "vfr.mkv", len(VFR_PTS_MS), 25, pts_ms=VFR_PTS_MS),
    }


# --- probe and full reads --------------------------------------------------------------


def test_probe_reads_header_or_counts_frames(videos):
    info = probe_video(videos["cfr30"])
    assert (info.fps, info.num_frames, info.width, info.height) == (30.0, 60, WIDTH, HEIGHT)
    assert info.duration_s == pytest.approx(2.0)
    assert info.path == videos["cfr30"]
    mkv = probe_video(videos["cfr25"])  # Matroska stores no frame count: counted
    assert (mkv.fps, mkv.num_frames) == (25.0, 50)
    assert mkv.duration_s == pytest.approx(2.0)


def test_read_all_frames_with_exact_timestamps(videos):
    frames, times_s = read_frames(videos["cfr30"])
    assert frames.dtype == torch.uint8 and frames.shape == (60, HEIGHT, WIDTH, 3)
    assert _frame_indices(frames) == list(range(60))
    assert times_s.dtype == np.float64
    np.testing.assert_allclose(times_s, np.arange(60) / 30, rtol=0, atol=1e-9)


# --- resampling ------------------------------------------------------------------------


def test_resample_30_to_10_takes_every_third_frame(videos):
    frames, times_s = read_frames(videos["cfr30"], fps=10)
    assert _frame_indices(frames) == list(range(0, 60, 3))
    np.testing.assert_allclose(times_s, np.arange(20) / 10, atol=1e-12)


def test_resample_holds_latest_frame_at_or_before_target(videos):
    # 25 -> 10 fps: target k/10 s takes frame floor(2.5 k); 25 -> 30 fps repeats frames.
    frames, times_s = read_frames(videos["cfr25"], fps=10)
    assert _frame_indices(frames) == [int(2.5 * k) for k in range(20)]
    frames, times_s = read_frames(videos["cfr25"], fps=30)
    assert _frame_indices(frames) == [k * 25 // 30 for k in range(60)]
    np.testing.assert_allclose(times_s, np.arange(60) / 30, atol=1e-12)


# --- resize, windows, streaming ---------------------------------------------------------


def test_resize_shorter_side_and_exact(videos):
    frames, _ = read_frames(videos["cfr30"], size=24)
    assert frames.shape == (60, 24, 32, 3)
    assert _frame_indices(frames) == list(range(60))
    frames, _ = read_frames(videos["cfr30"], fps=10, size=(20, 30))
    assert frames.shape == (20, 20, 30, 3)
    assert _frame_indices(frames) == list(range(0, 60, 3))


def test_windows_are_half_open_and_seek_correctly(videos):
    # keyframes every 10 frames, so start_s = 0.5 s seeks to frame 10 and skips 10..14
    frames, times_s = read_frames(videos["cfr30"], start_s=0.5, end_s=1.0)
    assert _frame_indices(frames) == list(range(15, 30))
    np.testing.assert_allclose(times_s, np.arange(15, 30) / 30, atol=1e-9)

    frames, times_s = read_frames(videos["cfr30"], fps=10, start_s=0.55, end_s=1.25)
    np.testing.assert_allclose(times_s, np.arange(6, 13) / 10, atol=1e-12)
    assert _frame_indices(frames) == list(range(18, 39, 3))

    # 25 fps: target 0.1 s (k=1) must take frame 2 at 0.08 s, before start_s
    frames, times_s = read_frames(videos["cfr25"], fps=10, start_s=0.1, end_s=0.3)
    assert _frame_indices(frames) == [2, 5]

    frames, times_s = read_frames(videos["cfr30"], start_s=5.0, size=24)
    assert frames.shape == (0, 24, 32, 3) and times_s.shape == (0,)

    with pytest.raises(ValueError, match="end_s"):
        read_frames(videos["cfr30"], start_s=1.0, end_s=1.0)


def test_streaming_chunks_equal_one_read(videos):
    for kwargs in ({}, {"fps": 12, "size": 24, "start_s": 0.3, "threads": 1}):
        whole, whole_times_s = read_frames(videos["cfr30"], **kwargs)
        chunks = list(iter_frames(videos["cfr30"], chunk_frames=7, **kwargs))
        assert all(len(f) == 7 for f, _ in chunks[:-1]) and 1 <= len(chunks[-1][0]) <= 7
        assert torch.equal(torch.cat([f for f, _ in chunks]), whole)
        np.testing.assert_array_equal(np.concatenate([t for _, t in chunks]), whole_times_s)


def test_streaming_stops_early_without_error(videos):
    stream = iter_frames(videos["cfr30"], chunk_frames=5)
    first, _ = next(stream)
    stream.close()
    assert _frame_indices(first) == [0, 1, 2, 3, 4]


def test_variable_frame_rate_timestamps_exact(videos):
    frames, times_s = read_frames(videos["vfr"])
    np.testing.assert_allclose(times_s, np.array(VFR_PTS_MS) / 1000, atol=1e-12)
    assert _frame_indices(frames) == list(range(len(VFR_PTS_MS)))
    # targets 0.0 .. 0.9 s take the latest frame at or before them
    frames, times_s = read_frames(videos["vfr"], fps=10, end_s=1.0)
    assert _frame_indices(frames) == [0, 2, 3, 4, 5, 7, 7, 7, 7, 8]
    np.testing.assert_allclose(times_s, np.arange(10) / 10, atol=1e-12)


# --- errors ----------------------------------------------------------------------------


def _assert_video_error(call, path: Path, words: str) -> None:
    with pytest.raises(VideoError, match=words) as caught:
        call(path)
    assert str(path) in str(caught.value)
    assert caught.value.path == path


def test_missing_and_non_video_files(tmp_path):
    _assert_video_error(read_frames, tmp_path / "absent.mp4", "not found")
    _assert_video_error(probe_video, tmp_path / "absent.mp4", "not found")
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    _assert_video_error(read_frames, noise, "cannot be opened as a video")
    _assert_video_error(probe_video, noise, "cannot be opened as a video")
    error = VideoError(noise, "some problem")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_truncated_files(tmp_path):
    # moov index at the end (the default): half a file cannot even be opened
    whole = _write_video(tmp_path / "whole.mp4", 60, 30).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: len(whole) // 2])
    _assert_video_error(probe_video, cut, "truncated or incomplete MP4/MOV")
    _assert_video_error(read_frames, cut, r"no readable index \(moov atom\)")
    # index first (faststart): opens, then decoding fails on the missing data
    fast = _write_video(tmp_path / "fast.mp4", 60, 30, container_options={"movflags": "faststart"})
    cut_fast = tmp_path / "cut_fast.mp4"
    cut_fast.write_bytes(fast.read_bytes()[: fast.stat().st_size // 2])
    _assert_video_error(read_frames, cut_fast, "truncated or corrupt")
    # Matroska decodes the first half silently; the declared duration gives it away
    mkv = _write_video(tmp_path / "long.mkv", 90, 30).read_bytes()
    cut_mkv = tmp_path / "cut.mkv"
    cut_mkv.write_bytes(mkv[: len(mkv) // 2])
    _assert_video_error(read_frames, cut_mkv, "truncated: decoding ended")


def test_audio_only_and_zero_length(tmp_path):
    audio = tmp_path / "audio.m4a"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(5):
            silence = np.zeros((1, 1024), np.float32)  # [channels, samples]
            samples = av.AudioFrame.from_ndarray(silence, format="fltp", layout="mono")
            samples.sample_rate, samples.pts = 16000, index * 1024
            container.mux(stream.encode(samples))
        container.mux(stream.encode())
    _assert_video_error(read_frames, audio, r"no video stream \(streams found: audio\)")
    _assert_video_error(probe_video, audio, "no video stream")

    empty = tmp_path / "empty.avi"  # AVI keeps a video stream with no frames
    with av.open(str(empty), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        container.start_encoding()
    _assert_video_error(probe_video, empty, "zero-length")
    _assert_video_error(read_frames, empty, "zero-length")


# --- clips -----------------------------------------------------------------------------


def test_clip_sampler_hand_checked():
    sampler = ClipSampler(clip_frames=4, stride_frames=2)
    assert sampler.clip_starts(9).tolist() == [0, 2, 4, 6]
    assert sampler.clip_indices(9).tolist() == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 8]]
    np.testing.assert_allclose(sampler.feature_centers_s(9, fps=2.0), [1.0, 2.0, 3.0, 4.0])
    assert sampler.clip_indices(8).tolist()[-1] == [4, 5, 6, 7]  # exactly covered: no padding

    spaced = ClipSampler(clip_frames=3, stride_frames=4, frame_interval=2)  # windows of 6 frames
    assert spaced.clip_indices(10).tolist() == [[0, 2, 4], [4, 6, 8]]
    np.testing.assert_allclose(spaced.feature_centers_s(10, fps=10.0), [0.3, 0.7])

    short = ClipSampler()
    assert short.clip_indices(5).tolist() == [[0, 1, 2, 3, 4] + [4] * 11]
    with pytest.raises(ValueError, match="stride_frames"):
        ClipSampler(stride_frames=0)


def test_clip_sampler_matches_videomaev2_tad_and_actionformer():
    sampler = ClipSampler(clip_frames=16, stride_frames=4)
    for num_frames in (16, 100, 727):
        official = list(range(0, num_frames - 15, 4))
        starts = sampler.clip_starts(num_frames).tolist()
        assert starts[: len(official)] == official
        assert len(starts) - len(official) == (0 if (num_frames - 16) % 4 == 0 else 1)
        assert starts[-1] + 16 >= num_frames
    centers_s = sampler.feature_centers_s(727, fps=30.0)
    np.testing.assert_allclose(centers_s[:3], [8 / 30, 12 / 30, 16 / 30])


def test_normalize_and_to_clips():
    frames = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 2, 3, 3).contiguous() * 20
    x = normalize_clip(frames)
    assert x.shape == (10, 3, 2, 3) and x.dtype == torch.float32
    assert x[9, 1, 0, 0].item() == pytest.approx(180 / 255)
    y = normalize_clip(frames, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    torch.testing.assert_close(y, (x - 0.5) / 0.25)

    clips = to_clips(frames, ClipSampler(clip_frames=4, stride_frames=3))  # [N, 3, 4, H, W]
    assert clips.shape == (3, 3, 4, 2, 3)
    torch.testing.assert_close(clips[2, 0, :, 0, 0], torch.tensor([120, 140, 160, 180]) / 255.0)
    with pytest.raises(TypeError, match="uint8"):
        normalize_clip(frames.float())


# --- finding videos ----------------------------------------------------------------------


def test_find_videos(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("b.mp4", "a.MKV", "c.avi", "notes.txt", "d.webm"):
        (folder / name).write_bytes(b"")
    assert [p.name for p in find_videos(folder)] == ["a.MKV", "b.mp4", "c.avi", "d.webm"]
    assert find_videos(folder / "c.avi") == [folder / "c.avi"]

    listing = tmp_path / "list.txt"
    listing.write_text(f"# test set\nvideos/b.mp4\n\n{folder / 'c.avi'}\n")
    assert find_videos(listing) == [folder / "b.mp4", folder / "c.avi"]

    listing.write_text("videos/b.mp4\nvideos/missing.mp4\n")
    _assert_video_error(find_videos, listing, "line 2: videos/missing.mp4")
    (tmp_path / "empty").mkdir()
    _assert_video_error(find_videos, tmp_path / "empty", "no videos")
    _assert_video_error(find_videos, tmp_path / "nowhere", "not found")


# --- the shared real video ---------------------------------------------------------------


def test_shared_highjump_video(shared_data):
    path = shared_data / "videos" / "highjump.mp4"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames) == (320, 180, 727)
    assert info.fps == pytest.approx(30.0, abs=0.1)
    assert info.duration_s == pytest.approx(24.2, abs=0.05)

    frames, times_s = read_frames(path, fps=10, size=112)
    assert frames.shape == (242, 112, 199, 3)
    np.testing.assert_allclose(times_s, np.arange(242) / 10, atol=1e-12)

    # a seeked window equals the same part of a full read, frame for frame
    full, full_times_s = read_frames(path, end_s=12.0)
    window, window_times_s = read_frames(path, start_s=10.0, end_s=12.0)
    keep = full_times_s >= 10.0 - 1e-6
    assert len(window) == keep.sum() == 60
    np.testing.assert_array_equal(window_times_s, full_times_s[keep])
    assert torch.equal(window, full[torch.from_numpy(keep)])
