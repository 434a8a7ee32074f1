"""`e2etal eval`: mAP of a predictions file against ground truth, or of a checkpoint's
detections on a subset."""

from __future__ import annotations

import json
import sys

from e2etal.cli import command_help
from e2etal.metrics import ACTIVITYNET_TIOU, THUMOS14_TIOU, evaluate_files, parse_tiou

PRESETS = {
    "thumos14": (THUMOS14_TIOU, "test"),
    "activitynet": (ACTIVITYNET_TIOU, "validation"),
}


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help=command_help("eval"),
        description="Mean average precision of detections in the ActivityNet results layout against "
        "ground truth (ActivityNet JSON, ActionFormer's THUMOS-14 JSON, or CSV), with the official "
        "ActivityNet semantics.",
    )
    p.add_argument("config", nargs="?", help="with --checkpoint: the experiment config (default: the checkpoint's own)")
    p.add_argument("--checkpoint", metavar="CKPT", help="run this checkpoint on the subset, write its predictions and evaluate them")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with a config: override a value (repeatable)")
    p.add_argument("--out", metavar="PRED.json", help="with --checkpoint: where to write the predictions "
                   "(default: predictions_CKPT_SUBSET.json beside the checkpoint directory, e.g. "
                   "runs/x/predictions_best_test.json)")
    p.add_argument("--ground-truth", "-g", metavar="GT", help="annotation file (.json or .csv)")
    p.add_argument("--predictions", "-p", metavar="PRED", help="results JSON {'results': {video: [...]}}")
    p.add_argument("--subset", help="ground-truth subset to evaluate (case-insensitive; 'all' for every video); "
                   "default: the preset's (test / validation), or the only subset of the file")
    p.add_argument("--dataset", choices=sorted(PRESETS), help="preset tIoU thresholds and subset: "
                   "thumos14 = 0.3:0.7:5 on test, activitynet = 0.5:0.95:10 on validation")
    p.add_argument("--tiou", help="thresholds: START:STOP:NUM (inclusive, like numpy.linspace) or a comma list; "
                   "default 0.5:0.95:10")
    p.add_argument("--per-class", action="store_true", help="also print AP of every class")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--keep-duplicates", action="store_true", help="keep repeated and shorter-than-1-ms ground-truth "
                   "instances, as the official ActivityNet code does (default: drop them, as ActionFormer/OpenTAD do)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.subset is not None and not args.subset.strip():
        raise ValueError("--subset: expected a subset name (e.g. validation, test, or all), got an empty string")
    if args.checkpoint:
        from e2etal import distributed

        result = _run_checkpoint(args)
        if not distributed.is_main():
            return 0
    elif args.ground_truth and args.predictions:
        result = _run_files(args)  # without torch: it is not imported on this path
    else:
        raise ValueError("give --ground-truth and --predictions, or --checkpoint CKPT [CONFIG]")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(result.table(per_class=args.per_class))
    return 0


def _run_checkpoint(args):
    from pathlib import Path

    from e2etal import distributed
    from e2etal.data.predictions import save_predictions
    from e2etal.experiment import evaluate_checkpoint, experiment_config
    from e2etal.io import output_file

    cfg = experiment_config(args.config or args.checkpoint, args.overrides)
    if args.tiou or args.dataset:
        cfg.eval.tiou = parse_tiou(args.tiou) if args.tiou else PRESETS[args.dataset][0]
    cfg.eval.keep_duplicates = cfg.eval.keep_duplicates or args.keep_duplicates
    subset = args.subset or cfg.val_subset
    checkpoint = Path(args.checkpoint).resolve()
    out = args.out or checkpoint.parent / f"predictions_{checkpoint.name}_{subset}.json"
    out = output_file(out, "--out", create=False)
    result, detections = evaluate_checkpoint(args.checkpoint, cfg, subset=subset)
    if distributed.is_main():
        save_predictions(out, detections)
        print(f"wrote {len(detections)} detections to {out}", file=sys.stderr)
    return result


def _run_files(args):
    preset_tiou, preset_subset = PRESETS.get(args.dataset, (ACTIVITYNET_TIOU, None))
    tiou = parse_tiou(args.tiou) if args.tiou else preset_tiou
    return evaluate_files(
        args.ground_truth,
        args.predictions,
        subset=args.subset or preset_subset,
        tiou_thresholds=tiou,
        keep_duplicates=args.keep_duplicates,
    )
