import numpy as np
import pytest
import torch

from e2etal.data.annotations import ClassMap, load_annotations
from e2etal.data.features import FeatureDataConfig, FeatureDataset, FeatureGrid, collate_features, feature_grid


def test_thumos14_grid_matches_actionformer_convention(shared_data):
    gt = load_annotations(shared_data / "thumos14" / "thumos14.json")
    video = gt.videos["video_test_0000004"]
    cfg = FeatureDataConfig(stride_frames=4, clip_frames=16)  # I3D: 16-frame clips every 4 frames at 30 fps
    grid = feature_grid(cfg, video)
    assert grid == FeatureGrid(offset_s=8 / 30, step_s=4 / 30)
    inst = video.instances[0]  # [0.2, 1.1] s
    coords = grid.to_feature(np.array([inst.start_s, inst.end_s]))
    # ActionFormer: seg * fps / stride - 0.5 * num_frames / stride
    np.testing.assert_allclose(coords, [0.2 * 30 / 4 - 2.0, 1.1 * 30 / 4 - 2.0])
    np.testing.assert_allclose(grid.to_seconds(coords), [0.2, 1.1])
    # feature i's centre is the centre of frames [4i, 4i + 16)
    assert grid.to_seconds(np.array(10.0)) == pytest.approx((10 * 4 + 8) / 30)


def test_fps_from_config_or_error(shared_data, tmp_path):
    gt = load_annotations(shared_data / "activitynet13" / "activitynet13.json")
    video = gt.videos["sJFgo9H6zNo"]
    assert feature_grid(FeatureDataConfig(fps=15.0, offset_frames=0.0), video) == FeatureGrid(0.0, 4 / 15)
    video.fps = None
    with pytest.raises(ValueError, match="'sJFgo9H6zNo' has no 'fps'; set data.fps"):
        feature_grid(FeatureDataConfig(), video)


def test_resized_grid_covers_duration(shared_data):
    gt = load_annotations(shared_data / "activitynet13" / "activitynet13.json")
    video = gt.videos["sJFgo9H6zNo"]  # 138.967 s
    grid = feature_grid(FeatureDataConfig(resize_length=192), video)
    assert grid.step_s == pytest.approx(138.967 / 192)
    assert grid.to_seconds(np.array(-0.5)) == pytest.approx(0.0)
    assert grid.to_seconds(np.array(191.5)) == pytest.approx(138.967)


def _dataset(tmp_path, length, instances, max_seq_len=64, training=True):
    import json

    (tmp_path / "f").mkdir(exist_ok=True)
    np.save(tmp_path / "f" / "v.npy", np.random.default_rng(0).normal(size=(length, 4)).astype(np.float32))
    anns = [{"label": "a", "segment": list(s)} for s in instances]
    (tmp_path / "gt.json").write_text(json.dumps({"database": {"v": {
        "subset": "training", "duration": (length * 4 + 16) / 30, "fps": 30, "annotations": anns}}}))
    gt = load_annotations(tmp_path / "gt.json")
    cfg = FeatureDataConfig(annotations=str(tmp_path / "gt.json"), feature_dir=str(tmp_path / "f"), max_seq_len=max_seq_len)
    return FeatureDataset(cfg, gt, "training", ClassMap(("a",)), training=training, seed=3)


def test_training_crop_is_reproducible_and_consistent(tmp_path):
    grid = FeatureGrid(8 / 30, 4 / 30)
    seconds = [tuple(grid.to_seconds(np.array([s, s + 10.0]))) for s in (20.0, 100.0, 180.0)]
    ds = _dataset(tmp_path, 256, seconds)
    item = ds[0]
    assert item.features.shape == (4, 64)
    assert len(item.segments) >= 1
    # the cropped grid maps the kept segments back to the same seconds
    back = item.grid.to_seconds(item.segments.double().numpy())
    assert any(np.allclose(b, s, atol=1e-4) for b in back for s in seconds)
    full = torch.from_numpy(np.load(tmp_path / "f" / "v.npy")).t()
    start = round((item.grid.offset_s - 8 / 30) / (4 / 30))
    assert torch.equal(item.features, full[:, start:start + 64])
    again = ds[0]
    assert torch.equal(again.features, item.features)

    def crop_start(epoch):
        ds.set_epoch(epoch)
        return round((ds[0].grid.offset_s - 8 / 30) / (4 / 30))

    starts = [crop_start(e) for e in range(6)]
    assert len(set(starts)) > 1  # each epoch draws its own crop ...
    assert starts == [crop_start(e) for e in range(6)]  # ... and the same one every time


def test_eval_dataset_is_not_cropped_and_collate_masks(tmp_path):
    ds = _dataset(tmp_path, 100, [(1.0, 2.0)], training=False)
    item = ds[0]
    assert item.features.shape == (4, 100)
    batch = collate_features([item, item], pad_multiple=32)
    assert batch.features.shape == (2, 4, 128) and batch.mask.sum(1).tolist() == [100, 100]
    assert torch.all(batch.features[:, :, 100:] == 0)


def test_nonfinite_features_are_reported(tmp_path):
    ds = _dataset(tmp_path, 50, [(1.0, 2.0)])
    bad = np.load(tmp_path / "f" / "v.npy")
    bad[3, 1] = np.nan
    np.save(tmp_path / "f" / "v.npy", bad)
    with pytest.raises(ValueError, match="v.npy: video 'v': features contain NaN"):
        ds[0]


def test_crop_ratio_crops_short_videos_reproducibly(tmp_path):
    ds = _dataset(tmp_path, 50, [(1.0, 3.0)], max_seq_len=64)
    ds.cfg.crop_ratio = (0.5, 0.6)
    lengths = {ds[0].features.shape[1] for _ in range(3)}
    assert len(lengths) == 1 and 25 <= lengths.pop() <= 30
