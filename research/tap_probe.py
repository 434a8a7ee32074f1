"""What do the demo backbone's features say about each glide's direction?

Linear probes on trimmed clips of the demo's world, one per feature set of a pretrained
demo backbone (`<demo out>/backbone/tiny_vit_pretrained.pth`):

* `grid`: a layer's tokens average-pooled to LoSA's 2x2 grid at each temporal position
  (what LoSA's adapters read from a tap);
* `mean`: the same layer's spatial mean at each temporal position (what head-only
  transfer reads from the last layer).

Held-out accuracy per class tells whether a direction the backbone was not pretrained
on (the vertical glides) is still linearly present in what each method reads.

    python research/tap_probe.py --backbone e2etal-demo/backbone/tiny_vit_pretrained.pth

Prints one JSON object, then a table.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from e2etal.adapters.frozen import FrozenPassConfig, pool_tokens
from e2etal.backbones import build_backbone
from e2etal.backbones.vit import VisionTransformer
from e2etal.data.video import normalize_clip
from e2etal.demo import DemoSettings
from e2etal.synthetic import make_trimmed_clips


def clip_features(vit: VisionTransformer, clips: torch.Tensor, settings: DemoSettings, layers: tuple[int, ...]) -> dict:
    """`{name: [N, F]}`: per layer, the 2x2-grid and the spatial-mean tokens of every temporal position."""
    out: dict[str, list[torch.Tensor]] = {}
    settings_grid = FrozenPassConfig().grid  # the demo's frozen pass pools to the default 2x2 grid
    with torch.no_grad():
        for i in range(0, len(clips), 64):
            x = normalize_clip(clips[i : i + 64], settings.pixel_mean, settings.pixel_std).transpose(1, 2)
            _, taps = vit(x, taps=layers)
            for layer, tokens in taps.items():  # [B, T', h, w, D]
                grid = pool_tokens(tokens, settings_grid)  # [B, T', g*g, D], as the frozen pass pools a tap
                out.setdefault(f"layer {layer} grid", []).append(grid.flatten(1))
                # the spatial mean of the grid, as LoSA's base / head-only's features
                out.setdefault(f"layer {layer} mean", []).append(grid.mean(2).flatten(1))
    return {k: torch.cat(v) for k, v in out.items()}


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Standardise, fit a softmax regression (AdamW, 300 full-batch steps), return test predictions."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    model = torch.nn.Linear(train_x.shape[1], num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(300):
        loss = F.cross_entropy(model(train_x), train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return model(test_x).argmax(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", required=True, help="a demo run's backbone/tiny_vit_pretrained.pth")
    ap.add_argument("--train-clips", type=int, default=800)
    ap.add_argument("--test-clips", type=int, default=400)
    args = ap.parse_args()

    settings = DemoSettings()
    world = settings.world
    vit = build_backbone(settings.backbone, args.backbone, img_size=world.height,
                         num_frames=world.clip_frames).module.eval()
    layers = settings.losa_taps
    train_clips, train_y = make_trimmed_clips(world, args.train_clips, seed=11)
    test_clips, test_y = make_trimmed_clips(world, args.test_clips, seed=12)
    train_x = clip_features(vit, train_clips, settings, layers)
    test_x = clip_features(vit, test_clips, settings, layers)

    results = {}
    for name in train_x:
        pred = linear_probe(train_x[name], train_y, test_x[name], world.num_classes)
        results[name] = {"accuracy": float((pred == test_y).float().mean()),
                         "per_class": {c: float((pred[test_y == k] == k).float().mean())
                                       for k, c in enumerate(world.class_names)}}
    print(json.dumps({"benchmark": "tap_probe", "backbone": args.backbone, "chance": 1 / world.num_classes,
                      "results": results}))
    names = list(world.class_names)
    print(f"\n{'features':<16}{'acc':>7}" + "".join(f"{c:>12}" for c in names))
    for name, r in results.items():
        print(f"{name:<16}{r['accuracy']:7.3f}" + "".join(f"{r['per_class'][c]:12.2f}" for c in names))


if __name__ == "__main__":
    main()
