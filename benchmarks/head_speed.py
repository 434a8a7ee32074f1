"""Speed of the ActionFormer-style head against its previous version and ActionFormer's own.

    python benchmarks/head_speed.py [--actionformer DIR] [--repeats 5] [--threads N]
    python benchmarks/head_speed.py --device cuda --bf16 [--actionformer DIR]     # on a GPU
    python benchmarks/head_speed.py --tiny [--actionformer DIR]                   # toy sizes, seconds

All columns are built at ActionFormer's THUMOS-14 I3D setting (HeadConfig() here,
configs/thumos_i3d.yaml merged on libs/core/config.py there: input 2048, embed 512, 2 embed
convs, 2 stem and 5 branch blocks, window 19, 4 heads, identity FPN, head width 512, 3 head
layers), with the same dropout and drop path (default 0.0 and 0.1, ActionFormer's) and the
same number of parameters (checked). The input is ActionFormer's THUMOS training shape: a
batch of 2 random feature sequences padded to 2304 steps (the second 2000 steps long, so
the padding path runs) with 4 random actions each.

With --tiny both are built at toy widths (input 64, embed and head 64) over 576 steps
(the second video 500 long), still with equal parameter counts; it checks the benchmark
itself, not the speed.

Timed on --device (CPU by default; on CUDA every timing is between two synchronisations),
with --bf16 under bfloat16 autocast for both models, interleaved over the repeats (min
and median reported):
  * train: zero_grad, forward, loss, backward, clip_grad_norm_(1.0), AdamW step.
    ActionFormer's forward also pads the two feature arrays into its batch (one copy);
  * eval: forward under no_grad, the raw per-level outputs only: ActionFormer's backbone,
    neck, point generator and both heads called directly, since its own eval forward
    takes one video at a time and goes on to decode and run its NMS; neither model's
    decoding or suppression is timed.
Columns: "before" is the head as it was before the speed work (benchmarks/_head_baseline.py),
"now" is e2etal.heads, "actionformer" is LocPointTransformer imported from the checkout
given with --actionformer (skipped without it; nothing of it lives in this repository).
Prints one JSON object (wall and process CPU seconds), then a short table (wall).
Timings move with other load on the machine: compare the columns of one run, not runs; on
a busy machine, `--threads 1` and the CPU seconds are the steadier figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _head_baseline  # noqa: E402

from e2etal.heads import HeadConfig, build_head  # noqa: E402
from e2etal.machine import describe_cpu  # noqa: E402

LENGTHS = (2304, 2000)  # valid steps per video; the batch is padded to the first
# --tiny: a multiple of every level's stride (32) and of 18, since ActionFormer's local
# attention cuts each level into chunks of 2 x (19 // 2) steps.
TINY_LENGTHS = (576, 500)
TINY_WIDTH = 64  # input, embed and head channels with --tiny


def head_config(tiny: bool, dropout: float, drop_path: float) -> tuple[HeadConfig, tuple[int, ...]]:
    """The benchmarked head's config and its batch's valid lengths: ActionFormer's THUMOS-14
    setting, or with `tiny` toy widths over TINY_LENGTHS."""
    lengths = TINY_LENGTHS if tiny else LENGTHS
    widths = dict(input_dim=TINY_WIDTH, embed_dim=TINY_WIDTH, head_dim=TINY_WIDTH, max_seq_len=max(lengths)) if tiny else {}
    return HeadConfig(dropout=dropout, drop_path=drop_path, **widths), lengths


def make_batch(channels: int, num_classes: int, seed: int, lengths: tuple[int, ...] = LENGTHS) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    features = torch.randn(len(lengths), channels, t, generator=g)
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # [B, T]
    features = features * mask[:, None, :]
    segments, labels = [], []
    for length in lengths:
        starts = torch.rand(4, generator=g) * (length - 60)
        segments.append(torch.stack([starts, starts + 4 + 50 * torch.rand(4, generator=g)], dim=1))  # [4, 2] feature steps
        labels.append(torch.randint(0, num_classes, (4,), generator=g))
    return {"features": features, "mask": mask, "segments": segments, "labels": labels}


def e2etal_steps(model: torch.nn.Module, batch: dict) -> tuple[Callable[[], torch.Tensor], Callable[[], object]]:
    def loss() -> torch.Tensor:
        out = model(batch["features"], batch["mask"])
        return model.loss(out, batch["segments"], batch["labels"])["loss"]

    def outputs() -> object:
        return model(batch["features"], batch["mask"])

    return loss, outputs


def load_actionformer(root: Path, dropout: float, drop_path: float, head_cfg: HeadConfig) -> torch.nn.Module:
    """LocPointTransformer at configs/thumos_i3d.yaml, imported from the checkout at `root`,
    with its widths and length set to `head_cfg`'s (ActionFormer's own values unless --tiny)."""
    sys.path.insert(0, str(root))
    # libs.utils imports a compiled NMS extension and the evaluation code; the model needs
    # only the name batched_nms from it, which the timed path never calls.
    stand_in = types.ModuleType("libs.utils")

    def batched_nms(*args, **kwargs):
        raise RuntimeError("head_speed.py: ActionFormer's NMS is not part of the benchmark")

    stand_in.batched_nms = batched_nms
    sys.modules["libs.utils"] = stand_in
    from libs.core.config import DEFAULTS, load_config
    from libs.modeling import make_meta_arch

    cfg = load_config(str(root / "configs" / "thumos_i3d.yaml"), copy.deepcopy(DEFAULTS))
    cfg["model"]["train_cfg"]["dropout"] = dropout
    cfg["model"]["train_cfg"]["droppath"] = drop_path
    widths = {"input_dim": head_cfg.input_dim, "embd_dim": head_cfg.embed_dim, "fpn_dim": head_cfg.embed_dim,
              "head_dim": head_cfg.head_dim, "max_seq_len": head_cfg.max_seq_len}
    cfg["model"].update(widths)
    return make_meta_arch(cfg["model_name"], **cfg["model"])


def actionformer_steps(model: torch.nn.Module, batch: dict) -> tuple[Callable[[], torch.Tensor], Callable[[], object]]:
    lengths = batch["mask"].sum(dim=1).tolist()
    videos = [
        {"feats": f[:, :n], "segments": s, "labels": c}
        for f, n, s, c in zip(batch["features"], lengths, batch["segments"], batch["labels"])
    ]

    def loss() -> torch.Tensor:
        return model(videos)["final_loss"]

    def outputs() -> object:
        # Its forward up to the raw outputs; its own eval path accepts one video at a time
        # and goes on to decoding and NMS.
        mask = batch["mask"][:, None, :]  # [B, 1, T]
        feats, masks = model.backbone(batch["features"], mask)
        fpn_feats, fpn_masks = model.neck(feats, masks)
        points = model.point_generator(fpn_feats)
        logits = [x.permute(0, 2, 1) for x in model.cls_head(fpn_feats, fpn_masks)]
        offsets = [x.permute(0, 2, 1) for x in model.reg_head(fpn_feats, fpn_masks)]
        return logits, offsets, points

    return loss, outputs


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call, on CUDA up to the end of
    the work it queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actionformer", type=Path, help="a checkout of happyharrycn/actionformer_release")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--drop-path", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu (default) or a CUDA device, e.g. cuda")
    ap.add_argument("--bf16", action="store_true", help="both models under bfloat16 autocast")
    ap.add_argument("--tiny", action="store_true", help="toy widths and length: checks the benchmark, not the speed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"head_speed.py: --device {args.device}: this machine has no CUDA device")

    cfg, lengths = head_config(args.tiny, args.dropout, args.drop_path)
    batch = make_batch(cfg.input_dim, cfg.num_classes, args.seed, lengths)
    batch = {k: [t.to(device) for t in v] if isinstance(v, list) else v.to(device) for k, v in batch.items()}
    builders = {
        "before": lambda: _head_baseline.ActionFormerHead(cfg),
        "now": lambda: build_head(cfg),
    }
    if args.actionformer is not None:
        builders["actionformer"] = lambda: load_actionformer(args.actionformer, args.dropout, args.drop_path, cfg)
    models, steps, optimizers = {}, {}, {}
    for name, build in builders.items():
        torch.manual_seed(args.seed)
        models[name] = build().to(device)
        steps[name] = (actionformer_steps if name == "actionformer" else e2etal_steps)(models[name], batch)
        optimizers[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4, weight_decay=0.05)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    if len(set(params.values())) != 1:
        raise SystemExit(f"head_speed.py: the models differ in size, parameters {params}")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def train_step(name: str) -> None:
        model, optimizer = models[name], optimizers[name]
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = steps[name][0]()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    def eval_forward(name: str) -> None:
        models[name].eval()
        with torch.no_grad(), autocast():
            steps[name][1]()

    times = {what: {name: [] for name in models} for what in ("train_step", "eval_forward")}
    for round_ in range(args.warmup + args.repeats):
        for name in models:  # interleaved, so slow phases of the machine hit every column
            train, evaluation = timed(lambda: train_step(name), device), timed(lambda: eval_forward(name), device)
            if round_ >= args.warmup:
                times["train_step"][name].append(train)
                times["eval_forward"][name].append(evaluation)

    def summary(runs: list[tuple[float, float]]) -> dict:
        wall, cpu = [w for w, _ in runs], [c for _, c in runs]
        return {"min_s": min(wall), "median_s": statistics.median(wall), "cpu_min_s": min(cpu), "cpu_median_s": statistics.median(cpu)}

    out = {
        "benchmark": "head_speed",
        "machine": describe_cpu(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "bf16": args.bf16, "tiny": args.tiny,
        "torch_threads": torch.get_num_threads(),
        "batch": len(lengths), "length": max(lengths), "valid_lengths": list(lengths),
        "dropout": args.dropout, "drop_path": args.drop_path, "repeats": args.repeats, "warmup": args.warmup,
        "parameters": params,
        **{what: {name: summary(runs) for name, runs in per_model.items()} for what, per_model in times.items()},
        "torch": torch.__version__, "python": sys.version.split()[0],
    }
    # How many times faster "now" is than each other column (> 1: "now" is faster).
    out["speedup_of_now"] = {
        what: {
            name: {stat: out[what][name][stat] / out[what]["now"][stat] for stat in ("median_s", "min_s")}
            for name in models if name != "now"
        }
        for what in ("train_step", "eval_forward")
    }
    print(json.dumps(out))
    print(f"\n{'wall seconds':<14}{'params':>12}{'train min':>11}{'median':>9}{'eval min':>10}{'median':>9}")
    for name in models:
        train, evaluation = out["train_step"][name], out["eval_forward"][name]
        print(f"{name:<14}{params[name]:>12,}{train['min_s']:>11.3f}{train['median_s']:>9.3f}"
              f"{evaluation['min_s']:>10.3f}{evaluation['median_s']:>9.3f}")
    for name in models:
        if name != "now":
            train, evaluation = out["speedup_of_now"]["train_step"][name], out["speedup_of_now"]["eval_forward"][name]
            print(f"now vs {name}: train x{train['median_s']:.2f} (min x{train['min_s']:.2f}), "
                  f"eval x{evaluation['median_s']:.2f} (min x{evaluation['min_s']:.2f}) faster")
    where = out["device"] if device.type == "cuda" else f"{out['torch_threads']} torch threads"
    print(f"{where}{', bf16 autocast' if args.bf16 else ''}{', --tiny' if args.tiny else ''}; "
          f"batch {len(lengths)} x {max(lengths)} steps; {args.repeats} interleaved repeats")


if __name__ == "__main__":
    main()
