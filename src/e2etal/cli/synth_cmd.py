"""`e2etal synth`: write a synthetic untrimmed-video world (videos + ground truth)."""

from __future__ import annotations

import dataclasses
import sys
import time

from e2etal.cli import command_help
from e2etal.synthetic import CLASS_NAMES, WorldConfig, make_world, write_trimmed_clips

_DEFAULTS = WorldConfig()


def register(sub) -> None:
    p = sub.add_parser(
        "synth",
        help=command_help("synth"),
        description="Procedurally generated untrimmed videos whose action classes differ only in "
        "motion over time, written as OUT/videos/*.mp4, OUT/annotations.json (ActivityNet layout, "
        "subsets training/validation) and OUT/world.json. Same seed, same videos. Classes, in "
        f"label_id order: {', '.join(CLASS_NAMES)}.",
    )
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--videos", type=int, default=_DEFAULTS.train_videos, metavar="N",
                   help=f"training videos (default {_DEFAULTS.train_videos})")
    p.add_argument("--val-videos", type=int, default=_DEFAULTS.val_videos, metavar="N",
                   help=f"validation videos (default {_DEFAULTS.val_videos})")
    p.add_argument("--classes", type=int, default=_DEFAULTS.num_classes, metavar="N",
                   help=f"number of action classes, the first N of the list above "
                   f"(2..{len(CLASS_NAMES)}, default {_DEFAULTS.num_classes})")
    p.add_argument("--fps", type=int, default=_DEFAULTS.fps, help=f"frame rate (default {_DEFAULTS.fps})")
    p.add_argument("--size", type=int, default=_DEFAULTS.height, metavar="PX",
                   help=f"frame height and width, even (default {_DEFAULTS.height})")
    p.add_argument("--min-duration", type=float, default=_DEFAULTS.min_video_s, metavar="S",
                   help=f"shortest video in seconds (default {_DEFAULTS.min_video_s:g})")
    p.add_argument("--max-duration", type=float, default=_DEFAULTS.max_video_s, metavar="S",
                   help=f"longest video in seconds (default {_DEFAULTS.max_video_s:g})")
    p.add_argument("--instances", type=int, nargs=2, default=(_DEFAULTS.min_instances, _DEFAULTS.max_instances),
                   metavar=("MIN", "MAX"), help="action instances per video, fewer when they do not fit "
                   f"(default {_DEFAULTS.min_instances} {_DEFAULTS.max_instances})")
    p.add_argument("--distractors", type=int, default=_DEFAULTS.num_distractors, metavar="N",
                   help=f"random-walk distractor objects in view (default {_DEFAULTS.num_distractors})")
    p.add_argument("--object-size", type=float, nargs=2, default=_DEFAULTS.object_size, metavar=("MIN", "MAX"),
                   help="half-length range of every object, fraction of the frame side "
                   f"(default {_DEFAULTS.object_size[0]:g} {_DEFAULTS.object_size[1]:g})")
    p.add_argument("--object-saturation", type=float, nargs=2, default=_DEFAULTS.object_saturation,
                   metavar=("MIN", "MAX"), help="HSV saturation range of object colours, 0-1; 0 0 = grey "
                   f"(default {_DEFAULTS.object_saturation[0]:g} {_DEFAULTS.object_saturation[1]:g})")
    p.add_argument("--object-value", type=float, nargs=2, default=_DEFAULTS.object_value, metavar=("MIN", "MAX"),
                   help="HSV value (brightness) range of object colours, 0-1 "
                   f"(default {_DEFAULTS.object_value[0]:g} {_DEFAULTS.object_value[1]:g})")
    p.add_argument("--background-contrast", type=float, nargs=2, default=_DEFAULTS.background_contrast,
                   metavar=("MIN", "MAX"), help="range of the background texture's brightness std, 0-255; "
                   f"0 0 = a flat background (default {_DEFAULTS.background_contrast[0]:g} "
                   f"{_DEFAULTS.background_contrast[1]:g})")
    p.add_argument("--background-saturation", type=float, nargs=2, default=_DEFAULTS.background_saturation,
                   metavar=("MIN", "MAX"), help="HSV saturation range of the background's base colour, 0-1 "
                   f"(default {_DEFAULTS.background_saturation[0]:g} {_DEFAULTS.background_saturation[1]:g})")
    p.add_argument("--background-value", type=float, nargs=2, default=_DEFAULTS.background_value,
                   metavar=("MIN", "MAX"), help="HSV value (brightness) range of the background's base colour, 0-1 "
                   f"(default {_DEFAULTS.background_value[0]:g} {_DEFAULTS.background_value[1]:g})")
    p.add_argument("--clips", type=int, default=0, metavar="N",
                   help="also write N trimmed classification clips to OUT/clips/ with labels in "
                   "OUT/clips.json (default 0)")
    p.add_argument("--clip-frames", type=int, default=_DEFAULTS.clip_frames, metavar="T",
                   help=f"frames per trimmed clip (default {_DEFAULTS.clip_frames})")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args) -> WorldConfig:
    return dataclasses.replace(
        _DEFAULTS,
        height=args.size,
        width=args.size,
        fps=args.fps,
        num_classes=args.classes,
        train_videos=args.videos,
        val_videos=args.val_videos,
        min_video_s=args.min_duration,
        max_video_s=args.max_duration,
        min_instances=args.instances[0],
        max_instances=args.instances[1],
        num_distractors=args.distractors,
        object_size=tuple(args.object_size),
        object_saturation=tuple(args.object_saturation),
        object_value=tuple(args.object_value),
        background_contrast=tuple(args.background_contrast),
        background_saturation=tuple(args.background_saturation),
        background_value=tuple(args.background_value),
        clip_frames=args.clip_frames,
    )


def run(args) -> int:
    from e2etal.io import output_dir

    cfg = config_from_args(args)
    output_dir(args.out, "--out")
    began = time.perf_counter()
    out = make_world(args.out, cfg, seed=args.seed, progress=not args.quiet)
    if args.clips:
        write_trimmed_clips(out, cfg, args.clips, seed=args.seed, progress=not args.quiet)
    clips = f", {args.clips} clips in {out / 'clips'}" if args.clips else ""
    print(
        f"wrote {cfg.train_videos} training + {cfg.val_videos} validation videos to {out / 'videos'}, "
        f"ground truth {out / 'annotations.json'}{clips} ({time.perf_counter() - began:.1f} s)",
        file=sys.stderr,
    )
    return 0
