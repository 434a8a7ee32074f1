"""Evaluation speed: ActivityNet-1.3 validation ground truth against 10^5 detections.

    python benchmarks/eval_speed.py [--detections 100000] [--repeats 3]

Detections are the ground truth of each video jittered, plus random segments and labels,
with random scores (seeded). Also times, in fresh processes, the commands a user types
against a bare `python -c pass`: `e2etal eval --help`, and `e2etal eval -g GT -p PRED` on
the official sample prediction file (interpreter start, imports, loading both files,
evaluation; the target is that it adds under 1 s to the bare start) and on the 10^5
detections. Prints one JSON object, then a short table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from e2etal import Detections, evaluate_detections, load_annotations, save_predictions
from e2etal.machine import describe_cpu
from e2etal.metrics import ACTIVITYNET_TIOU, evaluate_files

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "activitynet13" / "activitynet13.json"
SAMPLE = SHARED.with_name("sample_detection_prediction.json")


def make_detections(gt, n: int, seed: int = 0) -> Detections:
    rng = np.random.default_rng(seed)
    videos = list(gt.videos)
    per_video = -(-n // len(videos))
    records = []
    for vid in videos:
        v = gt.videos[vid]
        for k in range(per_video):
            if v.instances and k < 2 * len(v.instances):
                inst = v.instances[k % len(v.instances)]
                s, e = inst.start_s + rng.normal(0, 3), inst.end_s + rng.normal(0, 3)
                label = inst.label
            else:
                s = rng.uniform(0, v.duration_s)
                e = s + rng.uniform(1, 60)
                label = gt.classes.names[rng.integers(len(gt.classes))]
            records.append((vid, min(s, e), max(s, e), label, float(rng.random())))
    return Detections.from_records(records[:n])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ground-truth", default=str(SHARED))
    ap.add_argument("--sample-predictions", default=str(SAMPLE), help="results file for the command-line timing")
    ap.add_argument("--detections", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/e2etal-eval-bench")
    args = ap.parse_args()

    gt = load_annotations(args.ground_truth).subset("validation")
    dets = make_detections(gt, args.detections)
    pred_path = Path(args.workdir) / "predictions.json"
    save_predictions(pred_path, dets)

    evaluate_s, files_s = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = evaluate_detections(gt, dets, ACTIVITYNET_TIOU)
        evaluate_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        evaluate_files(args.ground_truth, pred_path, "validation", ACTIVITYNET_TIOU)
        files_s.append(time.perf_counter() - t0)
    def command_s(argv: list[str]) -> float:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, *argv], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    bare_s = command_s(["-c", "pass"])
    eval_cmd = ["-m", "e2etal", "eval", "-g", args.ground_truth, "--subset", "validation", "-p"]
    cli_s = command_s(eval_cmd + [args.sample_predictions])
    cli_large_s = command_s(eval_cmd + [str(pred_path)])
    help_s = command_s(["-m", "e2etal", "eval", "--help"])
    out = {
        "benchmark": "eval_speed",
        "machine": describe_cpu(),
        "videos": len(gt.videos),
        "ground_truth": gt.num_instances(),
        "detections": len(dets),
        "average_mAP": result.average_mAP,
        "evaluate_s_best": min(evaluate_s),
        "evaluate_files_s_best": min(files_s),
        "python_start_s_median": bare_s,
        "cli_eval_s_median": cli_s,
        "cli_eval_added_s": cli_s - bare_s,
        "cli_eval_large_added_s": cli_large_s - bare_s,
        "cli_help_added_s": help_s - bare_s,
        "cli_target_added_s": 1.0,
    }
    print(json.dumps(out))
    print(f"\n{'what':<40}{'seconds':>10}")
    print(f"{'evaluate_detections (in memory)':<40}{out['evaluate_s_best']:>10.3f}")
    print(f"{'evaluate_files (load both JSON + eval)':<40}{out['evaluate_files_s_best']:>10.3f}")
    verdict = "pass" if out["cli_eval_added_s"] < out["cli_target_added_s"] else "FAIL"
    print(f"{'e2etal eval --help (added to python start)':<44}{out['cli_help_added_s']:>6.3f}")
    print(f"{'e2etal eval, official sample (added)':<44}{out['cli_eval_added_s']:>6.3f}  (target < 1 s: {verdict})")
    print(f"{'e2etal eval, 10^5 detections (added)':<44}{out['cli_eval_large_added_s']:>6.3f}")


if __name__ == "__main__":
    main()
