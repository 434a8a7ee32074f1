"""The demo's acceptance figure: head-only vs LoSA average mAP on the default synthetic
world, over several seeds (world, pretraining and training all change with the seed).

    python benchmarks/demo_seeds.py [--seeds 0 1 2] [--out /tmp/e2etal-demo-seeds] [--quick]
                                    [--pretrain-classes N | all]

Prints one JSON object (per-seed figures, means, LoSA minus head-only), then a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

from e2etal.demo import DemoSettings, run_demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="/tmp/e2etal-demo-seeds")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--pretrain-classes", default=None, metavar="N",
                    help="pretrain on the world's first N classes, or 'all' (default: DemoSettings)")
    args = ap.parse_args()
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    if args.pretrain_classes is not None:
        value = None if args.pretrain_classes == "all" else int(args.pretrain_classes)
        settings = dataclasses.replace(settings, pretrain_classes=value)

    per_seed = {}
    t0 = time.perf_counter()
    for seed in args.seeds:
        report = run_demo(f"{args.out}/seed{seed}", seed=seed, device=args.device, progress=False, settings=settings)
        per_seed[seed] = {
            "methods": {k: v["average_mAP"] for k, v in report["methods"].items()},
            "pretrain_clip_accuracy": report["pretrain"]["clip_accuracy"],
            "total_s": report["total_s"],
            "device": report["settings"]["device"],
        }
    methods = list(next(iter(per_seed.values()))["methods"])
    means = {m: statistics.mean(r["methods"][m] for r in per_seed.values()) for m in methods}
    out = {"benchmark": "demo_seeds", "quick": args.quick, "pretrain_classes": settings.pretrain_classes,
           "seeds": per_seed, "mean_average_mAP": means, "losa_minus_head_only_points": 100 * (means["LoSA"] - means["head-only"]),
           "wall_s": time.perf_counter() - t0}
    print(json.dumps(out))
    print(f"\n{'seed':<8}" + "".join(f"{m:>12}" for m in methods) + f"{'pretrain acc':>14}{'demo s':>9}")
    for seed, r in per_seed.items():
        print(f"{seed:<8}" + "".join(f"{100 * r['methods'][m]:12.2f}" for m in methods)
              + f"{100 * r['pretrain_clip_accuracy']:14.1f}{r['total_s']:9.0f}")
    print(f"{'mean':<8}" + "".join(f"{100 * means[m]:12.2f}" for m in methods))
    print(f"LoSA - head-only: {out['losa_minus_head_only_points']:+.2f} points of average mAP (target: >= +3)")


if __name__ == "__main__":
    main()
