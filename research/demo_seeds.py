"""The demo's acceptance figure: head-only vs LoSA average mAP on the default synthetic
world, over several seeds (world, pretraining and training all change with the seed).

    python research/demo_seeds.py [--seeds 0 1 2] [--out /tmp/e2etal-demo-seeds] [--quick]
                                    [--pretrain-classes N | all] [--short-conv-kernel K]
                                    [--train-seeds K] [--epochs E]

With `--train-seeds K`, each method is trained K times on each seed's world and backbone
(the demo's own run, then K - 1 more training seeds on the same tap cache), and a seed's
figure is the mean over them: one training run to the next moves a method's average mAP
by several points, which the verdict should not hinge on.

Prints one JSON object (per-seed figures, means, LoSA minus head-only), then a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

from e2etal.demo import METHODS, DemoSettings, run_demo, train_method
from e2etal.engine.trainer import resolve_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="/tmp/e2etal-demo-seeds")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--pretrain-classes", default=None, metavar="N",
                    help="pretrain on the world's first N classes, or 'all' (default: DemoSettings)")
    ap.add_argument("--short-conv-kernel", type=int, default=None, metavar="K",
                    help="temporal kernel of LoSA's short-range conv (default: DemoSettings)")
    ap.add_argument("--epochs", type=int, default=None, metavar="E",
                    help="TAL training epochs of both methods (default: DemoSettings)")
    ap.add_argument("--train-seeds", type=int, default=1, metavar="K",
                    help="training runs per method and world (default 1: the demo's own)")
    args = ap.parse_args()
    if args.train_seeds < 1:
        ap.error("--train-seeds must be >= 1")
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    if args.pretrain_classes is not None:
        value = None if args.pretrain_classes == "all" else int(args.pretrain_classes)
        settings = dataclasses.replace(settings, pretrain_classes=value)
    if args.short_conv_kernel is not None:
        settings = dataclasses.replace(settings, short_conv_kernel=args.short_conv_kernel)
    if args.epochs is not None:
        settings = dataclasses.replace(settings, epochs=args.epochs)

    device = resolve_device(args.device)
    per_seed = {}
    t0 = time.perf_counter()
    for seed in args.seeds:
        seed_dir = f"{args.out}/seed{seed}"
        report = run_demo(seed_dir, seed=seed, device=str(device), progress=False, settings=settings)
        runs = {k: [v["average_mAP"]] for k, v in report["methods"].items()}
        for k in range(1, args.train_seeds):
            train_seed = seed + 1000 * k
            for m in METHODS:
                result = train_method(seed_dir, settings, m, train_seed, device, progress=False,
                                      run_name=f"{m.name}-train{train_seed}")
                runs[m.name].append(result["average_mAP"])
        per_seed[seed] = {
            "methods": {k: statistics.mean(v) for k, v in runs.items()},
            "runs": runs,
            "pretrain_clip_accuracy": report["pretrain"]["clip_accuracy"],
            "total_s": report["total_s"],
            "device": report["settings"]["device"],
        }
    methods = list(next(iter(per_seed.values()))["methods"])
    means = {m: statistics.mean(r["methods"][m] for r in per_seed.values()) for m in methods}
    out = {"benchmark": "demo_seeds", "quick": args.quick, "pretrain_classes": settings.pretrain_classes,
           "short_conv_kernel": settings.short_conv_kernel, "epochs": settings.epochs,
           "train_seeds": args.train_seeds,
           "seeds": per_seed, "mean_average_mAP": means, "losa_minus_head_only_points": 100 * (means["LoSA"] - means["head-only"]),
           "wall_s": time.perf_counter() - t0}
    print(json.dumps(out))
    print(f"\n{'seed':<8}" + "".join(f"{m:>12}" for m in methods) + f"{'pretrain acc':>14}{'demo s':>9}  runs")
    for seed, r in per_seed.items():
        runs = "  ".join(f"{m} " + "/".join(f"{100 * v:.1f}" for v in r["runs"][m]) for m in methods)
        print(f"{seed:<8}" + "".join(f"{100 * r['methods'][m]:12.2f}" for m in methods)
              + f"{100 * r['pretrain_clip_accuracy']:14.1f}{r['total_s']:9.0f}  {runs}")
    print(f"{'mean':<8}" + "".join(f"{100 * means[m]:12.2f}" for m in methods))
    print(f"LoSA - head-only: {out['losa_minus_head_only_points']:+.2f} points of average mAP (target: >= +3)")


if __name__ == "__main__":
    main()
