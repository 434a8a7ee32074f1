"""`e2etal extract`: clip features of raw videos, one `[T, C]` `.npy` per video."""

from __future__ import annotations

from e2etal.cli import command_help
from e2etal.data.video import find_videos
from e2etal.io import output_dir
from e2etal.backbones import BACKBONES
from e2etal.extract import RECIPES, ExtractConfig, extract_features


def register(sub) -> None:
    p = sub.add_parser(
        "extract",
        help=command_help("extract"),
        description="Decode videos, cut them into clips (clip i = frames [i*stride, i*stride+clip-frames), "
        "resized to SIZE x SIZE without crop) and write one feature per clip: OUT/<video stem>.npy [T, C] "
        "float32 plus OUT/<video stem>.json with the settings. Feature i is centred at "
        "(i*stride + clip-frames/2)/fps seconds. By default the tail of a video is covered by one clip "
        "padded with its last frame; --recipe videomaev2-tad instead reproduces VideoMAEv2's "
        "extract_tad_feature.py step by step (see --recipe). Videos already extracted with the same "
        "weights and settings are skipped; videos that cannot be decoded are listed at the end (exit code 1).",
    )
    p.add_argument("--videos", required=True, metavar="PATH",
                   help="a folder of videos, a .txt/.lst/.list file with one path per line, or one video")
    p.add_argument("--backbone", required=True, choices=list(BACKBONES), help="backbone preset")
    p.add_argument("--checkpoint", metavar="PATH", help="backbone weights (VideoMAE/VideoMAEv2, mmaction, "
                   "Hugging Face, torchvision/TSM layouts); without one the weights are random (see --seed)")
    p.add_argument("--seed", type=int, metavar="N",
                   help="seed of the random weights when no --checkpoint is given (default 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--recipe", choices=list(RECIPES),
                   help="videomaev2-tad: the official VideoMAEv2 TAD extraction step by step: every native frame "
                   "at native size, clips starting at range(0, n - 15, 4) (the tail dropped; a video "
                   "shorter than 16 frames fails), float frames / 255 resized by torch bilinear "
                   "(align_corners=False) to 224 x 224, fp32, a vit-* backbone; --fps, --size, "
                   "--clip-frames and --dtype other than theirs are refused, --stride 16 is its "
                   "FineAction setting")
    p.add_argument("--fps", type=float, help="resample videos to this frame rate (default: native frames)")
    p.add_argument("--size", type=int, default=224, help="frames resized to SIZE x SIZE (default 224)")
    p.add_argument("--stride", type=int, default=4, help="frames between clip starts (default 4)")
    p.add_argument("--clip-frames", type=int, default=16, help="frames per clip (default 16)")
    p.add_argument("--micro-batch", type=int, default=32, help="clips per backbone call (default 32)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="compute dtype (default: bf16 on CUDA, fp32 on CPU; fp32 with --recipe)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.seed is not None and args.checkpoint is not None:
        raise ValueError("--seed draws random weights and has no effect with --checkpoint; drop one of them")
    output_dir(args.out, "--out", create=False)  # created by the run, once its settings are checked
    cfg = ExtractConfig(
        fps=args.fps,
        clip_frames=args.clip_frames,
        stride_frames=args.stride,
        size=args.size,
        micro_batch=args.micro_batch,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed if args.seed is not None else 0,
        recipe=args.recipe,
    )
    videos = find_videos(args.videos)
    report = extract_features(videos, args.backbone, args.out, cfg, args.checkpoint, progress=not args.no_progress)
    print(report.summary())
    return 1 if report.failed else 0
