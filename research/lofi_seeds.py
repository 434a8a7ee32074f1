"""LoFi on the demo's synthetic world: the same head on the features of the LoFi-trained
tiny ViT and of the untouched one, over several seeds (world, pretraining and training
all change with the seed). A measurement of what LoFi does on this world, not a target.

    python research/lofi_seeds.py [--seeds 0 1 2] [--out /tmp/e2etal-lofi-seeds] [--quick]

Each seed is one `e2etal demo --method lofi` run (`e2etal.demo.run_demo(lofi=True)`).
Prints one JSON object (per-seed figures, means, LoFi minus untouched), then a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from e2etal.demo import DemoSettings, run_demo
from e2etal.engine.trainer import resolve_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="/tmp/e2etal-lofi-seeds")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    device = resolve_device(args.device, "--device")
    per_seed = {}
    t0 = time.perf_counter()
    for seed in args.seeds:
        report = run_demo(f"{args.out}/seed{seed}", seed=seed, device=str(device), progress=False, settings=settings,
                          lofi=True)
        per_seed[seed] = {"average_mAP": {k: v["average_mAP"] for k, v in report["methods"].items()},
                          "pretrain_clip_accuracy": report["pretrain"]["clip_accuracy"], "total_s": report["total_s"]}
    names = list(next(iter(per_seed.values()))["average_mAP"])
    means = {m: statistics.mean(r["average_mAP"][m] for r in per_seed.values()) for m in names}
    out = {"benchmark": "lofi_seeds", "quick": args.quick, "seeds": per_seed, "mean_average_mAP": means,
           "lofi_minus_untouched_points": 100 * (means["LoFi"] - means["untouched"]), "wall_s": time.perf_counter() - t0}
    print(json.dumps(out))
    print(f"\n{'seed':<8}" + "".join(f"{m:>12}" for m in names) + f"{'pretrain acc':>14}{'demo s':>9}")
    for seed, r in per_seed.items():
        print(f"{seed:<8}" + "".join(f"{100 * r['average_mAP'][m]:12.2f}" for m in names)
              + f"{100 * r['pretrain_clip_accuracy']:14.1f}{r['total_s']:9.0f}")
    print(f"{'mean':<8}" + "".join(f"{100 * means[m]:12.2f}" for m in names))
    print(f"LoFi - untouched: {out['lofi_minus_untouched_points']:+.2f} points of average mAP")


if __name__ == "__main__":
    main()
