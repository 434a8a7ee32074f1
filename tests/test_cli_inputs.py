"""What a user types wrong gets one line naming the option or path and exit code 2, never a
traceback; and the subset a run evaluates is the subset of its own pipeline."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from e2etal.cli import main
from e2etal.config import load_config
from e2etal.experiment import ExperimentConfig, train
from synthetic_features import make_feature_dataset, tiny_config_overrides
from video_fixtures import make_video_dataset, tiny_video_overrides

README = Path(__file__).resolve().parents[1] / "README.md"


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    gt, feats = make_feature_dataset(root, num_train=4, num_val=2, length=(40, 50))
    cfg = load_config(ExperimentConfig, None, tiny_config_overrides(gt, feats, root / "run", epochs=1))
    train(cfg)
    return gt, feats, root / "run" / "last"


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    gt, folder = make_video_dataset(root, num_train=3, num_val=1)
    # The run evaluates its own training videos: `video.val_subset`, not `data.val_subset`.
    overrides = tiny_video_overrides(gt, folder, root / "run", "head_only", epochs=1) + ["video.val_subset=training"]
    train(load_config(ExperimentConfig, None, overrides))
    return gt, root / "run" / "last", overrides


def test_eval_checkpoint_of_a_video_run_scores_its_own_subset(video_run, capsys):
    gt, ckpt, _ = video_run
    assert main(["eval", "--checkpoint", str(ckpt), "--json"]) == 0
    capsys.readouterr()
    written = ckpt.parent / "predictions_last_training.json"  # named after the checkpoint and subset
    videos = set(json.loads(written.read_text())["results"])
    assert videos and videos <= {"clip0", "clip1", "clip2"}


def test_eval_with_a_config_of_another_method(features, video_run, tmp_path, capsys):
    _, _, feature_ckpt = features
    _, video_ckpt, overrides = video_run
    config = tmp_path / "video.yaml"
    config.write_text("method: head_only\n")
    assert main(["eval", str(config), "--checkpoint", str(feature_ckpt)] + [f"--set={o}" for o in overrides[1:3]]) == 2
    err = _error(capsys)
    assert "trained with method 'features'" in err and "'head_only'" in err and len(err.splitlines()) == 1


def test_checkpoint_predictions_of_best_and_last_do_not_overwrite_each_other(features, capsys):
    _, _, last = features
    assert main(["eval", "--checkpoint", str(last)]) == 0
    assert (last.parent / "predictions_last_validation.json").is_file()
    assert not (last.parent / "predictions_validation.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tiou", "0:1:0"], "NUM must be >= 1"),
        (["--tiou", "0.5,,0.7"], "empty item"),
        (["--tiou", "0.5:0.9"], "expected START:STOP:NUM"),
        (["--subset", ""], "--subset: expected a subset name"),
    ],
)
def test_eval_refuses_malformed_options(shared_data, capsys, args, message):
    gt = shared_data / "activitynet13" / "activitynet13.json"
    pred = shared_data / "activitynet13" / "sample_detection_prediction.json"
    assert main(["eval", "-g", str(gt), "-p", str(pred)] + args) == 2
    assert message in _error(capsys)


def test_eval_ground_truth_that_is_a_folder(tmp_path, capsys):
    assert main(["eval", "-g", str(tmp_path), "-p", str(tmp_path / "p.json")]) == 2
    err = _error(capsys)
    assert err == f"e2etal eval: error: {tmp_path}: is a folder; expected an annotation file (.json or .csv)"


def test_detect_top_must_be_positive(features, capsys):
    gt, feats, ckpt = features
    with pytest.raises(SystemExit) as e:
        main(["detect", "--features", str(feats / "video_000.npy"), "--checkpoint", str(ckpt), "--top", "-1"])
    assert e.value.code == 2
    assert "--top: expected a whole number >= 1, got -1" in _error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["train", "detect", "demo"])
def test_cuda_without_cuda_is_one_line(features, tmp_path, capsys, command):
    gt, feats, ckpt = features
    args = {
        "train": ["train", str(tmp_path / "none.yaml"), "--device", "cuda"],
        "detect": ["detect", "--features", str(feats / "video_000.npy"), "--checkpoint", str(ckpt), "--device", "cuda"],
        "demo": ["demo", "--out", str(tmp_path / "demo"), "--device", "cuda"],
    }[command]
    if command == "train":
        Path(args[1]).write_text("\n".join(f"{k}: {v}" for k, v in [("out_dir", tmp_path / "run")]) + "\n")
    assert main(args) == 2
    err = _error(capsys)
    assert "'cuda' asked for, but CUDA is not available" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "demo").exists()


def test_output_paths_under_a_file_fail_before_the_work(features, tmp_path, capsys):
    gt, feats, ckpt = features
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    under = blocker / "out"
    npy = str(feats / "video_000.npy")
    for args, option in [
        (["detect", "--features", npy, "--checkpoint", str(ckpt), "--out", str(under / "d.json")], "--out"),
        (["detect", "--features", npy, "--checkpoint", str(ckpt), "--plot", str(under / "d.png")], "--plot"),
        (["synth", "--out", str(under), "--videos", "1", "--val-videos", "1"], "--out"),
        (["train", "x.yaml"], "out_dir"),
    ]:
        if args[0] == "train":
            config = tmp_path / "x.yaml"
            overrides = tiny_config_overrides(gt, feats, under, epochs=1)
            config.write_text("")
            args = ["train", str(config)] + [f"--set={o}" for o in overrides]
        assert main(args) == 2, args
        err = _error(capsys)
        assert f"{option}: cannot create {under}" in err and f"{blocker} is a file, not a folder" in err, err


def test_finished_resumed_run_reports_the_epochs_it_ran(features, tmp_path, capsys):
    gt, feats, _ = features
    config = tmp_path / "c.yaml"
    config.write_text("")
    sets = [f"--set={o}" for o in tiny_config_overrides(gt, feats, tmp_path / "run", epochs=2)]
    sets.append("--set=train.warmup_epochs=1")
    assert main(["train", str(config)] + sets + ["--set=train.epochs=1"]) == 0
    assert capsys.readouterr().out.startswith("trained 1 epochs")
    assert main(["train", str(config)] + sets + ["--resume", str(tmp_path / "run" / "last")]) == 0
    assert capsys.readouterr().out.startswith("resumed after epoch 1 and trained epochs 2-2 (1)")
    assert main(["train", str(config)] + sets + ["--resume", str(tmp_path / "run" / "last")]) == 0
    assert "nothing to train" in capsys.readouterr().out


def test_nonfinite_features_are_listed_up_front_and_skippable(tmp_path):
    gt, feats = make_feature_dataset(tmp_path, num_train=5, num_val=2, length=(40, 50))
    for vid, value in (("video_001", np.nan), ("video_003", np.inf)):
        x = np.load(feats / f"{vid}.npy")
        x[7, 3] = value
        np.save(feats / f"{vid}.npy", x)
    cfg = load_config(ExperimentConfig, None, tiny_config_overrides(gt, feats, tmp_path / "run", epochs=1))
    with pytest.raises(ValueError) as e:
        train(cfg)
    msg = str(e.value)
    assert "2 of 5 feature files" in msg and "video_001.npy" in msg and "video_003.npy" in msg
    assert "NaN or infinity (first at step 7)" in msg
    cfg.data.skip_missing = True
    assert train(cfg).epochs_run == 1


def test_detect_warns_of_ground_truth_classes_the_checkpoint_lacks(features, tmp_path, capsys):
    gt, feats, ckpt = features
    database = json.loads(gt.read_text())["database"]
    database["video_000"]["annotations"].append({"label": "juggling", "segment": [1.0, 2.0], "label_id": 9})
    other = tmp_path / "gt.json"
    other.write_text(json.dumps({"database": database}))
    assert main(["detect", "--features", str(feats / "video_000.npy"), "--checkpoint", str(ckpt), "--fps", "30",
                 "--plot", str(tmp_path / "t.png"), "--ground-truth", str(other)]) == 0
    err = capsys.readouterr().err
    assert "video 'video_000' has ground truth of class(es) the checkpoint was not trained on" in err
    assert "juggling" in err


def test_train_help_mentions_raw_video_methods(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "losa" in out and "raw video" in out


def test_demo_help_and_readme_agree_on_its_time(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_range = re.search(r"demo\s+run the whole pipeline .*?\((\d+)-(\d+) minutes", capsys.readouterr().out, re.S)
    readme = README.read_text()
    quick_start = readme[readme.index("## Quick start"):readme.index("The world's four classes")]
    readme_minutes = [float(m) for m in re.findall(r"\d+\s+s\s+\((\d+(?:\.\d+)?)\s+minutes", quick_start)]
    assert help_range and readme_minutes
    low, high = int(help_range.group(1)), int(help_range.group(2))
    assert all(low - 1 <= minutes <= high + 1 for minutes in readme_minutes), (low, high, readme_minutes)
