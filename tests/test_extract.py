"""Feature extraction on small videos written here with PyAV and a tiny ViT.

The reference features are computed independently: all frames at once with `read_frames`,
clip i sliced by hand as frames `[i * stride, i * stride + clip)` (the tail padded with the
last frame), scaled to [0, 1] and passed to `extract_features`.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from e2etal import cli
from e2etal.backbones import VisionTransformer
from e2etal.data.video import ClipSampler, VideoError, read_frames
from e2etal.extract import (
    BACKBONES,
    ExtractConfig,
    build_backbone,
    extract_features,
    extract_video,
    stream_clips,
)
from e2etal.synthetic import write_mp4

HEIGHT, WIDTH, FPS = 48, 64, 25
SIZE = 32


def _tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=SIZE, patch_size=16, num_frames=16, embed_dim=64, depth=2, num_heads=2)


def _write_video(path: Path, num_frames: int, seed: int = 0) -> Path:
    """Smooth moving gradients (so that resizing and compression keep frames distinct)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    phase = np.random.default_rng(seed).uniform(0, 6, size=3)
    frames = np.stack([np.stack([127 + 100 * np.sin(x / 9 + y / 13 + i / 3 + phase[c] + c) for c in range(3)], axis=-1)
                       for i in range(num_frames)]).astype(np.uint8)  # [T, H, W, 3]
    write_mp4(path, torch.from_numpy(frames), FPS)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("extract_videos")
    return {
        "long": _write_video(root / "long.mp4", 70, seed=1),  # 15 clips, the last padded
        "short": _write_video(root / "short.mp4", 12, seed=2),  # shorter than one clip
    }


def _reference(path: Path, vit: VisionTransformer, fps: float | None = None, clip: int = 16, stride: int = 4):
    frames, _ = read_frames(path, fps=fps, size=(SIZE, SIZE))  # [N, H, W, 3]
    n = frames.shape[0]
    feats = []
    i = 0
    while True:
        idx = [min(j, n - 1) for j in range(i * stride, i * stride + clip)]
        x = frames[idx].float().div(255).permute(3, 0, 1, 2)[None]  # [1, 3, clip, H, W]
        with torch.no_grad():
            feats.append(vit.extract_features(x)[0])
        if i * stride + clip >= n:
            break
        i += 1
    return torch.stack(feats).numpy(), n


def test_stream_clips_equals_sampler_clips():
    rng = np.random.default_rng(0)
    for clip, stride, micro, num_frames in [(16, 4, 3, 70), (16, 4, 1, 16), (16, 4, 5, 5), (8, 8, 2, 33),
                                           (4, 6, 2, 17), (16, 4, 64, 200), (2, 1, 7, 1)]:
        sampler = ClipSampler(clip_frames=clip, stride_frames=stride)
        frames = torch.arange(num_frames)  # frame j is the value j
        cuts = np.sort(rng.choice(np.arange(1, num_frames), size=min(5, num_frames - 1), replace=False))
        chunks = [c.reshape(-1, 1, 1, 1) for c in torch.tensor_split(frames, cuts.tolist())]
        gen = stream_clips(chunks, sampler, micro)
        got, batches = [], []
        while True:
            try:
                batch = next(gen)
            except StopIteration as done:
                assert done.value == num_frames
                break
            batches.append(batch)
            assert batch.frames.shape[0] <= (micro - 1) * stride + clip  # only what the clips need
            got.append(batch.frames[batch.indices].reshape(batch.indices.shape))
        expected = frames[sampler.clip_indices(num_frames)]
        assert torch.equal(torch.cat(got), expected), (clip, stride, micro, num_frames)
        assert all(len(b.indices) == micro for b in batches[:-1])
        assert [b.first_clip for b in batches] == list(range(0, len(expected), micro))


def test_features_equal_independent_computation(videos):
    vit = _tiny_vit()
    feats, meta = extract_video(videos["long"], vit, ExtractConfig(size=SIZE, micro_batch=4, device="cpu"))
    ref, n = _reference(videos["long"], vit)
    assert n == 70 and feats.dtype == np.float32
    assert feats.shape == (ClipSampler().num_clips(70), 64) == (15, 64)
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5)
    assert meta["num_frames"] == 70 and meta["fps"] == pytest.approx(FPS) and meta["fps_requested"] is None
    assert meta["offset_s"] == pytest.approx(8 / FPS) and meta["step_s"] == pytest.approx(4 / FPS)
    assert meta["dtype"] == "fp32" and meta["mean"] is None

    short, meta = extract_video(videos["short"], vit, ExtractConfig(size=SIZE, device="cpu"))
    np.testing.assert_allclose(short, _reference(videos["short"], vit)[0], rtol=1e-4, atol=1e-5)
    assert short.shape == (1, 64) and meta["num_frames"] == 12


@pytest.mark.parametrize("fps", [None, 10.0])
def test_streaming_equals_whole_video(videos, fps):
    vit = _tiny_vit()
    one_by_one, _ = extract_video(videos["long"], vit, ExtractConfig(fps=fps, size=SIZE, micro_batch=1, device="cpu"))
    all_at_once, meta = extract_video(videos["long"], vit, ExtractConfig(fps=fps, size=SIZE, micro_batch=1000,
                                                                         device="cpu"))
    np.testing.assert_allclose(one_by_one, all_at_once, rtol=1e-4, atol=1e-5)
    ref, n = _reference(videos["long"], vit, fps=fps)
    np.testing.assert_allclose(all_at_once, ref, rtol=1e-4, atol=1e-5)
    assert meta["num_frames"] == n and meta["fps"] == pytest.approx(fps or FPS)


def test_sidecar_and_resume(videos, tmp_path):
    vit = _tiny_vit()
    out = tmp_path / "features"
    cfg = ExtractConfig(size=SIZE, device="cpu")
    report = extract_features([videos["long"], videos["short"]], vit, out, cfg, progress=False)
    assert report.done == [videos["long"], videos["short"]] and not report.failed and not report.skipped
    assert report.num_frames == 70 + 12
    feats = np.load(out / "long.npy")
    assert feats.shape == (15, 64) and feats.dtype == np.float32
    side = __import__("json").loads((out / "long.json").read_text())
    assert side["fps"] == pytest.approx(FPS) and side["stride_frames"] == 4 and side["clip_frames"] == 16
    assert side["size"] == SIZE and side["num_frames"] == 70 and side["num_features"] == 15
    assert side["backbone"] == "VisionTransformer" and side["checkpoint_sha256"] is None
    assert side["feature_center_s"] == "(i * stride_frames + clip_frames / 2) / fps"
    assert len(side["weights_sha256"]) == 64  # an in-memory module is identified by its weights
    assert sorted(p.name for p in out.iterdir()) == ["long.json", "long.npy", "short.json", "short.npy"]

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = extract_features([videos["long"], videos["short"]], vit, out, cfg, progress=False)
    assert again.skipped == [videos["long"], videos["short"]] and not again.done and again.num_frames == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    (out / "short.npy").unlink()  # an interrupted video is redone, the finished one is not
    again = extract_features([videos["long"], videos["short"]], vit, out, cfg, progress=False)
    assert again.done == [videos["short"]] and again.skipped == [videos["long"]]

    changed = extract_features([videos["long"]], vit, out, ExtractConfig(size=SIZE, stride_frames=8, device="cpu"),
                               progress=False)
    assert changed.done == [videos["long"]]
    assert np.load(out / "long.npy").shape == (8, 64)  # 1 + ceil((70 - 16) / 8)

    with torch.no_grad():
        vit.fc_norm.bias.add_(1.0)  # other weights, same settings: redone
    assert extract_features([videos["short"]], vit, out, cfg, progress=False).done == [videos["short"]]


def test_corrupt_file_is_reported_and_others_done(videos, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    garbage = tmp_path / "garbage.mkv"
    garbage.write_bytes(b"not a video at all" * 50)
    out = tmp_path / "out"
    report = extract_features([corrupt, videos["short"], garbage, videos["long"]], _tiny_vit(), out,
                              ExtractConfig(size=SIZE, device="cpu"), progress=False)
    assert report.done == [videos["short"], videos["long"]]
    assert [video for video, _ in report.failed] == [corrupt, garbage]
    assert "truncated or incomplete MP4" in report.failed[0][1]
    assert "corrupt.mp4" in report.summary() and "garbage.mkv" in report.summary()
    assert not (out / "corrupt.npy").exists() and not (out / "corrupt.json").exists()
    with pytest.raises(VideoError, match="garbage.mkv"):
        extract_video(garbage, _tiny_vit(), ExtractConfig(size=SIZE, device="cpu"))


def test_backbone_error_stops_run_and_decoder_thread(videos, tmp_path):
    class Broken(torch.nn.Module):
        def extract_features(self, clips):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        extract_features([videos["long"], videos["short"]], Broken(), tmp_path, ExtractConfig(size=SIZE),
                         progress=False)
    assert not [t for t in threading.enumerate() if t.name == "e2etal-decode"]


def test_presets_and_geometry_errors(videos, tmp_path):
    assert set(BACKBONES) == {"vit-s", "vit-b", "vit-l", "vit-h", "vit-g", "tsm-r18", "tsm-r50"}
    with pytest.raises(ValueError, match="unknown backbone 'vit-x'.*vit-b"):
        build_backbone("vit-x")
    with pytest.raises(ValueError, match="size 40 is not a multiple of this ViT's patch size 16; use 32 or 48"):
        extract_video(videos["short"], _tiny_vit(), ExtractConfig(size=40, device="cpu"))
    with pytest.raises(ValueError, match="micro_batch"):
        ExtractConfig(micro_batch=0)
    with pytest.raises(ValueError, match="would both write 'long.npy'"):
        extract_features([videos["long"], tmp_path / "long.mkv"], _tiny_vit(), tmp_path, progress=False)


def test_cli_directory_with_corrupt_file_and_checkpoint(videos, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("long", "short"):
        (folder / f"{name}.mp4").write_bytes(videos[name].read_bytes())
    (folder / "broken.mp4").write_bytes(videos["long"].read_bytes()[:600])  # cut inside the header
    (folder / "notes.txt").write_text("not a video")  # ignored: not a video extension
    checkpoint = tmp_path / "tsm.pth"
    torch.save({"state_dict": BACKBONES["tsm-r18"]().state_dict()}, checkpoint)
    out = tmp_path / "features"
    argv = ["extract", "--videos", str(folder), "--backbone", "tsm-r18", "--checkpoint", str(checkpoint),
            "--out", str(out), "--size", "32", "--stride", "8", "--micro-batch", "4", "--device", "cpu"]

    assert cli.main(argv) == 1
    printed = capsys.readouterr()
    assert "broken.mp4" in printed.out and "extracted 2" in printed.out and "failed 1" in printed.out
    side = __import__("json").loads((out / "short.json").read_text())
    assert side["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert side["backbone"] == "tsm-r18" and side["checkpoint"] == str(checkpoint)
    assert side["mean"] == [0.485, 0.456, 0.406] and side["stride_frames"] == 8
    assert np.load(out / "long.npy").shape == (8, 512)

    (folder / "broken.mp4").unlink()
    assert cli.main(argv) == 0
    assert "skipped 2" in capsys.readouterr().out
