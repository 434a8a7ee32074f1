"""Data-parallel training under torchrun: 2 CPU processes over gloo give the single
process's weights, evaluation and checkpoints (`e2etal.distributed`)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from e2etal.config import load_config
from e2etal.distributed import rank_part
from e2etal.experiment import ExperimentConfig, train
from synthetic_features import make_feature_dataset, tiny_config_overrides
from video_fixtures import lofi_overrides, make_video_dataset, tiny_video_overrides

pytestmark = pytest.mark.slow


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


def e2etal_train(overrides: list[str], *extra: str) -> subprocess.CompletedProcess:
    return torchrun(["-m", "e2etal", "train", "none.yaml", *(f"--set={o}" for o in overrides), *extra])


def assert_same_weights(a_dir, b_dir, names=("model.safetensors",)):
    # The ranks' gradients are summed in another order than one process sums them; AdamW's
    # normalisation lifts those float differences on near-zero gradients to ~1e-5 a step.
    for name in names:
        a, b = load_file(str(a_dir / name)), load_file(str(b_dir / name))
        assert a.keys() == b.keys(), name
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4, msg=f"{name}: {k}")


def test_rank_parts_cover_a_batch_in_order():
    assert [rank_part(list(range(10)), r, 4) for r in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert [rank_part([5, 6], r, 2) for r in range(2)] == [[5], [6]]


def test_one_process_draws_the_batches_earlier_runs_were_trained_on():
    from e2etal.engine.trainer import Trainer, TrainConfig

    trainer = Trainer.__new__(Trainer)  # only the batch drawing, no model
    trainer.cfg, trainer.batch_sampler, trainer.train_set = TrainConfig(batch_size=3), None, list(range(10))
    trainer.world, trainer.rank = 1, 0
    # the order of the trainer that measured research/README.md's figures (seed 1234)
    assert [trainer._rank_batches(e) for e in range(2)] == [[[2, 3, 6], [4, 8, 7], [0, 1, 5], [9]],
                                                           [[1, 0, 3], [5, 8, 7], [6, 2, 4], [9]]]
    # drawing them leaves alone the global RNG that dropout and drop path use
    trainer.collate = list
    state = torch.random.get_rng_state()
    assert sum(map(len, trainer._loader(0))) == 10
    assert torch.equal(torch.random.get_rng_state(), state)
    trainer.world, trainer.rank = 2, 1
    assert trainer._rank_batches(0) == [[6], [7], [5]]  # rank 1's parts; the last batch (1 item) is left out


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return make_feature_dataset(tmp_path_factory.mktemp("features"), num_train=8, num_val=3, length=(60, 90))


def _feature_overrides(features, out_dir, epochs=4, *extra):
    gt, feats = features
    # A global batch of 3 over 2 ranks is split 2 + 1, the last batch of an epoch (2) 1 + 1.
    return tiny_config_overrides(gt, feats, out_dir, epochs=epochs) + [
        "train.batch_size=3", "train.checkpoint_every=2", "data.max_seq_len=64", "model.max_seq_len=64",
        "train.device=cpu", *extra]


def test_two_ranks_train_the_single_process_weights_and_resume_in_one(features, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "none.yaml").write_text("name: ddp\n")
    single = load_config(ExperimentConfig, None, _feature_overrides(features, tmp_path / "one"))
    train(single)
    e2etal_train(_feature_overrides(features, tmp_path / "two"))
    assert_same_weights(tmp_path / "one" / "last", tmp_path / "two" / "last", ("model.safetensors", "ema.safetensors"))
    # the losses logged on rank 0 are those of the global batch
    rows = [line.split(",") for line in (tmp_path / "two" / "metrics.csv").read_text().splitlines()]
    ref = [line.split(",") for line in (tmp_path / "one" / "metrics.csv").read_text().splitlines()]
    col = ref[0].index("train_loss")
    assert [float(r[col]) for r in rows[1:]] == pytest.approx([float(r[col]) for r in ref[1:]], rel=1e-4)
    # a checkpoint written by 2 ranks resumes in 1 process and ends where the 1-process run did
    resumed = load_config(ExperimentConfig, None, _feature_overrides(features, tmp_path / "resumed"))
    train(resumed, resume=tmp_path / "two" / "epoch_0002")
    assert_same_weights(tmp_path / "one" / "last", tmp_path / "resumed" / "last", ("model.safetensors", "ema.safetensors"))
    # and one written by 1 process resumes in 2
    e2etal_train(_feature_overrides(features, tmp_path / "resumed2"), "--resume", str(tmp_path / "one" / "epoch_0002"))
    assert_same_weights(tmp_path / "one" / "last", tmp_path / "resumed2" / "last")


def test_evaluation_over_two_ranks_is_the_single_process_one(features, tmp_path, capsys):
    from e2etal.cli import main

    run = load_config(ExperimentConfig, None, _feature_overrides(features, tmp_path / "run", 2))
    train(run)
    ckpt = str(tmp_path / "run" / "last")
    assert main(["eval", "--checkpoint", ckpt, "--json", "--out", str(tmp_path / "one.json")]) == 0
    one = json.loads(capsys.readouterr().out)
    done = torchrun(["-m", "e2etal", "eval", "--checkpoint", ckpt, "--json", "--out", str(tmp_path / "two.json")])
    (line,) = done.stdout.strip().splitlines()  # rank 0 alone prints
    # exactly: the 3 videos are split 2 + 1 over the ranks, none twice, none dropped
    assert json.loads(line) == one
    predictions = json.loads((tmp_path / "two.json").read_text())
    assert predictions == json.loads((tmp_path / "one.json").read_text()) and len(predictions["results"]) == 3


def test_a_batch_below_the_world_size_is_refused(features, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "none.yaml").write_text("name: ddp\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "e2etal",
           "train", "none.yaml", *(f"--set={o}" for o in _feature_overrides(features, tmp_path / "run", 1,
                                                                             "train.batch_size=1"))]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "train.batch_size is 1, below the world size 2" in done.stderr
    assert "Traceback" not in done.stderr.split("train.batch_size is 1")[0][-2000:]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return make_video_dataset(tmp_path_factory.mktemp("ddp-videos"), num_train=4, num_val=2)


def test_losa_on_two_ranks_fills_the_tap_cache_once_and_trains_the_single_process_weights(videos, tmp_path,
                                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "none.yaml").write_text("name: ddp\n")
    gt, folder = videos

    def overrides(name):
        return tiny_video_overrides(gt, folder, tmp_path / name, "losa", epochs=2) + [
            f"video.tap_cache={tmp_path / ('cache-' + name)}", "video.augment=false", "train.device=cpu"]

    train(load_config(ExperimentConfig, None, overrides("one")))
    done = e2etal_train(overrides("two"))
    assert done.stdout.count("trained 2 epochs") == 1  # rank 0 alone reports
    assert_same_weights(tmp_path / "one" / "last", tmp_path / "two" / "last")
    (key,) = (tmp_path / "cache-two").iterdir()
    assert sorted(p.stem for p in key.glob("*.safetensors")) == [f"clip{i}" for i in range(6)]


def test_lofi_on_two_ranks_runs_every_stage_as_one_process_does(videos, tmp_path, monkeypatch):
    from e2etal.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "lofi.yaml").write_text("name: ddp-lofi\n")

    def sets(name):
        # batches of 4 snippet sequences over 2 ranks; the head of stage 3 in batches of 2
        return [f"--set={o}" for o in lofi_overrides(videos, tmp_path / name, "long_c", 1)] + [
            "--set=lofi.schedule.batch=4", "--set=lofi.head_train.epochs=1", "--set=lofi.head_train.warmup_epochs=1",
            "--set=lofi.head_train.batch_size=2", "--set=lofi.head_train.eval_every=0", "--set=train.device=cpu"]

    assert main(["lofi", "lofi.yaml", *sets("one"), "--no-progress"]) == 0
    done = torchrun(["-m", "e2etal", "lofi", "lofi.yaml", *sets("two"), "--no-progress"])
    assert done.stdout.count("LoFi - untouched") == 1
    one, two = tmp_path / "one", tmp_path / "two"
    assert_same_weights(one / "stage2" / "last", two / "stage2" / "last")
    for name in ("features_base", "features_lofi"):  # each video extracted once, by one of the ranks
        assert sorted(p.name for p in (two / name).glob("*.npy")) == [f"clip{i}.npy" for i in range(6)]
        for f in (one / name).glob("*.npy"):
            np.testing.assert_allclose(np.load(f), np.load(two / name / f.name), rtol=1e-4, atol=1e-5)
    for name in ("head_base", "head_lofi"):
        assert_same_weights(one / name / "last", two / name / "last")
    assert set(json.loads((two / "report.json").read_text())) >= {"untouched_encoder", "lofi_encoder"}


def test_lofi_sharded_by_fsdp2_trains_the_single_process_weights_and_resumes_across_world_sizes(tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "none.yaml").write_text("name: fsdp\n")
    videos = make_video_dataset(tmp_path / "data", num_train=5, num_val=3)

    def overrides(name):
        # SGD with momentum and an EMA (state to shard and gather); a global batch of 5 split 3 + 2 and
        # micro-batches of 5 snippets, so the ranks run the encoder's blocks different
        # numbers of times a step; a gradient norm clipped on every step (over all the shards);
        # 3 validation videos split 2 + 1, evaluated every epoch.
        return lofi_overrides(videos, tmp_path / name, "long_c", 2) + [
            "lofi.fsdp=true", "lofi.schedule.batch=5", "lofi.micro_batch=5", "train.momentum=0.9",
            "train.lr=0.05", "train.clip_grad_norm=0.05", "train.ema_decay=0.9", "train.eval_every=1",
            "train.checkpoint_every=1", "eval.batch_size=1", "train.device=cpu"]

    train(load_config(ExperimentConfig, None, overrides("one")))  # one process: lofi.fsdp has nothing to shard
    done = e2etal_train(overrides("two"))
    held, total = map(int, re.search(r"FSDP2: .* rank 0 holds (\d+) of the model's (\d+) param", done.stderr).groups())
    assert 0.45 * total <= held <= 0.55 * total  # about half (a shard of an odd dim 0 has its extra row)
    names = ("model.safetensors", "ema.safetensors")
    assert_same_weights(tmp_path / "one" / "last", tmp_path / "two" / "last", names)
    ref, two = ([line.split(",") for line in (tmp_path / n / "metrics.csv").read_text().splitlines()]
                for n in ("one", "two"))
    col = ref[0].index("average_mAP")
    assert [float(r[col]) for r in two[1:]] == pytest.approx([float(r[col]) for r in ref[1:]], abs=1e-6)
    # a sharded run's checkpoint (whole tensors) resumes in one process, and one process's in a sharded run
    train(load_config(ExperimentConfig, None, overrides("resumed")), resume=tmp_path / "two" / "epoch_0001")
    assert_same_weights(tmp_path / "one" / "last", tmp_path / "resumed" / "last", names)
    e2etal_train(overrides("resumed2"), "--resume", str(tmp_path / "one" / "epoch_0001"))
    assert_same_weights(tmp_path / "one" / "last", tmp_path / "resumed2" / "last", names)
