"""LoFi's stage 2: the encoder trained through the TAL loss on snippets at the fidelity the
schedule gives each batch."""

import numpy as np
import pytest
import torch

import e2etal.data.video as video_module
from e2etal.backbones import tsm_resnet18, vit_small
from e2etal.config import load_config
from e2etal.data.annotations import load_annotations
from e2etal.data.snippets import FidelityBatches, SnippetDataset, collate_snippets, snippet_times
from e2etal.experiment import ExperimentConfig, build_detector, evaluate_checkpoint, train
from e2etal.lofi.fidelity import Fidelity, FidelitySchedule, LoFiScheduleConfig
from video_fixtures import lofi_overrides, make_video_dataset

TINY_VIT = {"img_size": 32, "patch_size": 16, "num_frames": 4, "embed_dim": 64, "depth": 4, "num_heads": 4}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return make_video_dataset(tmp_path_factory.mktemp("lofi_videos"))


def lofi_cfg(videos, tmp_path, *extra, schedule="long_c", epochs=2) -> ExperimentConfig:
    return load_config(ExperimentConfig, None, lofi_overrides(videos, tmp_path / "run", schedule, epochs, *extra))


def test_snippet_times_are_centred_and_evenly_spread():
    times = snippet_times(0.0, 10.0, 5, 4, 0.1)
    assert times.shape == (5, 4)
    np.testing.assert_allclose(times.mean(axis=1), [1.0, 3.0, 5.0, 7.0, 9.0])
    np.testing.assert_allclose(np.diff(times, axis=1), 0.1)
    assert snippet_times(0.0, 1.0, 1, 8, 0.2).min() == 0.0  # clamped at the start


def test_the_sampler_decodes_only_the_frames_a_fidelity_needs(videos, tmp_path, monkeypatch):
    cfg = lofi_cfg(videos, tmp_path)
    gt = load_annotations(cfg.video.annotations)
    converted = []
    real = video_module._to_rgb
    monkeypatch.setattr(video_module, "_to_rgb", lambda frame, hw: converted.append(hw) or real(frame, hw))
    ds = SnippetDataset(cfg.video, cfg.lofi, cfg.lofi.schedule.full, gt, "training", gt.classes, training=True)
    item = ds[(0, Fidelity(4, 16, 2))]  # T-LoFi-like: 4 snippets of 4 frames at 16 px
    assert item.clips.shape == (4, 3, 4, 16, 16)
    assert 0 < len(converted) <= 4 * 4 and set(converted) == {(16, 16)}  # 16 frames at most, of the 80
    converted.clear()
    full = ds[0]
    assert full.clips.shape == (16, 3, 4, 32, 32) and len(converted) <= 16 * 4
    # The ground truth is in snippet positions: snippet i is centred at (i + 1/2) * duration / 16.
    assert full.grid.step_s == pytest.approx(8.0 / 16) and full.grid.offset_s == pytest.approx(0.25)


def test_a_video_too_short_for_its_snippets_is_named(videos, tmp_path):
    cfg = lofi_cfg(videos, tmp_path, "lofi.schedule.snippets=100")
    gt = load_annotations(cfg.video.annotations)
    with pytest.raises(ValueError, match=r"clip0.mp4: video 'clip0' has 80 frames, fewer than the 100 snippets"):
        SnippetDataset(cfg.video, cfg.lofi, cfg.lofi.schedule.full, gt, "training", gt.classes, training=True)


def test_batches_follow_the_schedule_across_epochs():
    schedule = FidelitySchedule.from_config(LoFiScheduleConfig(name="short_c", snippets=16, size=32, batch=2,
                                                               switch_batches=2))
    sizes = FidelityBatches.epoch_sizes(5, schedule, epochs=2)
    assert sizes == [3, 3]
    epoch0 = list(FidelityBatches(5, schedule, 0, 0, torch.Generator().manual_seed(0)))
    epoch1 = list(FidelityBatches(5, schedule, 1, sizes[0], torch.Generator().manual_seed(1)))
    steps = [batch[0][1] for batch in epoch0 + epoch1]  # fidelity of steps 0..5, two batches each
    assert [f.snippets for f in steps] == [16, 16, 4, 4, 8, 8]
    assert sorted(i for batch in epoch0 for i, _ in batch) == list(range(5))


def _encoder_parameters(detector):
    return dict(detector.encoder.named_parameters())


@pytest.mark.parametrize("backbone", ["vit", "tsm-r18"])
def test_gradients_reach_the_trainable_layers_only(videos, tmp_path, backbone):
    extra = ["lofi.trainable_layers=1"]
    if backbone == "tsm-r18":
        extra += ["backbone.name=tsm-r18", "backbone.kwargs={}", "model.input_dim=512"]
    cfg = lofi_cfg(videos, tmp_path, *extra)
    detector = build_detector(cfg).train()
    gt = load_annotations(cfg.video.annotations)
    ds = SnippetDataset(cfg.video, cfg.lofi, cfg.lofi.schedule.full, gt, "training", gt.classes, training=True)
    batch = collate_snippets([ds[(0, Fidelity(8, 32, 2))], ds[(1, Fidelity(8, 32, 2))]], cfg.model.max_stride)
    detector.losses(batch)["loss"].backward()
    trainable = ("blocks.3.", "fc_norm.") if backbone == "vit" else ("layer4.",)  # the last block and what follows
    for name, p in _encoder_parameters(detector).items():
        if name.startswith(trainable):
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def _saved_bytes_and_grads(model, clips, checkpointing: bool):
    model.grad_checkpointing = checkpointing
    model.zero_grad()
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.clip_features(clips).square().sum()
    loss.backward()
    return sum(saved), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("build", [lambda: vit_small(**TINY_VIT), lambda: tsm_resnet18()])
def test_checkpointing_gives_the_same_gradients_with_fewer_saved_bytes(build):
    torch.manual_seed(0)
    model = build().train()
    clips = torch.randn(3, 3, 4, 32, 32)
    plain_bytes, plain = _saved_bytes_and_grads(model, clips, False)
    ckpt_bytes, ckpt = _saved_bytes_and_grads(model, clips, True)
    assert ckpt_bytes < plain_bytes / 2
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-4, atol=1e-5, msg=name)


def test_stage_two_trains_the_encoder_and_evaluates(videos, tmp_path):
    cfg = lofi_cfg(videos, tmp_path, schedule="short_c", epochs=2)
    before = {k: v.clone() for k, v in build_detector(cfg).encoder.state_dict().items()}
    result = train(cfg)
    assert result.epochs_run == 2
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert "batches" in rows[0] and "16x16px b2" in rows[1]  # the fidelities of each epoch are logged
    metrics, detections = evaluate_checkpoint(tmp_path / "run" / "last", device="cpu", progress=False)
    assert 0.0 <= metrics.average_mAP <= 1.0
    from safetensors.torch import load_file

    trained = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    changed = [k for k in before if not torch.equal(trained[f"encoder.{k}"], before[k])]
    assert changed  # the encoder's weights are trained and saved with the head
    from e2etal.experiment import detect_video

    dets = detect_video(videos[1] / "clip4.mp4", tmp_path / "run" / "last", device="cpu", progress=False)
    assert len(dets) and float(dets.end_s.max()) <= 8.0 and float(dets.start_s.min()) >= 0.0


def test_the_budget_chooser_never_picks_what_does_not_fit():
    from e2etal.lofi.budget import choose_fidelity

    full = Fidelity(100, 224, 16)
    from e2etal.lofi.fidelity import reduced_fidelities

    candidates = [full, *reduced_fidelities(full).values()]
    # A fake meter: memory grows with pixels per batch, 1 GB per 10^7 pixel-snippets.
    def meter(f: Fidelity) -> float | None:
        peak = f.batch * f.snippets * f.size * f.size / 1e7
        return None if peak > 6 else peak  # beyond 6 GB the device runs out of memory

    result = choose_fidelity(candidates, meter, budget_gb=4.0)
    assert result.choice is not None and result.choice.batch * result.choice.snippets * result.choice.size ** 2 / 1e7 <= 4.0
    assert all(peak is None or peak > 4.0 for f, peak in result.table[:-1])  # everything tried before did not fit
    assert result.choice == Fidelity(100, 224, 4)  # the highest fidelity first, then the largest batch that fits (2 GB)
    assert "OOM" in result.describe(4.0) and "chosen: 100 snippets x 224 px, batch 4" in result.describe(4.0)
    assert choose_fidelity(candidates, meter, budget_gb=0.001).choice is None


def test_on_a_cpu_the_budget_cannot_be_measured(videos, tmp_path):
    from e2etal.lofi.stages import fit_to_budget

    cfg = lofi_cfg(videos, tmp_path, "train.device=cpu")
    same, note = fit_to_budget(cfg, 16.0)
    assert same is cfg and "only be measured on a GPU" in note


def test_lofi_command_runs_every_stage_and_resumes_by_stage(videos, tmp_path, capsys):
    from safetensors.torch import load_file

    from e2etal.cli import main
    from e2etal.backbones import build_backbone
    from e2etal.data.snippets import SnippetDataset

    config = tmp_path / "lofi.yaml"
    config.write_text("name: tiny-lofi\n")
    sets = [f"--set={o}" for o in lofi_overrides(videos, tmp_path / "out", "long_c", 1)]
    sets += ["--set=lofi.head_train.warmup_epochs=1", "--set=lofi.head_train.batch_size=2",
             "--set=lofi.head_train.eval_every=0", "--set=train.tensorboard=false", "--set=train.device=cpu"]
    sets_one = sets + ["--set=lofi.head_train.epochs=1"]
    assert main(["lofi", str(config), *sets_one, "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert "untouched encoder" in printed.out and "LoFi encoder" in printed.out
    assert "stage 2 fidelity schedule: long_c: 16 snippets x 16 px" in printed.err
    out = tmp_path / "out"
    import json

    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"untouched_encoder", "lofi_encoder", "lofi_minus_untouched", "stages_s"}
    # Stage 3 features: full fidelity (16 snippets of 64 channels) and a direct forward of
    # the trained encoder on the same snippets.
    feats = np.load(out / "features_lofi" / "clip4.npy")
    assert feats.shape == (16, 64)
    cfg = lofi_cfg(videos, tmp_path)
    encoder = build_backbone("vit-s", out / "stage2" / "encoder.safetensors", **cfg.backbone.kwargs).module.eval()
    trained = load_file(str(out / "stage2" / "last" / "ema.safetensors"))
    assert torch.equal(encoder.blocks[0].attn.qkv.weight, trained["encoder.blocks.0.attn.qkv.weight"])
    gt = load_annotations(cfg.video.annotations)
    ds = SnippetDataset(cfg.video, cfg.lofi, cfg.lofi.schedule.full, gt, "validation", gt.classes, training=False)
    with torch.no_grad():
        direct = encoder.clip_features(ds.whole_video("clip4", cfg.lofi.schedule.full).clips)
    np.testing.assert_allclose(feats, direct.numpy(), rtol=1e-4, atol=1e-5)
    base = np.load(out / "features_base" / "clip4.npy")
    assert not np.allclose(base, feats)  # the untouched encoder gives other features

    # Run again: every stage is complete and skipped.
    assert main(["lofi", str(config), *sets_one, "--no-progress"]) == 0
    assert "skipped, already complete: stage2, head_base, head_lofi" in capsys.readouterr().out
    # With two head epochs the heads are unfinished runs: they resume from their last
    # checkpoint (epoch 1), stage 2 and the features stay as they are.
    (out / "features_lofi" / "clip4.json").unlink()  # and one video's features to redo
    assert main(["lofi", str(config), *sets, "--set=lofi.head_train.epochs=2", "--no-progress"]) == 0
    assert "(skipped, already complete: stage2)" in capsys.readouterr().out
    epochs = [line.split(",")[0] for line in (out / "head_lofi" / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2"]  # epoch 1 from the first run, epoch 2 resumed
    assert np.load(out / "features_lofi" / "clip4.npy").shape == (16, 64)


@pytest.mark.parametrize("name", ["lofi_activitynet13_tsm_r18", "lofi_activitynet13_tsm_r50"])
def test_activitynet_presets_follow_the_paper(name):
    from pathlib import Path

    cfg = load_config(ExperimentConfig, Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    schedule = cfg.pipeline.schedule(cfg)
    # Xu et al. 2021: 100 snippets at 224 px, Long C-LoFi S -> T -> ST, batch 16 at every
    # fidelity; SGD lr 0.1 halved every 5 epochs, momentum 0, weight decay 1e-4; 8 of 64 frames.
    assert [(f.snippets, f.size, f.batch) for f in schedule.cycle] == [(100, 112, 16), (25, 224, 16), (50, 158, 16)]
    assert schedule.switch_batches is None and cfg.lofi.window_s is None
    t = cfg.train
    assert (t.optimizer, t.lr, t.momentum, t.weight_decay, t.schedule, t.step_epochs, t.step_gamma) == \
        ("sgd", 0.1, 0.0, 1e-4, "step", 5, 0.5)
    assert (cfg.lofi.snippet_frames, cfg.lofi.frame_interval) == (8, 8)


def test_one_snippet_micro_batches_are_refused_with_fsdp():
    from e2etal.lofi.config import LoFiConfig

    with pytest.raises(ValueError, match="lofi.micro_batch: 1 cannot be used with lofi.fsdp"):
        LoFiConfig(fsdp=True, micro_batch=1)
    assert LoFiConfig(fsdp=True, micro_batch=2).fsdp
