"""`e2etal detect`: detections for one video, from the video file or its features."""

from __future__ import annotations

import json
import sys

from e2etal.data.predictions import save_predictions


def register(sub) -> None:
    p = sub.add_parser(
        "detect",
        help="detect actions in one video (a video file, or its feature file)",
        description="Run a trained checkpoint on one video and print its segments, best first. With VIDEO, the "
        "video is decoded and run through the checkpoint's frozen backbone, adapters and head (LoSA or head-only "
        "checkpoints); with --features, a checkpoint trained on pre-extracted features runs on a [T, C] .npy file.",
    )
    p.add_argument("video", nargs="?", help="video file (.mp4, .mkv, ...)")
    p.add_argument("--features", metavar="FILE.npy", help="instead of VIDEO: the video's features [T, C]")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint directory (e.g. OUT_DIR/best)")
    p.add_argument("--video-id", help="id written in the results (default: the file name without extension)")
    p.add_argument("--fps", type=float, help="with --features: the video's frame rate, when the config reads it from annotations")
    p.add_argument("--duration", type=float, help="with --features: the video's duration in seconds")
    p.add_argument("--out", metavar="FILE.json", help="write all detections in the ActivityNet results layout")
    p.add_argument("--plot", metavar="FILE.png", help="write a timeline plot (ground truth beside predictions with --ground-truth)")
    p.add_argument("--ground-truth", metavar="GT", help="annotation file holding this video, for the plot")
    p.add_argument("--top", type=int, default=20, help="print and plot at most this many segments (default 20)")
    p.add_argument("--json", action="store_true", help="print the results JSON instead of a table")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from e2etal.experiment import detect_features, detect_video

    if (args.video is None) == (args.features is None):
        raise ValueError("give either VIDEO or --features FILE.npy")
    source = Path(args.video or args.features)
    video_id = args.video_id or source.stem
    if args.video:
        dets = detect_video(args.video, args.checkpoint, video_id=video_id, device=args.device)
    else:
        dets = detect_features(args.features, args.checkpoint, video_id=video_id, fps=args.fps,
                               duration_s=args.duration, device=args.device)
    if args.out:
        save_predictions(args.out, dets)
        print(f"wrote {len(dets)} detections to {args.out}", file=sys.stderr)
    if args.plot:
        _plot(args, dets, video_id)
    results = dets.by_video()
    if args.json:
        print(json.dumps({"results": results}))
        return 0
    rows = results.get(video_id, [])
    print(f"{video_id}: {len(rows)} segment(s)")
    print(f"{'start_s':>9} {'end_s':>9} {'score':>7}  label")
    for r in rows[: args.top]:
        print(f"{r['segment'][0]:9.2f} {r['segment'][1]:9.2f} {r['score']:7.3f}  {r['label']}")
    return 0


def _plot(args, dets, video_id: str) -> None:
    from e2etal.data.annotations import load_annotations
    from e2etal.engine import load_checkpoint
    from e2etal.plot import plot_timeline

    classes = list(load_checkpoint(args.checkpoint, with_state=False).classes.names)
    ground_truth = duration = None
    if args.ground_truth:
        gt = load_annotations(args.ground_truth)
        if video_id not in gt.videos:
            raise ValueError(f"{args.ground_truth}: no video {video_id!r} (use --video-id)")
        ground_truth = gt.videos[video_id]
        duration = ground_truth.duration_s
        classes += [c for c in gt.classes.names if c not in classes]
    if args.video and duration is None:
        from e2etal.data.video import probe_video

        duration = probe_video(args.video).duration_s
    plot_timeline(args.plot, dets, video_id, duration_s=duration or args.duration, ground_truth=ground_truth,
                  classes=classes, top_k=args.top)
    print(f"wrote {args.plot}", file=sys.stderr)
