"""The synthetic world: determinism, valid ground truth, decodable files, and classes that
need motion (single frames are uninformative, simple motion features are not)."""

import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch

from e2etal import load_annotations
from e2etal.cli import synth_cmd
from e2etal.data.video import probe_video, read_frames
from e2etal.synthetic import CLASS_NAMES, WorldConfig, make_trimmed_clips, make_world, render_clip, render_video
from e2etal.synthetic.world import _layout

TINY = WorldConfig(
    height=32, width=32, fps=8, num_classes=6, train_videos=2, val_videos=1,
    min_video_s=8.0, max_video_s=10.0, min_instances=1, max_instances=3,
)


def test_render_video_is_deterministic():
    frames, instances = render_video(TINY, seed=5)
    again, instances_again = render_video(TINY, seed=5)
    other, _ = render_video(TINY, seed=6)
    assert frames.dtype == torch.uint8 and frames.shape[1:] == (32, 32, 3)
    assert torch.equal(frames, again) and instances == instances_again
    assert other.shape != frames.shape or not torch.equal(other, frames)
    assert torch.equal(render_clip(TINY, 3, seed=9), render_clip(TINY, 3, seed=9))


@pytest.mark.parametrize("seed", range(8))
def test_instances_lie_on_the_frame_grid_inside_the_video(seed):
    frames, instances = render_video(TINY, seed)
    duration_s = frames.shape[0] / TINY.fps
    assert TINY.min_video_s - 1 / TINY.fps <= duration_s <= TINY.max_video_s + 1 / TINY.fps
    assert 1 <= len(instances) <= TINY.max_instances
    previous_end = 0.0
    for inst in instances:
        assert inst.label in TINY.class_names
        for t in (inst.start_s, inst.end_s):
            assert t * TINY.fps == pytest.approx(round(t * TINY.fps), abs=1e-9)
        assert 0 < inst.start_s < inst.end_s < duration_s
        assert TINY.min_instance_s - 0.5 / TINY.fps <= inst.end_s - inst.start_s <= TINY.max_instance_s + 0.5 / TINY.fps
        assert inst.start_s - previous_end >= TINY.min_gap_s - 1e-9 or previous_end == 0.0
        previous_end = inst.end_s


def test_default_layout_has_close_neighbours_and_varied_lengths():
    cfg = WorldConfig()
    gaps, lengths = [], []
    for seed in range(60):
        rng = np.random.default_rng(seed)
        spans = _layout(rng, cfg, num_frames=30 * cfg.fps)
        lengths += [(end - start) / cfg.fps for start, end in spans]
        gaps += [(b[0] - a[1]) / cfg.fps for a, b in zip(spans, spans[1:])]
    assert min(gaps) >= cfg.min_gap_s - 1e-9
    assert sum(g <= cfg.close_gap_s for g in gaps) >= 0.15 * len(gaps)  # hard, nearby boundaries
    assert min(lengths) < cfg.min_instance_s + 0.5 and max(lengths) > cfg.max_instance_s - 0.5  # 1.5-4 s
    assert max(lengths) > 2 * min(lengths)


def test_make_world_writes_decodable_videos_and_valid_ground_truth(tmp_path):
    out = make_world(tmp_path / "world", TINY, seed=3, progress=False)
    world = json.loads((out / "world.json").read_text())
    gt = load_annotations(out / "annotations.json")
    raw = json.loads((out / "annotations.json").read_text())["database"]

    assert sorted(gt.videos) == ["train_000", "train_001", "val_000"]
    assert gt.subsets == ["training", "validation"]
    assert WorldConfig(**world["config"]) == TINY and world["seed"] == 3  # world.json rebuilds the config
    assert [c["label"] for c in world["classes"]] == list(TINY.class_names)
    for vid, video in gt.videos.items():
        assert video.fps == TINY.fps and raw[vid]["fps"] == TINY.fps
        for inst, entry in zip(video.instances, raw[vid]["annotations"]):
            assert 0 <= inst.start_s < inst.end_s <= video.duration_s
            assert entry["label_id"] == CLASS_NAMES.index(inst.label)  # stable across worlds

    record = world["videos"]["train_001"]
    path = out / record["file"]
    info = probe_video(path)
    decoded, times_s = read_frames(path)
    expected, instances = render_video(TINY, record["seed"])
    assert info.fps == pytest.approx(TINY.fps) and (info.height, info.width) == (32, 32)
    assert decoded.shape == expected.shape == (record["num_frames"], 32, 32, 3)
    assert times_s == pytest.approx(np.arange(len(times_s)) / TINY.fps, abs=1e-3)
    assert gt.videos["train_001"].duration_s == pytest.approx(expected.shape[0] / TINY.fps)
    assert gt.videos["train_001"].instances == instances
    error = (decoded.float() - expected.float()).abs().mean().item()
    assert error < 8, f"decoded frames differ from the rendered ones by {error:.1f} on average"

    again = make_world(tmp_path / "again", TINY, seed=3, progress=False)
    assert (again / "annotations.json").read_bytes() == (out / "annotations.json").read_bytes()
    assert (again / "videos" / "val_000.mp4").read_bytes() == (out / "videos" / "val_000.mp4").read_bytes()


def test_make_world_refuses_foreign_videos(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "old_999.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="old_999.mp4"):
        make_world(tmp_path, TINY, progress=False)
    assert not (tmp_path / "annotations.json").exists()


@pytest.fixture(scope="module")
def clip_set():
    cfg = dataclasses.replace(TINY, clip_frames=16)
    clips, labels = make_trimmed_clips(cfg, 360, seed=0)
    return cfg, clips, labels


def test_trimmed_clips_are_balanced_and_deterministic(clip_set):
    cfg, clips, labels = clip_set
    assert clips.dtype == torch.uint8 and clips.shape == (360, 16, 32, 32, 3)
    assert labels.dtype == torch.long and torch.bincount(labels, minlength=cfg.num_classes).tolist() == [60] * 6
    few, few_labels = make_trimmed_clips(cfg, 7, seed=0)
    again, again_labels = make_trimmed_clips(cfg, 7, seed=0)
    assert torch.equal(few, again) and torch.equal(few_labels, again_labels)
    assert np.ptp(torch.bincount(few_labels, minlength=6).numpy()) <= 1


def _nearest_class_mean_accuracy(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Fit class means on the first half (standardised features), score on the second half."""
    features = features.double()
    half = len(labels) // 2
    mean, std = features[:half].mean(0), features[:half].std(0) + 1e-6
    features = (features - mean) / std
    centres = torch.stack([features[:half][labels[:half] == k].mean(0) for k in range(num_classes)])
    predicted = torch.cdist(features[half:], centres).argmin(1)
    return (predicted == labels[half:]).double().mean().item()


def _colour_histogram(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> [N, 64]: 4 x 4 x 4 RGB bins."""
    q = (frames.long() // 64).reshape(len(frames), -1, 3)
    index = q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]
    hist = torch.zeros(len(frames), 64).scatter_add_(1, index, torch.ones(index.shape))
    return hist / index.shape[1]


def _motion_features(clips: torch.Tensor) -> torch.Tensor:
    """[N, T, H, W, 3] -> [N, F]: on a soft mask of object pixels (far from the frame's median
    colour, the background), the temporal spectrum of the masked area and how well each frame
    is predicted by the previous one shifted by -3..3 px horizontally and vertically."""
    x = clips.float()
    background = x.flatten(2, 3).median(2).values[:, :, None, None]  # [N, T, 1, 1, 3]
    mask = (((x - background).abs().amax(-1) - 40) / 40).clamp(0, 1)  # [N, T, H, W]
    area = mask.mean((2, 3))
    spectrum = torch.fft.rfft(area - area.mean(1, keepdim=True), dim=1).abs()
    spectrum = spectrum / (spectrum.sum(1, keepdim=True) + 1e-6)
    profiles = []
    for dim in (3, 2):
        errors = torch.stack([(mask[:, 1:] - torch.roll(mask[:, :-1], s, dims=dim)).abs().mean((1, 2, 3))
                              for s in range(-3, 4)], 1)
        profiles.append(errors / errors.mean(1, keepdim=True))
    return torch.cat([spectrum, *profiles], 1)


def test_single_frames_do_not_tell_the_class_but_motion_does(clip_set):
    cfg, clips, labels = clip_set
    chance = 1 / cfg.num_classes
    pick = torch.from_numpy(np.random.default_rng(0).integers(0, clips.shape[1], len(clips)))
    frames = clips[torch.arange(len(clips)), pick]  # one random frame per clip, [N, H, W, 3]
    tiny_image = torch.nn.functional.adaptive_avg_pool2d(frames.permute(0, 3, 1, 2).float(), 4).flatten(1)
    single = {
        "colour histogram": _colour_histogram(frames),
        "4x4 mean image": tiny_image,
        "both": torch.cat([_colour_histogram(frames), tiny_image / 255], 1),
    }
    for name, features in single.items():
        accuracy = _nearest_class_mean_accuracy(features, labels, cfg.num_classes)
        assert accuracy < chance + 0.1, f"a single frame's {name} gives {accuracy:.2f} (chance {chance:.2f})"
    motion = _nearest_class_mean_accuracy(_motion_features(clips), labels, cfg.num_classes)
    assert motion > 2 * chance, f"motion features give only {motion:.2f} (chance {chance:.2f})"


def test_cli_writes_a_world(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="e2etal")
    synth_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "synth", "--out", str(tmp_path), "--seed", "2", "--videos", "1", "--val-videos", "1", "--classes", "4",
        "--fps", "6", "--size", "24", "--min-duration", "7", "--max-duration", "8", "--clips", "4", "--quiet",
    ])
    assert args.func(args) == 0
    assert "wrote 1 training + 1 validation videos" in capsys.readouterr().err
    gt = load_annotations(tmp_path / "annotations.json")
    assert sorted(gt.videos) == ["train_000", "val_000"]
    assert set(gt.classes.names) <= set(CLASS_NAMES[:4])
    info = probe_video(tmp_path / "videos" / "val_000.mp4")
    assert (info.width, info.height, round(info.fps)) == (24, 24, 6)
    clips = load_annotations(tmp_path / "clips.json")
    assert len(clips.videos) == 4 and all(len(v.instances) == 1 for v in clips.videos.values())
    assert read_frames(tmp_path / "clips" / "clip_00000.mp4")[0].shape == (16, 24, 24, 3)
    world = json.loads((tmp_path / "world.json").read_text())
    assert world["config"]["num_classes"] == 4 and world["config"]["fps"] == 6


@pytest.mark.parametrize("change, field", [
    ({"height": 33}, "height"), ({"fps": 7.5}, "fps"), ({"num_classes": 99}, "num_classes"),
    ({"min_video_s": 3.0}, "min_video_s"), ({"max_instances": 0}, "max_instances"),
    ({"object_size": (0.2, 0.1)}, "object_size"), ({"object_size": 0.1}, "object_size"),
    ({"background_contrast": (-1.0, 5.0)}, "background_contrast"),
])
def test_config_errors_name_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(TINY, **change)


def test_object_size_and_background_contrast_shape_the_frames():
    flat = dataclasses.replace(TINY, background_contrast=[0.0, 0.0], num_distractors=0)
    assert flat.background_contrast == (0.0, 0.0)  # lists (YAML, JSON) become tuples
    frames, _ = render_video(flat, seed=3)
    first = frames[0].float()
    # a flat background: most pixels sit within sensor noise of the frame's median colour
    near_median = (first - first.flatten(0, 1).median(0).values).abs().amax(-1) <= 8
    assert near_median.float().mean() > 0.8
    textured, _ = render_video(dataclasses.replace(flat, background_contrast=(30.0, 30.0)), seed=3)
    assert textured[0].float().std() > 2 * first.std()

    def object_pixels(size):
        cfg = dataclasses.replace(flat, object_size=size)
        clips, _ = make_trimmed_clips(cfg, 12, seed=5)
        background = clips.float().flatten(2, 3).median(2).values[:, :, None]  # [N, T, 1, 3]
        return ((clips.float().flatten(2, 3) - background).abs().amax(-1) > 40).float().mean()

    assert object_pixels((0.2, 0.25)) > 3 * object_pixels((0.06, 0.08))

    grey = dataclasses.replace(flat, object_saturation=(0.0, 0.0), object_value=(0.94, 0.94), object_size=(0.2, 0.25))
    clips, _ = make_trimmed_clips(grey, 6, seed=5)
    bright = clips.float().amin(-1) > 200  # every channel bright: only the grey objects
    assert bright.float().mean() > 0.05
    pixels = clips.float()[bright]  # [P, 3]
    assert (pixels.amax(-1) - pixels.amin(-1)).mean() < 12  # R = G = B up to noise and coding


def test_background_colour_ranges_set_the_base_colour():
    flat = dataclasses.replace(TINY, background_contrast=(0.0, 0.0), num_distractors=0,
                               background_saturation=[0.0, 0.0], background_value=[0.35, 0.35])
    assert flat.background_value == (0.35, 0.35)
    for seed in (1, 2):
        frames, _ = render_video(flat, seed=seed)
        median = frames[0].float().flatten(0, 1).median(0).values  # [3]
        assert (median - 0.35 * 255).abs().max() <= 3, median  # grey at value 0.35, whatever the seed
    bright, _ = render_video(dataclasses.replace(flat, background_value=(0.8, 0.8)), seed=1)
    assert bright[0].float().flatten(0, 1).median(0).values.min() > 190
    with pytest.raises(ValueError, match="background_value"):
        dataclasses.replace(TINY, background_value=(0.5, 1.5))


@pytest.mark.parametrize("name, axis, sign", [("move_left", 0, -1), ("move_right", 0, 1), ("move_up", 1, -1), ("move_down", 1, 1)])
def test_glides_move_straight_along_their_axis(name, axis, sign):
    from e2etal.synthetic.motions import ACTION_CLASSES, CLASS_NAMES, Canvas

    canvas = Canvas(64, 64)
    for seed in range(5):
        actor, bystander = ACTION_CLASSES[CLASS_NAMES.index(name)].motion(np.random.default_rng(seed), 24, 8.0, canvas)
        along, across = (actor.x, actor.y) if axis == 0 else (actor.y, actor.x)
        steps = np.diff(along)
        assert np.all(sign * steps > 0) and np.allclose(steps, steps[0])  # constant speed, one way
        assert abs(steps[0]) * 8.0 >= 0.2 * canvas.side  # >= 0.2 sides/s for a 3 s instance
        assert np.ptp(across) == 0  # straight
        wander = np.hypot(np.diff(bystander.x), np.diff(bystander.y)).sum()  # px the bystander's walk covers
        assert abs(along[-1] - along[0]) > 2 * wander  # the glide stands out from idle motion
