"""Feature extraction on small videos written here with PyAV and a tiny ViT.

The reference features are computed independently: all frames at once with `read_frames`,
clip i sliced by hand as frames `[i * stride, i * stride + clip)` (the tail padded with the
last frame), scaled to [0, 1] and passed to `extract_features`. The `videomaev2-tad` recipe
is checked against `_official_tad_reference`, the steps of VideoMAEv2's
`extract_tad_feature.py` written out with PyAV and torch alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from e2etal import cli
from e2etal.backbones import VisionTransformer
from e2etal.data.video import ClipSampler, VideoError, read_frames
from e2etal import extract as extract_module
from e2etal.backbones import BACKBONES, build_backbone, module_sha256
from e2etal.extract import (
    SIDECAR_FORMAT,
    ExtractConfig,
    extract_features,
    extract_video,
    videomaev2_tad_resize,
)
from e2etal.data.streaming import stream_clips
from e2etal.synthetic import write_mp4

HEIGHT, WIDTH, FPS = 48, 64, 25
SIZE = 32


def _tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=SIZE, patch_size=16, num_frames=16, embed_dim=64, depth=2, num_heads=2)


def _write_video(path: Path, num_frames: int, seed: int = 0, height: int = HEIGHT, width: int = WIDTH) -> Path:
    """Smooth moving gradients (so that resizing and compression keep frames distinct)."""
    y, x = np.mgrid[0:height, 0:width]
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
        # THUMOS-14's 320 x 180: the recipe shrinks the width and stretches the height to 224.
        # 45 frames: official starts range(0, 30, 4), 8 clips; the default adds a padded 9th.
        "thumos": _write_video(root / "thumos.mp4", 45, seed=3, height=180, width=320),
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
            feats.append(vit.clip_features(x)[0])
        if i * stride + clip >= n:
            break
        i += 1
    return torch.stack(feats).numpy(), n


@pytest.mark.parametrize("cover_tail", [True, False])
def test_stream_clips_equals_sampler_clips(cover_tail):
    rng = np.random.default_rng(0)
    for clip, stride, micro, num_frames in [(16, 4, 3, 70), (16, 4, 1, 16), (16, 4, 5, 5), (8, 8, 2, 33),
                                           (4, 6, 2, 17), (16, 4, 64, 200), (2, 1, 7, 1), (16, 4, 2, 45)]:
        sampler = ClipSampler(clip_frames=clip, stride_frames=stride, cover_tail=cover_tail)
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
        if not got:  # whole clips only, and the video is shorter than one
            assert not cover_tail and num_frames < clip and expected.shape[0] == 0
            continue
        assert torch.equal(torch.cat(got), expected), (clip, stride, micro, num_frames)
        assert all(len(b.indices) == micro for b in batches[:-1])
        assert [b.first_clip for b in batches] == list(range(0, len(expected), micro))


def test_whole_clips_are_the_official_starts():
    official, default = ClipSampler(cover_tail=False), ClipSampler()
    for n in range(1, 400):
        starts = list(range(0, n - 15, 4))  # extract_tad_feature.py, THUMOS14
        assert official.num_clips(n) == len(starts) and official.clip_starts(n).tolist() == starts
        assert default.clip_starts(n).tolist()[: len(starts)] == starts
    assert sum(default.num_clips(n) != official.num_clips(n) for n in range(1, 400)) == 303  # the padded tail


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
    assert side["format"] == SIDECAR_FORMAT and side["recipe"] is None and side["seed"] is None
    assert report.short == [videos["short"]]  # warned about, still extracted as one padded clip
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
        def clip_features(self, clips):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        extract_features([videos["long"], videos["short"]], Broken(), tmp_path, ExtractConfig(size=SIZE),
                         progress=False)
    assert not [t for t in threading.enumerate() if t.name == "e2etal-decode"]


def test_presets_and_geometry_errors(videos, tmp_path):
    assert set(BACKBONES) == {"vit-tiny", "vit-s", "vit-b", "vit-l", "vit-h", "vit-g", "tsm-r18", "tsm-r50"}
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


# ---------------------------------------------------------------------------------------
# Random weights


def test_random_weights_are_seeded_and_resume_keys_on_them(videos, tmp_path):
    # A preset without checkpoint: random weights (a TSM: quicker to build than a ViT; one clip).
    cfg = ExtractConfig(size=SIZE, device="cpu")
    rng_state = torch.get_rng_state()
    first = extract_features([videos["short"]], "tsm-r18", tmp_path / "a", cfg, progress=False)
    second = extract_features([videos["short"]], "tsm-r18", tmp_path / "b", cfg, progress=False)
    assert torch.equal(torch.get_rng_state(), rng_state)  # drawn from a forked generator
    assert first.done == second.done == [videos["short"]]
    a, b = np.load(tmp_path / "a" / "short.npy"), np.load(tmp_path / "b" / "short.npy")
    assert a.shape == (1, 512) and np.array_equal(a, b)  # bit-identical
    side = json.loads((tmp_path / "a" / "short.json").read_text())
    assert side["seed"] == 0 and side["checkpoint_sha256"] is None and len(side["weights_sha256"]) == 64

    assert extract_features([videos["short"]], "tsm-r18", tmp_path / "a", cfg, progress=False).skipped == [
        videos["short"]
    ]
    other = ExtractConfig(size=SIZE, device="cpu", seed=1)
    redone = extract_features([videos["short"]], "tsm-r18", tmp_path / "a", other, progress=False)
    assert redone.done == [videos["short"]]
    resumed = json.loads((tmp_path / "a" / "short.json").read_text())
    assert resumed["seed"] == 1 and resumed["weights_sha256"] != side["weights_sha256"]
    assert not np.allclose(np.load(tmp_path / "a" / "short.npy"), a)

    built = build_backbone("tsm-r18", seed=1)
    assert built.seed == 1 and module_sha256(built.module) == resumed["weights_sha256"]


# ---------------------------------------------------------------------------------------
# The videomaev2-tad recipe

RECIPE = "videomaev2-tad"


def _tad_vit() -> VisionTransformer:
    """Tiny, but built as the official script builds its ViT: 224 px, 16 frames, tubelet 2
    (patch 32, so that a clip is only 8 x 7 x 7 tokens)."""
    torch.manual_seed(0)
    return VisionTransformer(img_size=224, patch_size=32, num_frames=16, embed_dim=64, depth=2, num_heads=2)


def _official_tad_reference(path: Path, vit: VisionTransformer, stride: int = 4) -> np.ndarray:
    """VideoMAEv2 `extract_tad_feature.py`, step by step, without e2etal's decoding or batching."""
    with av.open(str(path)) as container:  # every frame, native size, RGB24 (the script: decord)
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    feats = []
    for start in range(0, len(frames) - 15, stride):  # get_start_idx_range
        vid = torch.from_numpy(frames[start : start + 16])  # [16, H, W, 3]
        vid = vid.permute(3, 0, 1, 2).to(torch.float32) / 255  # to_normalized_float_tensor
        vid = F.interpolate(vid, size=(224, 224), mode="bilinear", align_corners=False)  # resize
        with torch.no_grad():  # forward_features: fc_norm(mean of the last block's tokens)
            feats.append(vit.clip_features(vid.unsqueeze(0))[0])
    return torch.stack(feats).numpy()


def test_videomaev2_tad_recipe_equals_official_steps(videos, monkeypatch):
    vit = _tad_vit()
    ref = _official_tad_reference(videos["thumos"], vit)
    assert ref.shape == (len(range(0, 45 - 15, 4)), 64) == (8, 64)

    feats, meta = extract_video(videos["thumos"], vit, ExtractConfig(recipe=RECIPE, device="cpu", micro_batch=3))
    np.testing.assert_allclose(feats, ref, rtol=1e-5, atol=1e-6)
    assert feats.dtype == np.float32 and meta["recipe"] == RECIPE and meta["dtype"] == "fp32"
    assert meta["num_frames"] == 45 and meta["num_features"] == 8 and meta["size"] == 224
    assert meta["step_s"] == pytest.approx(4 / FPS) and meta["offset_s"] == pytest.approx(8 / FPS)  # (4i + 8) / fps

    # Native frames decoded 5 at a time: the clips straddle the chunks, the features do not change.
    monkeypatch.setattr(extract_module, "_RECIPE_CHUNK_BYTES", 5 * 4 * 3 * 180 * 320)
    chunked, _ = extract_video(videos["thumos"], vit, ExtractConfig(recipe=RECIPE, device="cpu", micro_batch=2))
    np.testing.assert_allclose(chunked, ref, rtol=1e-5, atol=1e-6)

    default, _ = extract_video(videos["thumos"], vit, ExtractConfig(device="cpu"))
    assert default.shape == (9, 64)  # the default's padded tail clip


def test_videomaev2_tad_resize_is_the_per_clip_resize(videos):
    frames, _ = read_frames(videos["thumos"])  # [45, 180, 320, 3]
    resized = videomaev2_tad_resize(frames)  # [45, 224, 224, 3]
    for start in (0, 4, 28):
        clip = frames[start : start + 16].permute(3, 0, 1, 2).to(torch.float32) / 255
        official = F.interpolate(clip, size=(224, 224), mode="bilinear", align_corners=False)
        assert torch.equal(resized[start : start + 16].permute(3, 0, 1, 2), official)


def test_recipe_sidecar_and_fineaction_stride(videos, tmp_path):
    out = tmp_path / "features"
    vit = _tad_vit()
    report = extract_features([videos["thumos"], videos["short"]], vit, out,
                              ExtractConfig(recipe=RECIPE, device="cpu"), progress=False)
    assert report.done == [videos["thumos"]] and [v for v, _ in report.failed] == [videos["short"]]
    side = json.loads((out / "thumos.json").read_text())
    assert side["recipe"] == RECIPE and side["stride_frames"] == 4 and side["clip_frames"] == 16
    assert side["num_features"] == 8 and side["fps"] == pytest.approx(FPS)
    assert side["feature_center_s"] == "(i * stride_frames + clip_frames / 2) / fps"

    default = extract_features([videos["thumos"]], vit, out, ExtractConfig(size=224, device="cpu"), progress=False)
    assert default.done == [videos["thumos"]]  # recipe None -> videomaev2-tad: redone
    assert np.load(out / "thumos.npy").shape == (9, 64)

    fineaction, _ = extract_video(videos["thumos"], vit, ExtractConfig(recipe=RECIPE, stride_frames=16, device="cpu"))
    np.testing.assert_allclose(fineaction, _official_tad_reference(videos["thumos"], vit, stride=16),
                               rtol=1e-5, atol=1e-6)
    assert fineaction.shape == (len(range(0, 45 - 15, 16)), 64)


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 160}, r"size 160 \(--size; the recipe resizes to 224\)"),
    ({"fps": 30.0}, r"fps 30.0 \(--fps"),
    ({"clip_frames": 8}, r"clip_frames 8 \(--clip-frames"),
    ({"stride_frames": 8}, r"stride_frames 8 \(--stride; the recipe's are 4 \(THUMOS14\) or 16 \(FINEACTION\)\)"),
    ({"dtype": "bf16"}, r"dtype bf16 \(--dtype; the recipe runs fp32\)"),
])
def test_recipe_refuses_conflicting_options(kwargs, match):
    with pytest.raises(ValueError, match="recipe 'videomaev2-tad' reproduces the official VideoMAEv2 TAD"):
        ExtractConfig(recipe=RECIPE, **kwargs)
    with pytest.raises(ValueError, match=match):
        ExtractConfig(recipe=RECIPE, **kwargs)


def test_recipe_refuses_other_backbones(videos, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown recipe 'tad'; expected one of videomaev2-tad"):
        ExtractConfig(recipe="tad")
    cfg = ExtractConfig(recipe=RECIPE, device="cpu")
    with pytest.raises(ValueError, match="runs a VideoMAEv2 ViT.*got TSMResNet"):
        extract_video(videos["long"], BACKBONES["tsm-r18"](), cfg)
    with pytest.raises(ValueError, match="img_size=224, num_frames=16, tubelet_size=2.*this one has img_size=32"):
        extract_video(videos["long"], _tiny_vit(), cfg)

    base = ["extract", "--videos", str(videos["long"]), "--out", str(tmp_path / "out"), "--device", "cpu",
            "--recipe", RECIPE]
    assert cli.main([*base, "--backbone", "tsm-r18"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("e2etal extract: error: recipe 'videomaev2-tad' runs a VideoMAEv2 ViT; expected backbone")
    assert "vit-g" in err and "'tsm-r18'" in err
    assert cli.main([*base, "--backbone", "vit-s", "--size", "160"]) == 2
    assert "size 160 (--size; the recipe resizes to 224)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was made


# ---------------------------------------------------------------------------------------
# Videos shorter than one clip


def test_short_video_warns_and_recipe_reports_it_failed(videos, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="e2etal.extract"):
        feats, _ = extract_video(videos["short"], _tiny_vit(), ExtractConfig(size=SIZE, device="cpu"))
    assert feats.shape == (1, 64)
    assert "short.mp4: 12 frames, shorter than one 16-frame clip" in caplog.text and "padded" in caplog.text

    report = extract_features([videos["short"], videos["long"]], _tad_vit(), tmp_path,
                              ExtractConfig(recipe=RECIPE, device="cpu"), progress=False)
    assert report.done == [videos["long"]] and not report.short
    ((video, reason),) = report.failed
    assert video == videos["short"]
    assert reason.startswith("12 frames, shorter than one 16-frame clip: recipe 'videomaev2-tad' keeps whole clips")
    assert "range(0, num_frames - 15, 4)" in reason
    assert "failed: " in report.summary() and "short.mp4" in report.summary()
    assert not (tmp_path / "short.npy").exists()
    assert np.load(tmp_path / "long.npy").shape == (len(range(0, 70 - 15, 4)), 64)
    with pytest.raises(VideoError, match="short.mp4: 12 frames, shorter than one 16-frame clip"):
        extract_video(videos["short"], _tad_vit(), ExtractConfig(recipe=RECIPE, device="cpu"))


# ---------------------------------------------------------------------------------------
# The output folder


def test_cli_out_that_cannot_be_created_fails_before_any_work(videos, tmp_path, capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("called before the output folder was checked")

    for name in ("build_backbone", "iter_frames", "probe_video"):
        monkeypatch.setattr(extract_module, name, must_not_run)
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")
    checkpoint = tmp_path / "vit.pth"
    checkpoint.write_bytes(b"never read")
    for out, why in [(blocker / "features", f"cannot create {blocker / 'features'}: {blocker} is a file, not a folder"),
                     (blocker, f"{blocker} exists and is not a folder")]:
        argv = ["extract", "--videos", str(videos["long"]), "--backbone", "vit-s", "--checkpoint", str(checkpoint),
                "--out", str(out), "--device", "cpu"]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"e2etal extract: error: --out: {why}\n"

    argv = ["extract", "--videos", str(videos["long"]), "--backbone", "vit-s", "--checkpoint", str(checkpoint),
            "--seed", "3", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    assert "--seed draws random weights and has no effect with --checkpoint" in capsys.readouterr().err
