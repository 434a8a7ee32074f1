import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from e2etal.config import load_config
from e2etal.data.annotations import load_annotations
from e2etal.data.video import to_clips
from e2etal.data.windows import VideoWindows, collate_windows
from e2etal.backbones import tsm_resnet18
from e2etal.experiment import (
    ExperimentConfig,
    build_datasets,
    build_detector,
    detect_video,
    evaluate_checkpoint,
    load_detector,
    train,
)
from video_fixtures import FPS, TSM_R18_OVERRIDES, make_video_dataset, tiny_video_overrides

BACKBONES = {"vit": [], "tsm-r18": TSM_R18_OVERRIDES}  # extra overrides per backbone


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return make_video_dataset(tmp_path_factory.mktemp("videos"))


def _cfg(videos, tmp_path, *extra, method="losa", epochs=2):
    gt, folder = videos
    return load_config(ExperimentConfig, None, tiny_video_overrides(gt, folder, tmp_path / "run", method, epochs) + list(extra))


def test_windows_tile_videos_on_clip_boundaries(videos, tmp_path):
    cfg = _cfg(videos, tmp_path)
    gt = load_annotations(cfg.video.annotations)
    ds = VideoWindows(cfg.video, gt, "validation", gt.classes, training=False)
    # 80 frames, windows of 48 every 24 frames: starts 0, 24, then 32 to reach the end
    assert [w.start_frame for w in ds.windows if w.video_id == "clip4"] == [0, 24, 32]
    item = ds[1]
    assert item.clips.shape == (12, 3, 4, 32, 32) and item.num_positions == 24
    # position j of the window starting at frame 24 is centred on frames 24 + 2j .. 24 + 2j + 1
    assert item.grid.to_seconds(np.array(0.0)) == pytest.approx(25 / FPS)
    assert item.grid.step_s == pytest.approx(2 / FPS)
    # the window's clips equal the same frames of a whole-video read
    whole = to_clips(torch.cat(list(ds.open_video("clip4")[1])), ds.sampler)
    assert torch.equal(item.clips, whole[6:18])


def test_training_windows_are_reproducible_and_augmented(videos, tmp_path):
    cfg = _cfg(videos, tmp_path)
    gt = load_annotations(cfg.video.annotations)
    ds = VideoWindows(cfg.video, gt, "training", gt.classes, training=True, seed=1)
    a, b = ds[0], ds[0]
    assert a.start_frame % cfg.video.clip_frames == 0 and a.start_frame == b.start_frame
    assert torch.equal(a.clips, b.clips)
    assert (a.segments >= -0.5).all() and (a.segments <= a.num_positions - 0.5).all()
    plain = VideoWindows(dataclasses.replace(cfg.video, augment=False), gt, "training", gt.classes, training=True, seed=1)
    b = plain[0]
    assert b.start_frame == a.start_frame and not torch.equal(a.clips, b.clips)  # same window, augmented


@pytest.mark.parametrize("backbone", BACKBONES)
def test_gradients_reach_adapters_and_head_only(videos, tmp_path, backbone):
    cfg = _cfg(videos, tmp_path, *BACKBONES[backbone])
    gt = load_annotations(cfg.video.annotations)
    detector = build_detector(cfg)
    for p in detector.adapters.parameters():  # move off the zero-initialised fusion scale
        if p.ndim == 1 and torch.all(p == 0):
            p.data.normal_()
    ds = VideoWindows(cfg.video, gt, "training", gt.classes, training=True)
    batch = collate_windows([ds[0], ds[1]], pad_multiple=cfg.model.max_stride)
    detector.train()
    detector.losses(batch)["loss"].backward()
    assert all(p.grad is None for p in detector.backbone.parameters())
    assert not detector.backbone.backbone.training
    for name, p in list(detector.adapters.named_parameters()) + list(detector.head.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in detector.adapters.parameters())


def test_checkpoint_holds_no_backbone_weights_and_reloads(videos, tmp_path):
    cfg = _cfg(videos, tmp_path, epochs=1)
    train(cfg)
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    assert weights and not any(k.startswith("backbone.") for k in weights)
    result, dets = evaluate_checkpoint(tmp_path / "run" / "last", progress=False)
    assert result.mAP.shape == (5,)
    assert set(dets.video) <= {"clip4", "clip5"}


def test_incompatible_resume_names_the_differing_entries_briefly(videos, tmp_path):
    train(_cfg(videos, tmp_path, "losa.short_conv_kernel=3", epochs=1))
    with pytest.raises(ValueError) as e:
        train(_cfg(videos, tmp_path, "losa.reduction=2", epochs=2), resume=tmp_path / "run" / "last")
    msg = str(e.value)
    assert "last: cannot resume: its weights do not fit this model" in msg
    assert "losa.reduction: 4 -> 2" in msg and "losa.short_conv_kernel: 3 -> None" in msg
    assert "of another shape" in msg and len(msg.splitlines()) <= 3 and len(msg) < 1500
    # An optimizer state that does not fit is named the same way, not by torch's text.
    state = torch.load(tmp_path / "run" / "last" / "training_state.pt", weights_only=True)
    state["optimizer"]["param_groups"][0]["params"].pop()
    torch.save(state, tmp_path / "run" / "last" / "training_state.pt")
    with pytest.raises(ValueError, match=r"last: cannot resume: its optimizer state does not fit this model"):
        train(_cfg(videos, tmp_path, "losa.short_conv_kernel=3", epochs=2), resume=tmp_path / "run" / "last")


def _losses(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("method,backbone", [("losa", "vit"), ("head_only", "vit"), ("losa", "tsm-r18")])
def test_tap_cache_gives_the_same_losses(videos, tmp_path, method, backbone):
    extra = ["video.augment=false", *BACKBONES[backbone]]
    cache = f"video.tap_cache={tmp_path / 'cache'}"
    train(_cfg(videos, tmp_path / "plain", *extra, method=method))
    train(_cfg(videos, tmp_path / "cached", *extra, cache, method=method))
    np.testing.assert_allclose(_losses(tmp_path / "cached" / "run"), _losses(tmp_path / "plain" / "run"), rtol=1e-5)
    files = list((tmp_path / "cache").glob("*/*.safetensors"))
    assert len(files) == 6  # every video once
    # a second run reuses the cache; changing a setting that determines the taps starts a new one
    train(_cfg(videos, tmp_path / "again", *extra, cache, method=method))
    assert len(list((tmp_path / "cache").glob("*/*.safetensors"))) == 6
    train(_cfg(videos, tmp_path / "other", *extra, "frozen.grid=1", cache, method=method))
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_tap_cache_refuses_augmentation(videos, tmp_path):
    cfg = _cfg(videos, tmp_path, f"video.tap_cache={tmp_path / 'cache'}")
    with pytest.raises(ValueError, match="tap_cache needs video.augment=false"):
        train(cfg)


def test_detect_on_a_video_file_with_plot(videos, tmp_path, capsys, shared_data):
    from e2etal.cli import main

    train(_cfg(videos, tmp_path, epochs=1))
    gt, folder = videos
    ckpt = tmp_path / "run" / "last"
    out, png = tmp_path / "res.json", tmp_path / "timeline.png"
    assert main(["detect", str(folder / "clip5.mp4"), "--checkpoint", str(ckpt), "--out", str(out),
                 "--plot", str(png), "--ground-truth", str(gt)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("clip5: ")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads(out.read_text())["results"]["clip5"]
    assert all(0 <= r["segment"][0] < r["segment"][1] <= 8.0 for r in res)

    # a real untrimmed video of another size and frame rate: decoded, resampled to the
    # checkpoint's 10 fps and 32 px, windows merged; its own ground truth in the plot
    real = shared_data / "videos"
    assert main(["detect", str(real / "highjump.mp4"), "--checkpoint", str(ckpt), "--plot", str(tmp_path / "hj.png"),
                 "--ground-truth", str(real / "highjump.json"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["results"].get("highjump", [])
    assert all(0 <= r["segment"][0] < r["segment"][1] <= 24.3 and r["label"] in ("left", "right") for r in res)
    assert (tmp_path / "hj.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("method", ["losa", "head_only"])
def test_tsm_resnet_trains_and_detects_on_a_video_file(videos, tmp_path, method):
    # Weights in the official TSM layout, loaded (weights-only) by the TSM-ResNet path, at
    # training and again when the checkpoint is reloaded for detection.
    torch.manual_seed(123)
    weights = tsm_resnet18().state_dict()
    official = {"module.base_model." + k.replace(".conv1.", ".conv1.net."): v for k, v in weights.items()}
    torch.save({"state_dict": official}, tmp_path / "tsm_r18.pth")
    cfg = _cfg(videos, tmp_path, *TSM_R18_OVERRIDES, f"backbone.checkpoint={tmp_path / 'tsm_r18.pth'}",
               method=method, epochs=1)

    detector = build_detector(cfg)
    for k, v in detector.backbone.backbone.state_dict().items():
        assert torch.equal(v, weights[k]), k
    if method == "losa":  # stages 2, 3, 4: each adapter reads only its stage's channels
        adapters = [*detector.adapters.short, *detector.adapters.long]
        assert [a.tap_width for a in adapters] == [128, 256, 512] * 2
    gt = load_annotations(cfg.video.annotations)
    (ds,) = build_datasets(cfg, gt, gt.classes, detector, torch.device("cpu"), [("validation", False)])
    item = ds[1]  # the window of clip4 starting at frame 24
    tapped, last = detector.backbone(item.clips)
    assert item.num_positions == tapped.shape[0] == last.shape[0] == 48  # one position per frame
    assert item.grid.step_s == pytest.approx(1 / FPS)
    assert item.grid.to_seconds(np.array(0.0)) == pytest.approx(24.5 / FPS)

    train(cfg)
    reloaded, _, _ = load_detector(tmp_path / "run" / "last", device="cpu")
    for k, v in reloaded.backbone.backbone.state_dict().items():
        assert torch.equal(v, weights[k]), k
    dets = detect_video(videos[1] / "clip5.mp4", tmp_path / "run" / "last", progress=False)
    assert len(dets.video) > 0 and set(dets.video) == {"clip5"}
    assert (dets.start_s >= 0).all() and (dets.start_s < dets.end_s).all() and (dets.end_s <= 8.0).all()
    assert set(dets.label) <= {"left", "right"}
