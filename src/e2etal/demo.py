"""`e2etal demo`: the whole pipeline on synthetic video, on a fresh CPU machine in minutes.

Stages (each timed, every figure written to `report.json`):
1. world: synthetic untrimmed videos with exact ground truth (`e2etal.synthetic`);
2. pretrain: a tiny video ViT learns to classify trimmed clips of the same world, as
   Kinetics pretraining precedes TAL, on fewer classes than TAL asks for (by default the
   horizontal glides of a world of four glides); saved in the official VideoMAEv2
   checkpoint layout;
3. one training run per method in `METHODS`, each evaluated on the validation videos:
   head-only transfer (the head on the frozen backbone's last layer) and LoSA (adapters
   beside the same frozen backbone); the frozen pass is computed once per video and
   shared through the tap cache;
4. detect: the best method's checkpoint runs on a held-out video file; a timeline PNG
   shows ground truth beside its detections.

With `lofi=True` (`e2etal demo --method lofi`) stage 3 is LoFi instead (`e2etal.lofi.stages`):
the pretrained ViT itself trained through the TAL loss on snippets at reduced fidelity,
features of it and of the untouched ViT at full fidelity, and the same head trained on
each; the timeline shows the LoFi encoder's head on the held-out video's features.

A method is a name and the experiment method it runs (`DemoMethod`), so more methods slot
into the table by adding an entry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from e2etal import io
from e2etal.adapters.frozen import FrozenPassConfig
from e2etal.adapters.losa import LoSAConfig
from e2etal.backbones.factory import BACKBONES, BackboneConfig
from e2etal.backbones.layout import TapLayout
from e2etal.data.annotations import load_annotations
from e2etal.data.windows import VideoDataConfig
from e2etal.engine.trainer import TrainConfig, resolve_device
from e2etal.experiment import EvalConfig, ExperimentConfig, detect_features, detect_video, evaluate_checkpoint, train
from e2etal.heads import HeadConfig
from e2etal.lofi.config import LoFiConfig
from e2etal.lofi.fidelity import LoFiScheduleConfig
from e2etal.lofi.stages import run_lofi
from e2etal.machine import describe_cpu
from e2etal.plot import plot_timeline
from e2etal.synthetic import WorldConfig, fit_clip_classifier, make_world

BACKBONE_FILE = "backbone/tiny_vit_pretrained.pth"  # the pretrained backbone, relative to a demo's output


@dataclass(frozen=True)
class DemoMethod:
    name: str  # in the report and the table
    method: str  # ExperimentConfig.method


METHODS = (
    DemoMethod("head-only", "head_only"),
    DemoMethod("LoSA", "losa"),
)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run; `quick()` is a smoke-test version."""

    # 24 validation videos (~100 instances): with 8, one training seed to the next moved a
    # method's average mAP by ~5 points, more than the gap the demo measures. 48 training
    # videos for 30 epochs cost what 24 for 60 did and gave both methods ~7 points more.
    world: WorldConfig = field(default_factory=lambda: WorldConfig(train_videos=48, val_videos=24))
    backbone: str = "vit-tiny"  # a preset of e2etal.backbones.BACKBONES, built at the world's size
    # Pretraining classifies clips of the world's first `pretrain_classes` classes only
    # (None: all of them). Like Kinetics before THUMOS-14, the pretraining task then differs
    # from the TAL task: by default it has the horizontal glides, and TAL also asks for the
    # vertical ones ("task discrepancy", DESIGN.md).
    pretrain_classes: int | None = 2
    pretrain_clips: int = 1200
    # Training sits at chance for some epochs before it learns; with 8 epochs seed 2 never
    # left chance (held out 0.50), with 12 every seed 0-2 reaches 0.98-1.00 (research/README.md).
    pretrain_epochs: int = 12
    pretrain_lr: float = 3e-3
    # Pixel normalisation of the backbone, in pretraining and in TAL alike. The small std
    # amplifies this low-contrast world's pixels against the ViT's fixed position table;
    # on the default pretraining task 0.225 learns as well (research/README.md).
    pixel_mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    pixel_std: tuple[float, float, float] = (0.06, 0.06, 0.06)
    epochs: int = 30
    window_frames: int = 256
    # Temporal kernel of LoSA's short-range conv: the +-4 positions its attention reads
    # (LoSAConfig's default); kernels 3 and 17 scored lower (research/README.md).
    short_conv_kernel: int = 9
    # LoFi: a video is `lofi_snippets` snippets of the ViT's 16-frame clip (2 s at 8 fps) at
    # the world's 64 px at full fidelity; stage 2 cycles S, T, ST (Long C-LoFi) at batch
    # `lofi_batch` for `lofi_epochs` epochs with AdamW at `lofi_lr`, the whole ViT trainable;
    # stage 3 trains the demo's head for `lofi_head_epochs` on each encoder's features. With
    # 8 and 30 epochs `demo --method lofi` took 741 s on 2 CPU cores, past its 10 minutes;
    # with 4 and 15, 525-550 s (research/README.md).
    lofi_snippets: int = 64
    lofi_batch: int = 4
    lofi_epochs: int = 4
    lofi_lr: float = 5e-4
    lofi_head_epochs: int = 15

    def __post_init__(self) -> None:
        if self.pretrain_classes is not None and not 2 <= self.pretrain_classes <= self.world.num_classes:
            raise ValueError(f"DemoSettings.pretrain_classes={self.pretrain_classes}: expected 2.."
                             f"{self.world.num_classes} (the world's num_classes) or None")

    @property
    def pretrain_world(self) -> WorldConfig:
        """The world whose trimmed clips pretraining classifies: its first `pretrain_classes` classes."""
        if self.pretrain_classes is None:
            return self.world
        return replace(self.world, num_classes=self.pretrain_classes)

    def build_backbone(self, num_classes: int = 0) -> torch.nn.Module:
        """The demo's ViT at the world's frame size and clip length (random weights)."""
        world = self.world
        return BACKBONES[self.backbone](img_size=world.height, num_frames=world.clip_frames, num_classes=num_classes)

    @property
    def backbone_layout(self) -> TapLayout:
        with torch.device("meta"):  # shapes only: no weights drawn, the RNG untouched
            return self.build_backbone().tap_layout()

    @property
    def losa_taps(self) -> tuple[int, ...]:
        """The ViT blocks LoSA reads (and the tap cache holds): a third, two thirds, the last."""
        depth = self.backbone_layout.depth
        return (depth // 3, 2 * depth // 3, depth)

    @classmethod
    def quick(cls) -> DemoSettings:
        world = WorldConfig(train_videos=6, val_videos=3, min_video_s=12.0, max_video_s=18.0, max_instances=3)
        return cls(world=world, pretrain_clips=120, pretrain_epochs=1, epochs=2, window_frames=128, lofi_snippets=16,
                   lofi_epochs=1, lofi_head_epochs=2)


def pretrain_backbone(settings: DemoSettings, out_path: Path, seed: int, device: torch.device, progress: bool = True) -> dict:
    """Train a tiny ViT to classify trimmed clips of the world's first `pretrain_classes`
    classes; save it as an official-layout checkpoint (`{"model": state_dict}` with the
    classification head). Returns its accuracy."""
    world = settings.pretrain_world
    torch.manual_seed(seed)
    vit = settings.build_backbone(num_classes=world.num_classes).to(device)
    result = fit_clip_classifier(vit, vit.classify, world, settings.pretrain_clips, settings.pretrain_epochs,
                                 seed, device, progress, lr=settings.pretrain_lr,
                                 pixel_mean=settings.pixel_mean, pixel_std=settings.pixel_std)
    with io.atomic_path(out_path) as tmp:
        torch.save({"model": {k: v.cpu() for k, v in vit.state_dict().items()}}, tmp)
    return {**result, "classes": list(world.class_names)}


def experiment(settings: DemoSettings, method: DemoMethod, out: Path, run_dir: Path, seed: int,
               device: torch.device, progress: bool) -> ExperimentConfig:
    """The config of one demo run: the world's videos, the pretrained backbone, the tap
    cache every method shares, a small head."""
    w = settings.world
    layout = settings.backbone_layout
    positions = settings.window_frames // layout.frames_per_position  # temporal positions of a window
    return ExperimentConfig(
        name=run_dir.name,
        out_dir=str(run_dir),
        method=method.method,
        video=VideoDataConfig(
            annotations=str(out / "world" / "annotations.json"), video_dir=str(out / "world" / "videos"),
            fps=float(w.fps), size=w.height, clip_frames=w.clip_frames, window_frames=settings.window_frames,
            augment=False, tap_cache=str(out / "tap_cache"), mean=settings.pixel_mean, std=settings.pixel_std,
        ),
        backbone=BackboneConfig(name=settings.backbone, checkpoint=str(out / BACKBONE_FILE),
                                kwargs={"img_size": w.height, "num_frames": w.clip_frames}),
        frozen=FrozenPassConfig(taps=settings.losa_taps, micro_batch=16),
        losa=LoSAConfig(num_heads=4, reduction=2, short_window=4, short_conv_kernel=settings.short_conv_kernel),
        model=HeadConfig(
            input_dim=layout.width, num_classes=w.num_classes, embed_dim=128, head_dim=128, num_heads=4, window_size=9,
            branch_layers=4, regression_ranges=((0, 4), (4, 8), (8, 16), (16, 32), (32, 10000)),
            max_seq_len=positions, drop_path=0.1, dropout=0.1,
        ),
        train=TrainConfig(
            epochs=settings.epochs, warmup_epochs=min(3, settings.epochs), batch_size=2, lr=0.001, ema_decay=0.99,
            seed=seed, eval_every=0, tensorboard=False, device=str(device), progress=progress,
        ),
        eval=EvalConfig(tiou=(0.3, 0.4, 0.5, 0.6, 0.7)),
    )


def lofi_experiment(settings: DemoSettings, out: Path, run_dir: Path, seed: int, device: torch.device,
                    progress: bool) -> ExperimentConfig:
    """The LoFi config of a demo: stage 2 on the world's videos from the pretrained ViT, and
    the demo's head and head recipe for stage 3."""
    w = settings.world
    base = experiment(settings, METHODS[0], out, run_dir, seed, device, progress)
    head_train = replace(base.train, epochs=settings.lofi_head_epochs, warmup_epochs=min(base.train.warmup_epochs,
                                                                                      settings.lofi_head_epochs))
    stage2 = replace(
        base.train, epochs=settings.lofi_epochs, warmup_epochs=min(1, settings.lofi_epochs),
        batch_size=settings.lofi_batch, lr=settings.lofi_lr, ema_decay=None,
    )
    snippets = settings.lofi_snippets
    stride = base.model.max_stride
    return replace(
        base, method="lofi", train=stage2,
        video=replace(base.video, tap_cache=None),
        lofi=LoFiConfig(snippet_frames=w.clip_frames, frame_interval=1, checkpointing=False, head_train=head_train,
                        schedule=LoFiScheduleConfig(name="long_c", snippets=snippets, size=w.height,
                                                    batch=settings.lofi_batch)),
        model=replace(base.model, max_seq_len=-(-snippets // stride) * stride),
    )


def train_method(out: Path, settings: DemoSettings, method: DemoMethod, train_seed: int, device: torch.device,
                 progress: bool = True, run_name: str | None = None) -> dict:
    """Train one method on the world, backbone and tap cache a demo run made in `out`
    (`run_demo`), seeded by `train_seed`, and evaluate it on the validation videos.

    The run goes to `out/runs/<run_name>` (default: the method's name). Returns its mAP per
    tIoU, average mAP and checkpoint. Training the same method again with other seeds on
    one world measures how much of a gap between methods is training noise
    (`research/demo_seeds.py --train-seeds`)."""
    out = Path(out)
    run_dir = out / "runs" / (run_name or method.name)
    train(experiment(settings, method, out, run_dir, train_seed, device, progress))
    result, _ = evaluate_checkpoint(run_dir / "last", progress=False)
    return {"tiou": result.tiou.tolist(), "mAP": result.mAP.tolist(), "average_mAP": result.average_mAP,
            "checkpoint": str(run_dir / "last")}


def run_demo(out_dir: str | Path = "e2etal-demo", quick: bool = False, seed: int = 0, device: str = "auto",
             methods: tuple[DemoMethod, ...] = METHODS, progress: bool = True,
             settings: DemoSettings | None = None, lofi: bool = False) -> dict:
    """Run every stage; returns (and writes to `out_dir/report.json`) every figure.

    `settings` replaces the default sizes (`DemoSettings()`, or `DemoSettings.quick()` with
    `quick`), e.g. to run the demo on another `WorldConfig`. `lofi` runs LoFi in place of
    `methods` (module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if settings is None:
        settings = DemoSettings.quick() if quick else DemoSettings()
    dev = resolve_device(device)
    report: dict = {"settings": {"quick": quick, "seed": seed, "device": str(dev), "machine": describe_cpu(),
                                 "threads": torch.get_num_threads()}, "stages_s": {}, "methods": {}}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    world_dir = make_world(out / "world", settings.world, seed=seed, progress=progress)
    report["stages_s"]["world"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report["pretrain"] = pretrain_backbone(settings, out / BACKBONE_FILE, seed, dev, progress)
    report["stages_s"]["pretrain"] = time.perf_counter() - t0

    gt = load_annotations(world_dir / "annotations.json").subset("validation")
    video_id = sorted(gt.videos)[0]
    if lofi:
        t0 = time.perf_counter()
        lofi_report = run_lofi(lofi_experiment(settings, out, out / "runs" / "LoFi", seed, dev, progress), progress)
        for name, result in (("untouched", lofi_report.base), ("LoFi", lofi_report.lofi)):
            report["methods"][name] = {"tiou": result.tiou.tolist(), "mAP": result.mAP.tolist(),
                                       "average_mAP": result.average_mAP}
        report["lofi"] = {"stages_s": lofi_report.stages_s, "report": str(lofi_report.out_dir / "report.json")}
        report["stages_s"]["LoFi stages 2 and 3"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        best = "LoFi"
        runs = lofi_report.out_dir
        detections = detect_features(runs / "features_lofi" / f"{video_id}.npy", runs / "head_lofi" / "last",
                                     duration_s=gt.videos[video_id].duration_s, device=str(dev))
    else:
        for m in methods:
            t0 = time.perf_counter()
            report["methods"][m.name] = train_method(out, settings, m, seed, dev, progress)
            report["stages_s"][f"train+eval {m.name}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        best = max(report["methods"], key=lambda k: report["methods"][k]["average_mAP"])
        detections = detect_video(world_dir / "videos" / f"{video_id}.mp4", report["methods"][best]["checkpoint"],
                                  device=str(dev), progress=False)
    timeline = plot_timeline(out / "timeline.png", detections, video_id, gt.videos[video_id].duration_s,
                             ground_truth=gt.videos[video_id], classes=list(gt.classes.names), top_k=12,
                             title=f"{video_id}: ground truth and {best} detections")
    report["detect"] = {"video": video_id, "method": best, "detections": len(detections), "timeline": str(timeline)}
    report["stages_s"]["detect"] = time.perf_counter() - t0
    report["total_s"] = time.perf_counter() - t_all
    io.write_json(out / "report.json", report)
    return report


def format_table(report: dict) -> str:
    methods = report["methods"]
    tiou = next(iter(methods.values()))["tiou"]
    lines = [f"{'method':<12}" + "".join(f"{'mAP@' + format(t, '.1f'):>9}" for t in tiou) + f"{'avg':>9}"]
    for name, m in methods.items():
        lines.append(f"{name:<12}" + "".join(f"{100 * v:9.2f}" for v in m["mAP"]) + f"{100 * m['average_mAP']:9.2f}")
    return "\n".join(lines)
