"""LoFi's stage 2: peak memory and step time of a training step at each fidelity.

    python benchmarks/lofi_memory.py                                # a GPU: the paper's sizes
    python benchmarks/lofi_memory.py --device cpu --scale 0.25      # a CPU: scaled to fit

The ActivityNet-1.3 setting of the paper (Xu et al., NeurIPS 2021): a video is 100
snippets of 8 frames at 224 px at full fidelity; S-LoFi 100 x 112 px, T-LoFi 25 x 224,
ST-LoFi 50 x 158 (160 for a ViT's 16-px patches), batch 16. One training step (forward,
TAL loss, backward, SGD step) of the encoder and the ActionFormer-style head (ActivityNet
settings) with per-block activation checkpointing, random weights and random video, for
TSM-ResNet50 and ViT-B, each (encoder, fidelity) in a process of its own.

Memory is `torch.cuda.max_memory_allocated` on a GPU; on a CPU the process's peak RSS
(interpreter, torch runtime, weights, gradients, activations) and its RSS before the model
is built ("base"), so that "own" = peak - base is the step's. `--scale` multiplies the
snippets of every fidelity and `--batch` replaces the batch (defaults on a CPU: 0.25 and
1, so that a step fits and takes seconds); the ratios between fidelities are what LoFi
saves. Step time is the median of `--steps` steps after one untimed step. Prints one JSON
object, then a table; "x full" is a row's own memory over the full-fidelity row's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import time

import torch

from e2etal.backbones import build_backbone
from e2etal.data.snippets import SnippetBatch
from e2etal.detector import LoFiDetector
from e2etal.engine.trainer import resolve_device
from e2etal.heads import HeadConfig, build_head
from e2etal.lofi.fidelity import Fidelity, reduced_fidelities
from e2etal.machine import describe_cpu

FULL = Fidelity(100, 224, 16)
SNIPPET_FRAMES = 8


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: kB


def _step_process(backbone: str, fidelity: Fidelity, steps: int, device_name: str, threads: int, conn) -> None:
    try:
        torch.set_num_threads(threads)
        device = torch.device(device_name)
        base = _rss_gb()
        torch.manual_seed(0)
        encoder = build_backbone(backbone).module
        encoder.grad_checkpointing = True
        width = encoder.tap_layout().width
        head = build_head(HeadConfig(input_dim=width, num_classes=200, embed_dim=256, head_dim=256, window_size=7,
                                     max_seq_len=128))
        model = LoFiDetector(encoder, head).to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.0, weight_decay=1e-4)
        length = fidelity.snippets
        padded = -(-length // head.cfg.max_stride) * head.cfg.max_stride
        mask = torch.zeros(fidelity.batch, padded, dtype=torch.bool, device=device)
        mask[:, :length] = True
        clips = torch.rand(fidelity.batch, length, 3, SNIPPET_FRAMES, fidelity.size, fidelity.size, device=device)
        segments = [torch.tensor([[0.2 * length, 0.5 * length]], device=device)] * fidelity.batch
        labels = [torch.zeros(1, dtype=torch.long, device=device)] * fidelity.batch
        batch = SnippetBatch([""] * fidelity.batch, clips, mask, segments, labels, [None] * fidelity.batch,
                             [None] * fidelity.batch)
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = model.losses(batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if cuda:
                torch.cuda.synchronize(device)
            if i:
                times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else _rss_gb()
        conn.send({"backbone": backbone, "snippets": fidelity.snippets, "size": fidelity.size, "batch": fidelity.batch,
                   "peak_gb": peak, "base_gb": None if cuda else base, "step_s": statistics.median(times),
                   "step_times_s": times, "memory": "cuda max_memory_allocated" if cuda else "cpu peak RSS",
                   "pid": os.getpid()})
    except torch.OutOfMemoryError:
        conn.send({"backbone": backbone, "snippets": fidelity.snippets, "size": fidelity.size, "batch": fidelity.batch,
                   "peak_gb": None, "status": "OOM", "pid": os.getpid()})
    finally:
        conn.close()


def measure(backbone: str, fidelity: Fidelity, steps: int, device: torch.device, threads: int) -> dict:
    # A process per row: nothing of one row's memory in the next. On a CPU it is forked
    # from this one, which has imported but not yet run torch (a spawned one would spend
    # seconds importing it again); CUDA needs a spawned one.
    fork = device.type == "cpu" and "fork" in multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if fork else "spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_step_process, args=(backbone, fidelity, steps, str(device), threads, send))
    process.start()
    send.close()
    try:
        row = receive.recv()
    except EOFError:
        raise RuntimeError(f"{backbone} at {fidelity}: the process ended with exit code {process.exitcode} "
                           "(-9 is usually the out-of-memory killer)") from None
    finally:
        process.join()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["tsm-r50", "vit-b"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--scale", type=float, help="multiply every fidelity's snippets (default 1 on a GPU, 0.25 on a CPU)")
    ap.add_argument("--batch", type=int, help="videos per step (default 16 on a GPU, 1 on a CPU)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per row (default 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads per process")
    ap.add_argument("--full", type=int, nargs=2, metavar=("SNIPPETS", "PX"),
                    help="the full fidelity the others are relative to (default: the paper's 100 224)")
    args = ap.parse_args()
    device = resolve_device(args.device, "--device")
    cuda = device.type == "cuda"
    scale = args.scale if args.scale is not None else (1.0 if cuda else 0.25)
    batch = args.batch if args.batch is not None else (FULL.batch if cuda else 1)

    full = FULL if args.full is None else Fidelity(args.full[0], args.full[1], FULL.batch)
    if device.type == "cpu":
        # The first optimizer of a process imports torch._dynamo (seconds); done here once,
        # the forked rows inherit it.
        import torch._dynamo  # noqa: F401
    rows = []
    for backbone in args.backbones:
        multiple = 16 if backbone.startswith("vit") else 1
        fidelities = {"full": full, **reduced_fidelities(full, multiple)}
        for name, f in fidelities.items():
            fidelity = Fidelity(max(1, round(f.snippets * scale)), f.size, batch)
            row = measure(backbone, fidelity, args.steps, device, args.threads)
            row["fidelity"] = name
            rows.append(row)
    for row in rows:
        full = next(r for r in rows if r["backbone"] == row["backbone"] and r["fidelity"] == "full")
        own = lambda r: None if r.get("peak_gb") is None else r["peak_gb"] - (r.get("base_gb") or 0.0)  # noqa: E731
        row["x_full"] = None if own(row) is None or not own(full) else own(row) / own(full)
    print(json.dumps({"benchmark": "lofi_memory", "device": torch.cuda.get_device_name(device) if cuda else
                      f"cpu ({describe_cpu()}, {args.threads} threads)",
                      "scale": scale, "batch": batch, "snippet_frames": SNIPPET_FRAMES, "torch": torch.__version__,
                      "rows": rows}))
    print(f"\n{'backbone':<9}{'fidelity':<9}{'snippets':>9}{'px':>5}{'batch':>6}{'peak GB':>9}{'own GB':>8}"
          f"{'x full':>8}{'step s':>8}")
    for r in rows:
        if r.get("peak_gb") is None:
            print(f"{r['backbone']:<9}{r['fidelity']:<9}{r['snippets']:>9}{r['size']:>5}{r['batch']:>6}{'OOM':>9}")
            continue
        own = r["peak_gb"] - (r["base_gb"] or 0.0)
        x = "-" if r["x_full"] is None else f"{r['x_full']:.2f}"
        print(f"{r['backbone']:<9}{r['fidelity']:<9}{r['snippets']:>9}{r['size']:>5}{r['batch']:>6}"
              f"{r['peak_gb']:>9.2f}{own:>8.2f}{x:>8}{r['step_s']:>8.2f}")
    print(f"memory: {rows[0].get('memory', '-')}; own = peak - base (CPU); x full = own / the full-fidelity row's own")


if __name__ == "__main__":
    main()
