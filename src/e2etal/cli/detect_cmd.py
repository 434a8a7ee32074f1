"""`e2etal detect`: detections for one video, from the video file or its features."""

from __future__ import annotations

import json
import sys

from e2etal.cli import command_help
from e2etal.data.predictions import save_predictions


def register(sub) -> None:
    p = sub.add_parser(
        "detect",
        help=command_help("detect"),
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
    p.add_argument("--top", type=_positive_int, default=20, help="print and plot at most this many segments (default 20)")
    p.add_argument("--json", action="store_true", help="print the results JSON instead of a table")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def run(args) -> int:
    from pathlib import Path

    from e2etal.engine.trainer import resolve_device
    from e2etal.experiment import detect_features, detect_video
    from e2etal.io import output_file

    if (args.video is None) == (args.features is None):
        raise ValueError("give either VIDEO or --features FILE.npy")
    resolve_device(args.device, "--device")
    for option, path in (("--out", args.out), ("--plot", args.plot)):
        if path:
            output_file(path, option, create=False)
    if args.ground_truth and not args.plot:
        raise ValueError("--ground-truth is drawn beside the detections: give --plot FILE.png too")
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
    from e2etal.plot import score_texts

    rows = results.get(video_id, [])[: args.top]
    print(f"{video_id}: {len(results.get(video_id, []))} segment(s)")
    scores = score_texts([r["score"] for r in rows])  # enough digits that distinct scores read differently
    width = max([len(t) for t in scores] + [5])
    print(f"{'rank':>4} {'start_s':>9} {'end_s':>9} {'score':>{width}}  label")
    for rank, (r, score) in enumerate(zip(rows, scores), 1):
        print(f"{rank:>4} {r['segment'][0]:9.2f} {r['segment'][1]:9.2f} {score:>{width}}  {r['label']}")
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
        unknown = sorted({i.label for i in ground_truth.instances} - set(classes))
        if unknown:
            print(f"warning: {args.ground_truth}: video {video_id!r} has ground truth of class(es) the checkpoint "
                  f"was not trained on, which it cannot detect: {', '.join(unknown)}", file=sys.stderr)
        classes += [c for c in gt.classes.names if c not in classes]
    if args.video and duration is None:
        from e2etal.data.video import probe_video

        duration = probe_video(args.video).duration_s
    plot_timeline(args.plot, dets, video_id, duration_s=duration or args.duration, ground_truth=ground_truth,
                  classes=classes, top_k=args.top)
    print(f"wrote {args.plot}", file=sys.stderr)
