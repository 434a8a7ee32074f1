"""`e2etal detect`: detections for one video."""

from __future__ import annotations

import json

from e2etal.data.predictions import save_predictions


def register(sub) -> None:
    p = sub.add_parser(
        "detect",
        help="detect actions in one video (from its feature file)",
        description="Run a trained checkpoint on one video's pre-extracted features [T, C] (.npy) and print "
        "its segments, best first.",
    )
    p.add_argument("--features", required=True, metavar="FILE.npy", help="the video's features [T, C]")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint directory (e.g. OUT_DIR/best)")
    p.add_argument("--fps", type=float, help="the video's frame rate (needed when the config reads fps from annotations)")
    p.add_argument("--duration", type=float, help="the video's duration in seconds (clips segments; needed for resized features)")
    p.add_argument("--top", type=int, default=20, help="print at most this many segments (default 20)")
    p.add_argument("--out", metavar="FILE.json", help="also write all detections in the ActivityNet results layout")
    p.add_argument("--json", action="store_true", help="print the results JSON instead of a table")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args) -> int:
    from e2etal.experiment import detect_features

    dets = detect_features(args.features, args.checkpoint, fps=args.fps, duration_s=args.duration, device=args.device)
    if args.out:
        save_predictions(args.out, dets)
    results = dets.by_video()
    if args.json:
        print(json.dumps({"results": results}))
        return 0
    for video, rows in results.items():
        print(f"{video}: {len(rows)} segment(s)")
        print(f"{'start_s':>9} {'end_s':>9} {'score':>7}  label")
        for r in rows[: args.top]:
            print(f"{r['segment'][0]:9.2f} {r['segment'][1]:9.2f} {r['score']:7.3f}  {r['label']}")
    return 0
