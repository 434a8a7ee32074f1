"""`read_frames_at`: the frames shown at given times, converting only those."""

import numpy as np
import pytest
import torch

import e2etal.data.video as video_module
from e2etal.data.video import read_frames, read_frames_at
from e2etal.synthetic import write_mp4

FPS, SECONDS, SIDE = 10, 20, 32


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """A 20 s video whose frame k shows its number in two base-16 digits, as grey levels
    8 + 16 d of its top and bottom halves (steps of 16 survive H.264 at CRF 17)."""
    frames = torch.zeros(FPS * SECONDS, SIDE, SIDE, 3, dtype=torch.uint8)
    for k in range(len(frames)):
        frames[k, : SIDE // 2] = 8 + 16 * (k // 16)
        frames[k, SIDE // 2 :] = 8 + 16 * (k % 16)
    path = tmp_path_factory.mktemp("sparse") / "numbered.mp4"
    write_mp4(path, frames, FPS)
    return path


def frame_numbers(frames: torch.Tensor) -> list[int]:
    def digit(patch: torch.Tensor) -> int:
        return int(round((float(patch.float().mean()) - 8) / 16))

    half = SIDE // 2
    return [16 * digit(f[4 : half - 4, 4:-4]) + digit(f[half + 4 : -4, 4:-4]) for f in frames]


def test_frames_at_sparse_times_equal_a_full_resampled_read(numbered):
    times = [0.0, 0.05, 0.1, 3.33, 3.35, 9.0, 9.0, 15.7, 19.95, 25.0]
    sparse = read_frames_at(numbered, times)
    full, stamps = read_frames(numbered, fps=100)  # every 10 ms: the frame shown then
    expected = torch.stack([full[min(len(full) - 1, int(round(t * 100)))] for t in times])
    assert torch.equal(sparse, expected)
    assert frame_numbers(sparse) == [0, 0, 1, 33, 33, 90, 90, 157, 199, 199]


def test_only_the_frames_returned_are_converted(numbered, monkeypatch):
    converted = []
    real = video_module._to_rgb

    def counting(frame, out_hw):
        converted.append(frame.pts)
        return real(frame, out_hw)

    monkeypatch.setattr(video_module, "_to_rgb", counting)
    # 25 snippets of 8 frames, every 8th frame around each snippet's centre (a LoFi batch).
    centres = (np.arange(25) + 0.5) * SECONDS / 25
    times = sorted(float(c + (j - 3.5) * 0.1) for c in centres for j in range(8))
    frames = read_frames_at(numbered, times, size=(16, 16))
    assert frames.shape == (200, 16, 16, 3)
    assert len(converted) == len(set(converted)) == 200  # every frame once, nothing else


def test_times_must_be_ordered(numbered):
    with pytest.raises(ValueError, match="non-decreasing"):
        read_frames_at(numbered, [2.0, 1.0])
    with pytest.raises(ValueError, match=">= 0"):
        read_frames_at(numbered, [-1.0])
    assert read_frames_at(numbered, [], size=(8, 8)).shape == (0, 8, 8, 3)
