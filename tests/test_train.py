import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from e2etal.cli import main
from e2etal.config import load_config
from e2etal.engine import load_checkpoint
from e2etal.experiment import ExperimentConfig, detect_features, evaluate_checkpoint, train
from synthetic_features import make_feature_dataset, tiny_config_overrides


@pytest.mark.slow
def test_training_on_synthetic_features_reaches_map(tmp_path):
    gt, feats = make_feature_dataset(tmp_path, num_train=60, num_val=10)
    cfg = load_config(ExperimentConfig, None, tiny_config_overrides(gt, feats, tmp_path / "run", epochs=20))
    result = train(cfg)
    assert result.epochs_run == 20
    assert result.last_metrics["mAP@0.50"] >= 0.9, result.last_metrics
    # the saved checkpoint reproduces the figure through the evaluation API
    res, dets = evaluate_checkpoint(tmp_path / "run" / "last", progress=False)
    assert res.mAP[2] == pytest.approx(result.last_metrics["mAP@0.50"])
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 21


def test_resume_reproduces_uninterrupted_run_exactly(tmp_path):
    gt, feats = make_feature_dataset(tmp_path, num_train=8, num_val=3, length=(60, 90))
    base = tiny_config_overrides(gt, feats, tmp_path / "full", epochs=4)
    full = load_config(ExperimentConfig, None, base + ["train.checkpoint_every=2", "model.dropout=0.1",
                                                       "model.drop_path=0.1", "data.max_seq_len=64", "model.max_seq_len=64"])
    train(full)
    resumed = load_config(ExperimentConfig, None, base + ["model.dropout=0.1", "model.drop_path=0.1",
                                                          "data.max_seq_len=64", "model.max_seq_len=64", f"out_dir={tmp_path / 'resumed'}"])
    train(resumed, resume=tmp_path / "full" / "epoch_0002")
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "full" / "last" / name))
        b = load_file(str(tmp_path / "resumed" / "last" / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # and the mid-run checkpoint really is mid-run
    mid = load_file(str(tmp_path / "full" / "epoch_0002" / "model.safetensors"))
    assert not all(torch.equal(mid[k], a[k]) for k in a)
    assert load_checkpoint(tmp_path / "resumed" / "last").state["epoch"] == 4


def test_checkpoint_layout_and_cli(tmp_path, capsys):
    gt, feats = make_feature_dataset(tmp_path, num_train=4, num_val=2, length=(60, 90))
    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\n")
    args = ["train", str(config)] + [a for o in tiny_config_overrides(gt, feats, tmp_path / "run", epochs=1) for a in ("--set", o)]
    assert main(args) == 0
    ckpt = tmp_path / "run" / "last"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "classes.json", "config.yaml", "ema.safetensors", "model.safetensors", "training_state.pt"]
    assert json.loads((ckpt / "classes.json").read_text()) == {"classes": ["action0", "action1", "action2"]}
    torch.load(ckpt / "training_state.pt", weights_only=True)  # nothing in it needs pickle
    assert (tmp_path / "run" / "best").is_dir()
    capsys.readouterr()

    assert main(["eval", "--checkpoint", str(ckpt), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["tiou"]) == 5 and 0 <= out["average_mAP"] <= 1
    written = json.loads((tmp_path / "run" / f"predictions_{ckpt.name}_validation.json").read_text())
    assert set(written) == {"version", "results", "external_data"}

    npy = feats / "video_004.npy"
    assert main(["detect", "--features", str(npy), "--checkpoint", str(ckpt), "--fps", "30", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["results"]["video_004"]
    assert all(0 <= r["segment"][0] < r["segment"][1] for r in res)
    dets = detect_features(npy, ckpt, fps=30.0)
    assert len(dets) == len(res)


def test_missing_feature_files_are_listed_up_front(tmp_path):
    gt, feats = make_feature_dataset(tmp_path, num_train=5, num_val=2, length=(40, 50))
    (feats / "video_001.npy").unlink()
    np.save(feats / "video_003.npy", np.zeros((10, 7), dtype=np.float32))
    cfg = load_config(ExperimentConfig, None, tiny_config_overrides(gt, feats, tmp_path / "run", epochs=1))
    with pytest.raises(ValueError) as e:
        train(cfg)
    msg = str(e.value)
    assert "2 of 5 feature files" in msg and "video_001.npy" in msg and "not found" in msg
    assert "video_003.npy" in msg and "expected 32 channels" in msg
    cfg.data.skip_missing = True
    cfg.train.epochs = 1
    assert train(cfg).epochs_run == 1


def test_model_and_data_mismatch_is_explained(tmp_path):
    gt, feats = make_feature_dataset(tmp_path, num_train=3, num_val=1, length=(40, 50))
    cfg = load_config(ExperimentConfig, None, tiny_config_overrides(gt, feats, tmp_path / "run") + ["model.num_classes=5"])
    with pytest.raises(ValueError, match=r"model.num_classes is 5 but .* has \d classes"):
        train(cfg)


CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_preset_configs_load_and_build(path):
    from e2etal.experiment import build_detector

    cfg = load_config(ExperimentConfig, path)
    assert cfg.model.max_seq_len % cfg.model.max_stride == 0
    if cfg.method == "features":
        assert cfg.model.input_dim == (cfg.data.feature_dim or cfg.model.input_dim)
        if cfg.data.resize_length:
            assert cfg.data.resize_length == cfg.model.max_seq_len
        build_detector(cfg)
    else:
        # Build on the meta device: the real ViT-g would take gigabytes; no weights file is read.
        cfg.backbone.checkpoint = None
        with torch.device("meta"):
            detector = build_detector(cfg)
        if cfg.method == "lofi":
            assert detector.encoder.tap_layout().width == cfg.model.input_dim
            assert cfg.lofi.schedule.full.snippets <= cfg.model.max_seq_len
            cfg.pipeline.schedule(cfg).describe()
        else:
            assert detector.backbone.width == cfg.model.input_dim
            assert cfg.video.frames_per_window // detector.backbone.frames_per_position <= cfg.model.max_seq_len
