"""How many operations does a training step or eval forward of the head dispatch, against
ActionFormer's, on the code paths a GPU takes?

At batch 2 a GPU spends this head's time mostly launching kernels, so the count of
operations is what the CPU can say ahead of the GPU suite's `head_vs_actionformer` step.
Every non-view ATen operation that reaches a `TorchDispatchMode` is counted, views
apart, under bf16 autocast, with AdamW and gradient clipping `foreach=True` as on CUDA,
at the THUMOS-14 I3D setting of `benchmarks/head_speed.py` (same models, same batch).
The head's CPU-only paths are switched off as on CUDA (no oneDNN views or Winograd, one
encoder pass) unless `--cpu-paths`. A count is not a time.

    python research/dispatch_count.py --actionformer /tmp/af [--cpu-paths] [--tiny]

Prints one JSON object, then a table.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import head_speed  # noqa: E402

import e2etal.heads.actionformer as actionformer_module  # noqa: E402
import e2etal.heads.transformer as transformer_module  # noqa: E402
from e2etal.heads import build_head  # noqa: E402

# A host synchronisation on a GPU: the host waits for the device's result.
SYNCS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "unique_consecutive"}


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.is_view:
            self.views += 1
        else:
            self.ops[func._schema.name.split("::")[-1]] += 1
        return func(*args, **(kwargs or {}))


def gpu_paths() -> None:
    """The head as it runs on CUDA: `_onednn` is false off the CPU, and `encoder_passes`
    gives one pass at the batch's length."""
    transformer_module._onednn = lambda x, weight: False
    actionformer_module.encoder_passes = lambda mask, cfg: [(list(range(mask.shape[0])), mask.shape[1])]


def count(model: torch.nn.Module, steps, what: str) -> OpCounter:
    loss_fn, outputs_fn = steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, foreach=True)

    def train() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()

    def evaluate() -> None:
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outputs_fn()

    train()  # AdamW's state exists from the second step on
    counter = OpCounter()
    with counter:
        (train if what == "train_step" else evaluate)()
    return counter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actionformer", type=Path, required=True, help="a checkout of happyharrycn/actionformer_release")
    ap.add_argument("--cpu-paths", action="store_true", help="keep the head's CPU-only paths (count as on this CPU)")
    ap.add_argument("--tiny", action="store_true", help="toy widths and length, as head_speed.py --tiny")
    args = ap.parse_args()
    if not args.cpu_paths:
        gpu_paths()
    cfg, lengths = head_speed.head_config(args.tiny, dropout=0.0, drop_path=0.1)
    batch = head_speed.make_batch(cfg.input_dim, cfg.num_classes, 0, lengths)
    rows = {}
    for name in ("now", "actionformer"):
        torch.manual_seed(0)
        if name == "now":
            model = build_head(cfg)
            steps = head_speed.e2etal_steps(model, batch)
        else:
            model = head_speed.load_actionformer(args.actionformer, 0.0, 0.1, cfg)
            steps = head_speed.actionformer_steps(model, batch)
        for what in ("train_step", "eval_forward"):
            c = count(model, steps, what)
            rows[f"{name} {what}"] = {"ops": sum(c.ops.values()), "views": c.views,
                                      "syncs": {k: v for k, v in c.ops.items() if k in SYNCS},
                                      "by_op": dict(c.ops.most_common())}
    print(json.dumps({"probe": "dispatch_count", "gpu_paths": not args.cpu_paths, "tiny": args.tiny,
                      "torch": torch.__version__, "rows": rows}))
    print(f"\n{'':<26}{'ops':>7}{'views':>7}{'syncs':>7}")
    for key, r in rows.items():
        print(f"{key:<26}{r['ops']:>7,}{r['views']:>7,}{sum(r['syncs'].values()):>7}")
    print("bf16 autocast; foreach AdamW and clipping; " + ("the head's CPU paths on" if args.cpu_paths else
                                                            "the head's CPU-only paths off, as on CUDA"))


if __name__ == "__main__":
    main()
