"""The whole of LoFi, behind `e2etal lofi CONFIG`: stage 2, stage 3, and the comparison the
paper makes, in stages that can each be resumed.

    OUT/stage2/            the encoder and a head trained through the TAL loss at reduced
                           fidelity (the config's `lofi` pipeline; a training run)
    OUT/stage2/encoder.safetensors   the trained encoder alone, in its own layout (readable
                           by `e2etal extract --checkpoint` and `backbone.checkpoint`)
    OUT/features_base/     full-fidelity snippet features of the untouched encoder
    OUT/features_lofi/     the same of the trained encoder (one `[L, C]` .npy and .json
                           sidecar per video, as `e2etal extract` writes them)
    OUT/head_base/, OUT/head_lofi/   the same head recipe (`lofi.head_train`) trained from
                           scratch on each (the features pipeline)
    OUT/report.json        both mAP tables and what ran

A stage whose output is complete is skipped; an interrupted training run resumes from its
`last` checkpoint, and feature extraction skips the videos it has written with the same
settings. Features of a video are those of its full-fidelity snippets: L evenly spread
over the whole video (`lofi.window_s` null), or one every `window_s / L` seconds over the
whole video (the windows protocol), on the time grid the head trains on.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from e2etal import distributed, io
from e2etal.backbones.factory import build_backbone
from e2etal.data.annotations import load_annotations
from e2etal.data.features import FeatureDataConfig
from e2etal.data.snippets import SnippetBatch, SnippetDataset
from e2etal.engine.checkpoint import load_checkpoint
from e2etal.engine.trainer import resolve_device
from e2etal.extract import finished_with, save_features
from e2etal.lofi.budget import choose_fidelity, cuda_step_peak_gb
from e2etal.lofi.fidelity import Fidelity, reduced_fidelities
from e2etal.metrics import DetectionResult

log = logging.getLogger(__name__)

__all__ = ["LoFiReport", "extract_snippet_features", "fit_to_budget", "run_lofi"]

ENCODER_FILE = "encoder.safetensors"
SIDECAR_FORMAT = 1


@dataclass
class LoFiReport:
    out_dir: Path
    base: DetectionResult  # the head on the untouched encoder's features
    lofi: DetectionResult  # the head on the LoFi-trained encoder's features
    stages_s: dict[str, float]
    skipped: list[str]  # stages found complete

    def table(self) -> str:
        rows = [f"{'features':<20}" + "".join(f"{'mAP@' + format(t, '.2f'):>10}" for t in self.base.tiou) + f"{'avg':>9}"]
        for name, result in (("untouched encoder", self.base), ("LoFi encoder", self.lofi)):
            rows.append(f"{name:<20}" + "".join(f"{100 * m:10.2f}" for m in result.mAP) + f"{100 * result.average_mAP:9.2f}")
        return "\n".join(rows)


def _finished_run(run_dir: Path, epochs: int) -> bool:
    try:
        state = load_checkpoint(run_dir / "last").state
    except (FileNotFoundError, ValueError):
        return False
    return state is not None and int(state["epoch"]) >= epochs


def _train(cfg, run_dir: Path, skipped: list[str], stage: str) -> None:
    from e2etal.experiment import train

    cfg = dataclasses.replace(cfg, out_dir=str(run_dir))
    if _finished_run(run_dir, cfg.train.epochs):
        skipped.append(stage)
        log.info("%s: finished in %s, skipped", stage, run_dir)
        return
    resume = run_dir / "last" if (run_dir / "last").is_dir() else None
    train(cfg, resume=resume)


def _save_encoder(stage2: Path) -> Path:
    """The trained encoder's weights (the EMA's when the run kept one) as a plain state
    dict, written by rank 0 and on disk for every rank when this returns."""
    path = stage2 / ENCODER_FILE
    if distributed.is_main():
        ckpt = load_checkpoint(stage2 / "last", with_state=False)
        weights = {k[len("encoder.") :]: v for k, v in ckpt.inference_weights.items() if k.startswith("encoder.")}
        with io.atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp))
    distributed.barrier()
    return path


def extract_snippet_features(cfg, checkpoint: str | Path | None, out_dir: str | Path, device: str = "auto",
                             progress: bool = True) -> list[Path]:
    """Full-fidelity snippet features of every video of `cfg.video.annotations` (all
    subsets) with `cfg.backbone` and the weights in `checkpoint` (None: random), one
    `[L, C]` float32 `.npy` and a `.json` sidecar per video in `out_dir`. Videos already
    done with the same weights and settings are skipped. In a process group each rank
    extracts its share, and all are written when this returns. Returns the videos this
    process wrote."""
    from e2etal.pipelines.lofi import own_normalisation

    out_dir = io.output_dir(out_dir, "out_dir")
    backbone = build_backbone(cfg.backbone.name, checkpoint, seed=cfg.train.seed, **cfg.backbone.kwargs)
    dev = resolve_device(device)
    encoder = backbone.module.eval().to(dev)
    annotations = load_annotations(cfg.video.annotations)
    full = cfg.lofi.schedule.full
    video = dataclasses.replace(own_normalisation(cfg.video, encoder), skip_missing=True)
    dataset = SnippetDataset(video, cfg.lofi, full, annotations, "all", annotations.classes, training=False)
    settings = {
        "format": SIDECAR_FORMAT, "backbone": backbone.name, "weights_sha256": backbone.weights_id(),
        "kwargs": cfg.backbone.kwargs, "snippets": full.snippets, "size": full.size,
        "snippet_frames": cfg.lofi.snippet_frames, "frame_interval": cfg.lofi.frame_interval,
        "window_s": cfg.lofi.window_s, "mean": None if video.mean is None else list(video.mean),
        "std": None if video.std is None else list(video.std),
    }
    written = []
    videos = distributed.shard(sorted(dataset.videos))
    for vid in tqdm(videos, desc=f"features {out_dir.name}", unit="video", disable=not (progress and distributed.is_main())):
        npy, sidecar = out_dir / f"{vid}.npy", out_dir / f"{vid}.json"
        if finished_with(npy, sidecar, settings) is None:
            continue
        step_s = None if cfg.lofi.window_s is None else cfg.lofi.window_s / full.snippets
        item = dataset.whole_video(vid, full, step_s)
        step = cfg.lofi.micro_batch or item.clips.shape[0]
        with torch.inference_mode():
            feats = torch.cat([encoder.clip_features(part.to(dev)).float().cpu() for part in item.clips.split(step)])
        meta = {**settings, "video": vid, "num_features": int(feats.shape[0]), "feature_dim": int(feats.shape[1]),
                "duration_s": item.duration_s, "offset_s": item.grid.offset_s, "step_s": item.grid.step_s,
                "feature_center_s": "offset_s + i * step_s"}
        save_features(npy, sidecar, feats.numpy(), meta)
        written.append(npy)
    distributed.barrier()
    return written


def _head_config(cfg, feature_dir: Path, run_dir: Path):
    """The features experiment of stage 3: the same head recipe on one encoder's features."""
    from e2etal.experiment import ExperimentConfig

    full = cfg.lofi.schedule.full
    if cfg.lofi.window_s is None:
        grid = {"resize_length": full.snippets}  # L features over each video: step duration / L
    else:
        step_s = cfg.lofi.window_s / full.snippets  # seconds as "frames" at 1 fps: feature i at (i + 1/2) step
        grid = {"fps": 1.0, "stride_frames": step_s, "offset_frames": step_s / 2}
    data = FeatureDataConfig(
        annotations=cfg.video.annotations, feature_dir=str(feature_dir), train_subset=cfg.video.train_subset,
        val_subset=cfg.video.val_subset, max_seq_len=cfg.model.max_seq_len, skip_missing=True, **grid,
    )
    head_train = dataclasses.replace(cfg.lofi.head_train, device=cfg.train.device, progress=cfg.train.progress,
                                     seed=cfg.train.seed, tensorboard=cfg.train.tensorboard)
    return ExperimentConfig(name=f"{cfg.name}-{run_dir.name}", out_dir=str(run_dir), method="features", data=data,
                            model=cfg.model, train=head_train, eval=cfg.eval)


def fit_to_budget(cfg, budget_gb: float):
    """`cfg` with its stage-2 schedule replaced by the one fidelity that fits `budget_gb`
    on its GPU (`budget.choose_fidelity` over the full fidelity and S, T, ST), and the table
    of measurements; on a CPU, `cfg` unchanged and a note that it cannot be measured."""
    from e2etal.experiment import build_detector

    device = resolve_device(cfg.train.device, "train.device")
    if device.type != "cuda":
        return cfg, (f"--memory-budget: peak memory can only be measured on a GPU ({device} here); "
                     f"training with the config's schedule")
    detector = build_detector(cfg).to(device).train()
    multiple = getattr(detector.encoder, "patch_size", 1)
    full = cfg.lofi.schedule.full
    candidates = [full, *reduced_fidelities(full, multiple).values()]

    def step(fidelity: Fidelity) -> None:
        clips = torch.rand(fidelity.batch, fidelity.snippets, 3, cfg.lofi.snippet_frames, fidelity.size, fidelity.size,
                           device=device)
        length = fidelity.snippets
        padded = -(-length // cfg.model.max_stride) * cfg.model.max_stride
        mask = torch.zeros(fidelity.batch, padded, dtype=torch.bool, device=device)
        mask[:, :length] = True
        segments = [torch.tensor([[0.1 * length, 0.6 * length]], device=device)] * fidelity.batch
        labels = [torch.zeros(1, dtype=torch.long, device=device)] * fidelity.batch
        batch = SnippetBatch([""] * fidelity.batch, clips, mask, segments, labels, [None] * fidelity.batch,
                             [None] * fidelity.batch)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.train.amp):
            loss = detector.losses(batch)["loss"]
        loss.backward()
        detector.zero_grad(set_to_none=True)

    result = choose_fidelity(candidates, cuda_step_peak_gb(step, device), budget_gb)
    if result.choice is None:
        raise ValueError(f"--memory-budget {budget_gb:g} GB: no fidelity fits on {device}:\n{result.describe(budget_gb)}")
    c = result.choice
    schedule = dataclasses.replace(cfg.lofi.schedule, name="custom", custom=[(c.snippets, c.size, c.batch)])
    return dataclasses.replace(cfg, lofi=dataclasses.replace(cfg.lofi, schedule=schedule)), result.describe(budget_gb)


def run_lofi(cfg, progress: bool = True) -> LoFiReport:
    """Stage 2, stage 3 and the comparison for a `method: lofi` config (module docstring);
    everything goes to `cfg.out_dir`."""
    from e2etal.experiment import evaluate_checkpoint

    from e2etal.pipelines.lofi import LoFiPipeline

    if not isinstance(cfg.pipeline, LoFiPipeline):
        raise ValueError(f"e2etal lofi runs a `method: lofi` config; this one has method {cfg.method!r}")
    distributed.init(resolve_device(cfg.train.device, "train.device"))
    out = io.output_dir(cfg.out_dir, "out_dir")
    stages_s: dict[str, float] = {}
    skipped: list[str] = []

    t0 = time.perf_counter()
    _train(cfg, out / "stage2", skipped, "stage2")
    encoder = _save_encoder(out / "stage2")
    stages_s["stage2"] = time.perf_counter() - t0

    results = {}
    for name, checkpoint in (("base", cfg.backbone.checkpoint), ("lofi", encoder)):
        t0 = time.perf_counter()
        features = out / f"features_{name}"
        extract_snippet_features(cfg, checkpoint, features, device=cfg.train.device, progress=progress)
        stages_s[f"features_{name}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        head_cfg = _head_config(cfg, features, out / f"head_{name}")
        _train(head_cfg, out / f"head_{name}", skipped, f"head_{name}")
        results[name], _ = evaluate_checkpoint(out / f"head_{name}" / "last", head_cfg, device=cfg.train.device,
                                               progress=False)
        stages_s[f"head_{name}"] = time.perf_counter() - t0

    report = LoFiReport(out, results["base"], results["lofi"], stages_s, skipped)
    if not distributed.is_main():
        return report
    io.write_json(out / "report.json", {
        "config": cfg.name, "schedule": cfg.pipeline.schedule(cfg).describe(),
        "tiou": report.base.tiou.tolist(),
        "untouched_encoder": {"mAP": report.base.mAP.tolist(), "average_mAP": report.base.average_mAP},
        "lofi_encoder": {"mAP": report.lofi.mAP.tolist(), "average_mAP": report.lofi.average_mAP},
        "lofi_minus_untouched": report.lofi.average_mAP - report.base.average_mAP,
        "stages_s": stages_s, "skipped": skipped,
        "encoder": str(encoder),
    })
    return report
