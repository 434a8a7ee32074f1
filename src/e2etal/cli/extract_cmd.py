"""`e2etal extract`: clip features of raw videos, one `[T, C]` `.npy` per video."""

from __future__ import annotations

from e2etal.data.video import find_videos
from e2etal.extract import BACKBONES, ExtractConfig, extract_features


def register(sub) -> None:
    p = sub.add_parser(
        "extract",
        help="extract backbone features of videos (one [T, C] .npy and .json sidecar per video)",
        description="Decode videos, cut them into clips (clip i = frames [i*stride, i*stride+clip-frames), "
        "resized to SIZE x SIZE without crop) and write one feature per clip: OUT/<video stem>.npy [T, C] "
        "float32 plus OUT/<video stem>.json with the settings. Feature i is centred at "
        "(i*stride + clip-frames/2)/fps seconds. Videos already extracted with the same settings are "
        "skipped; videos that cannot be decoded are listed at the end (exit code 1).",
    )
    p.add_argument("--videos", required=True, metavar="PATH",
                   help="a folder of videos, a .txt/.lst/.list file with one path per line, or one video")
    p.add_argument("--backbone", required=True, choices=list(BACKBONES), help="backbone preset")
    p.add_argument("--checkpoint", metavar="PATH", help="backbone weights (VideoMAE/VideoMAEv2, mmaction, "
                   "Hugging Face, torchvision/TSM layouts); without one the weights are random")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--fps", type=float, help="resample videos to this frame rate (default: native frames)")
    p.add_argument("--size", type=int, default=224, help="frames resized to SIZE x SIZE (default 224)")
    p.add_argument("--stride", type=int, default=4, help="frames between clip starts (default 4)")
    p.add_argument("--clip-frames", type=int, default=16, help="frames per clip (default 16)")
    p.add_argument("--micro-batch", type=int, default=32, help="clips per backbone call (default 32)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="compute dtype (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = ExtractConfig(
        fps=args.fps,
        clip_frames=args.clip_frames,
        stride_frames=args.stride,
        size=args.size,
        micro_batch=args.micro_batch,
        device=args.device,
        dtype=args.dtype,
    )
    videos = find_videos(args.videos)
    report = extract_features(videos, args.backbone, args.out, cfg, args.checkpoint, progress=not args.no_progress)
    print(report.summary())
    return 1 if report.failed else 0
