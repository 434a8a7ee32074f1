"""How much of what LoSA reads beyond head-only's input can the demo's own data teach?

Frame-level linear probes on the tap cache of a finished video run (a demo's
`<demo out>/runs/LoSA/last`, or any run with `video.tap_cache` set): every temporal
position of the untrimmed videos is labelled with the class of the ground-truth instance
around its centre, or background. A probe fits the training videos'
positions and is scored on the validation videos'. Each feature set is read at the
position and its `--window` neighbours on each side (edges repeated), the span LoSA's
short-range adapter attends over:

* `last mean`: the last layer's spatial mean (what head-only transfer reads);
* `last grid`: the last layer's g x g grid;
* `taps mean`: every tapped layer's spatial mean (what the long-range adapters read);
* `taps grid`: every tapped layer's grid (what the short-range adapters read).

Besides accuracy on every validation position, each probe is scored on the `clean` ones:
positions whose whole window lies inside one instance (an instance's core, where the
window sees nothing but the action). The recall per class is on the clean positions.

`research/tap_probe.py` asks whether a direction is present in clean trimmed clips;
this asks whether it can be learned from the demo's training videos, in under a minute
instead of a demo run. A world where `taps grid` beats `last mean` neither on all validation
positions nor on the clean ones leaves LoSA little to gain over head-only.

    python research/frame_probe.py --run /tmp/e2etal-demo-seeds/seed0/runs/LoSA/last

Prints one JSON object, then a table (recall per class on the clean positions).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
# research/ is the script's directory, so on sys.path
from tap_probe import linear_probe

from e2etal.adapters.tap_cache import TapCache
from e2etal.data.annotations import Annotations, load_annotations
from e2etal.data.windows import VideoDataConfig, window_grid
from e2etal.experiment import build_detector, experiment_config


def position_labels(video, classes, grid, num_positions: int) -> torch.Tensor:
    """`[T']` class index of the instance containing each position's centre; `len(classes)` = background."""
    centres = grid.to_seconds(torch.arange(num_positions, dtype=torch.float64))
    labels = torch.full((num_positions,), len(classes))
    for inst in video.instances:
        labels[(centres >= inst.start_s) & (centres < inst.end_s)] = classes.index(inst.label)
    return labels


def clean_positions(video, grid, num_positions: int, window: int) -> torch.Tensor:
    """`[T']` bool: the position's window (itself and `window` neighbours on each side, each
    position spanning `grid.step_s`) lies inside one instance."""
    positions = torch.arange(num_positions, dtype=torch.float64)
    first, last = grid.to_seconds(positions - window - 0.5), grid.to_seconds(positions + window + 0.5)
    clean = torch.zeros(num_positions, dtype=torch.bool)
    for inst in video.instances:
        clean |= (first >= inst.start_s) & (last <= inst.end_s)
    return clean


def with_neighbours(x: torch.Tensor, window: int) -> torch.Tensor:
    """`[T', F] -> [T', (2w + 1) F]`: each position's features and those of its w neighbours on each side."""
    padded = F.pad(x.T[None], (window, window), mode="replicate")[0].T  # [T' + 2w, F]
    return padded.unfold(0, 2 * window + 1, 1).flatten(1)


def subset_features(annotations: Annotations, cache: TapCache, data: VideoDataConfig, frames_per_position: int,
                    window: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Features per set `[P, F]`, labels `[P]` and the clean mask `[P]` of every position
    of every video."""
    feats: dict[str, list[torch.Tensor]] = {}
    labels, clean = [], []
    for video_id in sorted(annotations.videos):
        video = annotations.videos[video_id]
        tapped, last = cache.load(video_id)  # [T', L, g*g, D], [T', g*g, D]
        grid = window_grid(data, 0, frames_per_position, video.duration_s)
        labels.append(position_labels(video, annotations.classes, grid, len(last)))
        clean.append(clean_positions(video, grid, len(last), window))
        sets = {"last mean": last.mean(1), "last grid": last.flatten(1),
                "taps mean": tapped.mean(2).flatten(1), "taps grid": tapped.flatten(1)}
        for name, x in sets.items():
            feats.setdefault(name, []).append(with_neighbours(x, window))
    return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(labels), torch.cat(clean)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="a video run's checkpoint directory")
    ap.add_argument("--window", type=int, default=None,
                    help="neighbours on each side (default: the run's losa.short_window)")
    args = ap.parse_args()

    cfg = experiment_config(args.run)
    detector = build_detector(cfg)
    cache = cfg.pipeline.tap_cache(cfg.pipeline.video_config(cfg, detector), cfg, detector, torch.device("cpu"))
    if cache is None or not any(cache.dir.glob("*.safetensors")):
        raise SystemExit(f"{args.run}: the run has no filled tap cache (video.tap_cache unset, or nothing cached)")
    window = cfg.losa.short_window if args.window is None else args.window
    frames_per_position = detector.backbone.frames_per_position
    annotations = load_annotations(cfg.video.annotations)
    classes = list(annotations.classes.names)
    train_x, train_y, _ = subset_features(annotations.subset(cfg.video.train_subset), cache, cfg.video,
                                          frames_per_position, window)
    val_x, val_y, val_clean = subset_features(annotations.subset(cfg.video.val_subset), cache, cfg.video,
                                              frames_per_position, window)

    results = {}
    for name in train_x:
        pred = linear_probe(train_x[name], train_y, torch.cat([train_x[name], val_x[name]]), len(classes) + 1)
        train_pred, val_pred = pred[: len(train_y)], pred[len(train_y):]
        results[name] = {
            "features": train_x[name].shape[1],
            "train_accuracy": float((train_pred == train_y).float().mean()),
            "val_accuracy": float((val_pred == val_y).float().mean()),
            "val_recall": {c: float((val_pred[val_y == k] == k).float().mean())
                           for k, c in enumerate(classes + ["background"])},
            "clean_accuracy": float((val_pred[val_clean] == val_y[val_clean]).float().mean()),
            "clean_recall": {c: float((val_pred[val_clean & (val_y == k)] == k).float().mean())
                             for k, c in enumerate(classes)},
        }
    print(json.dumps({"benchmark": "frame_probe", "run": str(args.run), "cache": str(cache.dir),
                      "window": window, "train_positions": len(train_y), "val_positions": len(val_y),
                      "clean_val_positions": int(val_clean.sum()),
                      "results": results}))
    print(f"\n{'features':<11}{'dims':>7}{'train':>7}{'val':>7}{'clean':>7}" + "".join(f"{c[:11]:>12}" for c in classes))
    for name, r in results.items():
        print(f"{name:<11}{r['features']:7d}{r['train_accuracy']:7.3f}{r['val_accuracy']:7.3f}{r['clean_accuracy']:7.3f}"
              + "".join(f"{r['clean_recall'][c]:12.2f}" for c in classes))


if __name__ == "__main__":
    main()
