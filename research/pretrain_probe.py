"""How learnable is a synthetic world in the demo's pretraining budget?

Trains the demo's tiny ViT (the `e2etal demo` pretraining stage: same clips, loop, budget)
and, as a reference with a convolutional inductive bias, a small 3-D CNN on the same
trimmed clips, and prints the held-out clip accuracy of each (chance = 1 / classes) and
its accuracy on training clips (high train with chance-level held-out = memorising).

    python research/pretrain_probe.py                                  # the demo's world
    python research/pretrain_probe.py --set num_classes=6 background_value=[0.3,0.55] \\
        --clips 1200 --epochs 8 --lr 3e-3 --models vit cnn

`--set` takes `WorldConfig` fields (values parsed as YAML). Prints one JSON object, then a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
import yaml
from torch import nn

from e2etal.backbones import BACKBONES
from e2etal.demo import DemoSettings
from e2etal.synthetic import fit_clip_classifier


def reference_cnn(num_classes: int) -> nn.Module:
    """Three 3-D conv layers and a linear classifier: input `[B, 3, T, H, W]` -> logits."""
    return nn.Sequential(
        nn.Conv3d(3, 32, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2)), nn.ReLU(),
        nn.Conv3d(32, 64, 3, stride=(1, 2, 2), padding=1), nn.ReLU(),
        nn.Conv3d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


def main() -> None:
    settings = DemoSettings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="WorldConfig fields to change")
    ap.add_argument("--clips", type=int, default=settings.pretrain_clips)
    ap.add_argument("--epochs", type=int, default=settings.pretrain_epochs)
    ap.add_argument("--lr", type=float, default=settings.pretrain_lr, help="peak learning rate")
    ap.add_argument("--pixel-std", type=float, default=settings.pixel_std[0],
                    help="std of the pixel normalisation, every channel")
    ap.add_argument("--models", nargs="+", choices=("vit", "cnn"), default=["vit", "cnn"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    changes = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected FIELD=VALUE")
        changes[key] = yaml.safe_load(value)
    world = dataclasses.replace(settings.world, **changes)

    results = {}
    for name in args.models:
        torch.manual_seed(args.seed)
        if name == "vit":
            model = BACKBONES[settings.backbone](img_size=world.height, num_frames=world.clip_frames,
                                                 num_classes=world.num_classes)
            classify = model.classify
        else:
            model = reference_cnn(world.num_classes)
            classify = model
        began = time.perf_counter()
        results[name] = fit_clip_classifier(model, classify, world, args.clips, args.epochs, args.seed,
                                            torch.device("cpu"), progress=False, lr=args.lr,
                                            pixel_mean=settings.pixel_mean, pixel_std=(args.pixel_std,) * 3)
        results[name]["seconds"] = time.perf_counter() - began
    out = {"benchmark": "pretrain_probe", "world_changes": changes, "lr": args.lr, "pixel_std": args.pixel_std,
           "chance": 1 / world.num_classes, "threads": torch.get_num_threads(), "results": results}
    print(json.dumps(out))
    print(f"\n{'model':<6}{'held-out acc':>14}{'train acc':>11}{'chance':>8}{'s':>6}")
    for name, r in results.items():
        print(f"{name:<6}{r['clip_accuracy']:14.3f}{r['train_accuracy']:11.3f}{out['chance']:8.3f}{r['seconds']:6.0f}")


if __name__ == "__main__":
    main()
