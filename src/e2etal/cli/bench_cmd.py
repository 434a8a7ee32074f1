"""`e2etal bench`: measurements behind the claims of DESIGN.md.

`e2etal bench losa` prints, from one run, the peak memory and step times (min / median /
max) of a LoSA training step (batch 1) beside the frozen-forward floor, AdaTAD-style
serial adapters and full fine-tuning, each measured in a process of its own; see
`e2etal.benchmark.losa` for what the memory figure holds on CUDA and on the CPU.
"""

from __future__ import annotations

import json
import sys

import torch

from e2etal.cli import command_help
from e2etal.benchmark.losa import (
    BACKBONES,
    DEFAULT_FRAMES,
    DEFAULT_RES,
    METHODS,
    TINY_FRAMES,
    TINY_RES,
    BenchSettings,
    bench_settings,
    check_targets,
    format_table,
    run_bench,
)
from e2etal.machine import describe_cpu


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help=command_help("bench"),
        description="Benchmarks of memory and speed; one sub-command per benchmark.",
    )
    benches = p.add_subparsers(dest="bench", metavar="BENCH")
    benches.required = True
    q = benches.add_parser(
        "losa",
        help="LoSA training step vs frozen forward, AdaTAD-style adapters and full fine-tuning",
        description="Peak memory and step times (min / median / max) of one training step (batch 1: one "
        "window of --frames frames) done four ways, each in a fresh process of its own, one after another: "
        "the frozen backbone forward (the floor), LoSA (adapters beside the frozen backbone), AdaTAD-style "
        "serial adapters inside the blocks (gradients through the frozen backbone, checkpointed), and full "
        "fine-tuning (checkpointed). Random weights, random video, ActionFormer head with a random target. "
        "Memory is torch.cuda.max_memory_allocated on CUDA and the process's peak RSS on the CPU, with the "
        "RSS before the model is built (base) and the difference (own). "
        "On CUDA also checks the targets: LoSA peak <= 4 GB and LoSA step <= 1.2 x frozen forward "
        "(median; set for ViT-g, 768 frames, 224 px on an H100).",
    )
    q.add_argument("--backbone", choices=sorted(BACKBONES), default="vit-g", help="default vit-g")
    q.add_argument("--frames", type=int, help=f"frames in the window; default {DEFAULT_FRAMES} ({TINY_FRAMES} with --tiny)")
    q.add_argument("--res", type=int, help=f"frame size in px; default {DEFAULT_RES} ({TINY_RES} with --tiny)")
    q.add_argument("--clip-frames", type=int, default=16, help="frames per backbone clip (default 16)")
    q.add_argument("--methods", default=",".join(METHODS), help=f"comma list, in run order (default {','.join(METHODS)})")
    q.add_argument("--steps", type=int, default=5,
                   help="timed steps per method, at least; min, median and max are reported (default 5)")
    q.add_argument("--min-time", type=float, default=1.0,
                   help="and more timed steps until they add up to this many seconds (default 1: a few steps of a "
                   "few ms would sample a few scheduler time slices)")
    q.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    q.add_argument("--micro-batch", type=int, default=8, help="clips per backbone call in the no-grad passes (default 8)")
    q.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    q.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="on CUDA (default bf16); CPU always runs fp32")
    q.add_argument("--threads", type=int, default=1,
                   help="intra-op CPU threads of each method's process (default 1: a pool as wide as a shared "
                   "machine times its load, not the method)")
    q.add_argument("--tiny", action="store_true", help="a 4-block, 64-wide ViT instead of --backbone, for smoke tests on CPU")
    q.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    q.set_defaults(func=run_losa)


def run_losa(args) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    settings = bench_settings(
        backbone=args.backbone,
        frames=args.frames,
        res=args.res,
        clip_frames=args.clip_frames,
        micro_batch=args.micro_batch,
        methods=methods,
        steps=args.steps,
        min_time_s=args.min_time,
        warmup=args.warmup,
        device=args.device,
        dtype=args.dtype,
        tiny=args.tiny,
        threads=args.threads,
    )
    if settings.device.type != "cuda" and not args.tiny:
        print(f"note: running {settings.backbone} on the CPU will be slow; --tiny is the smoke test", file=sys.stderr)
    rows = run_bench(settings)
    targets = check_targets(rows) if settings.device.type == "cuda" else []
    device = _device_name(settings)  # after the bench: the methods' processes had the GPU to themselves
    if args.json:
        print(json.dumps({"device": device, "torch": torch.__version__, "settings": settings.to_json(),
                          "rows": rows, "targets": targets}))
        return 0
    print(_header(settings, device))
    print(format_table(rows))
    if targets:
        print("targets (set for ViT-g, 768 frames, 224 px, batch 1 on an H100):")
        for t in targets:
            value = "-" if t["value"] is None else f"{t['value']:.2f}"
            verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
            print(f"  {t['target']}: {value}  {verdict}")
    return 0


def _device_name(s: BenchSettings) -> str:
    if s.device.type == "cuda":
        return torch.cuda.get_device_name(s.device)
    threads = f"{s.threads} intra-op thread{'s' if s.threads > 1 else ''}"
    return f"cpu ({describe_cpu()}, {threads} per method)"


def _header(s: BenchSettings, device: str) -> str:
    return (
        f"{s.backbone} ({s.backbone_params / 1e6:.1f}M params, {s.depth} blocks, width {s.width}), "
        f"{s.frames} frames = {s.num_clips} clips x {s.clip_frames} at {s.res} px -> {s.tokens} tokens, batch 1; "
        f"{s.dtype} on {device}; after {s.warmup} untimed steps, >= {s.steps} timed ones adding up to "
        f">= {s.min_time_s:g} s, each method in its own process"
    )
