"""From windows' candidates to a video's detections: decoding and suppression are separate,
and every video gets exactly one post-processing pass over the candidates of all its
windows."""

import numpy as np
import pytest
import torch

import e2etal.detector as detector_module
from e2etal.detector import VideoDetections, suppress
from e2etal.experiment import run_detection
from e2etal.postprocess import PostprocessConfig, postprocess


def _window(video_id, segments, scores, labels, duration_s=60.0):
    return VideoDetections(video_id, np.asarray(segments, dtype=np.float64).reshape(-1, 2),
                           np.asarray(scores, dtype=np.float32), np.asarray(labels, dtype=np.int64), duration_s)


# Three overlapping windows of video "a" (the same action seen by two of them) and one of "b".
WINDOWS = [
    _window("a", [[10.0, 20.0], [30.0, 40.0]], [0.9, 0.5], [0, 1]),
    _window("b", [[1.0, 2.0]], [0.7], [0], duration_s=5.0),
    _window("a", [[10.5, 20.5], [55.0, 70.0]], [0.8, 0.6], [0, 0]),
    _window("a", [[31.0, 41.0]], [0.4], [1]),
]


def test_a_video_cut_into_windows_gets_one_pass_over_its_pooled_candidates(monkeypatch):
    calls = []
    real = detector_module.postprocess_videos

    def recording(candidates, cfg, durations_s=None):
        calls.append(([tuple(t.clone() for t in c) for c in candidates], list(durations_s)))
        return real(candidates, cfg, durations_s)

    monkeypatch.setattr(detector_module, "postprocess_videos", recording)
    cfg = PostprocessConfig()
    videos = suppress(WINDOWS, cfg)

    assert len(calls) == 1  # one pass for all videos, and inside it one entry per video
    (pooled, durations), = calls
    assert [v.video_id for v in videos] == ["a", "b"]
    assert durations == [60.0, 5.0]
    segments_a, scores_a, labels_a = pooled[0]
    np.testing.assert_array_equal(segments_a.numpy(), np.concatenate([w.segments_s for w in WINDOWS if w.video_id == "a"]))
    np.testing.assert_array_equal(scores_a.numpy(), np.float32([0.9, 0.5, 0.8, 0.6, 0.4]))
    np.testing.assert_array_equal(labels_a.numpy(), [0, 1, 0, 0, 1])


def test_pooled_scores_decay_once():
    cfg = PostprocessConfig(voting_iou=None)
    [a, b] = suppress(WINDOWS, cfg)
    segments = torch.tensor([[10.0, 20.0], [30.0, 40.0], [10.5, 20.5], [55.0, 70.0], [31.0, 41.0]], dtype=torch.float64)
    once = postprocess(segments, torch.tensor([0.9, 0.5, 0.8, 0.6, 0.4]), torch.tensor([0, 1, 0, 0, 1]), cfg, duration_s=60.0)
    np.testing.assert_allclose(a.scores, once[1].numpy())
    np.testing.assert_allclose(a.segments_s, once[0].numpy())
    # The window's copy of the first action decays exactly once, by exp(-tiou^2 / sigma).
    tiou = 9.5 / 10.5
    copy = int(np.flatnonzero((a.segments_s == [10.5, 20.5]).all(axis=1))[0])
    assert a.scores[copy] == pytest.approx(0.8 * np.exp(-tiou**2 / cfg.sigma), rel=1e-6)
    # Segments are clipped to the video's duration by the one pass.
    assert a.segments_s.max() <= 60.0 and b.segments_s.max() <= 5.0


class _Batch:
    def __init__(self, items):
        self.items = items

    def to(self, device):
        return self


class _WindowDetector(torch.nn.Module):
    """Returns the preset candidates of each window it is given."""

    def __init__(self):
        super().__init__()
        self.head = type("Head", (), {"cfg": type("Cfg", (), {"postprocess": PostprocessConfig()})()})()

    def detect(self, batch):
        return [WINDOWS[i] for i in batch.items]


def test_run_detection_suppresses_after_all_windows_of_a_video(monkeypatch):
    passes = []
    real = detector_module.postprocess_videos
    monkeypatch.setattr(detector_module, "postprocess_videos",
                        lambda c, cfg, d=None: passes.append(len(c)) or real(c, cfg, d))
    videos = run_detection(_WindowDetector(), list(range(len(WINDOWS))), _Batch, batch_size=2,
                           device=torch.device("cpu"), progress=False)
    assert passes == [2]
    assert [v.video_id for v in videos] == ["a", "b"]
    assert videos[0].scores.shape[0] == 5  # Soft-NMS decays the copies of "a"'s actions, drops none
