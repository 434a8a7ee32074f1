"""Training throughput of the feature-based head on THUMOS-shaped random features.

    python benchmarks/train_throughput.py [--videos 413] [--length 2300] [--channels 2048] [--device auto]

Each "video" is a random [length ± 10%, channels] feature array with a few random actions,
generated in memory (no disk I/O is measured), trained with the THUMOS-14 I3D preset
(configs/thumos14_i3d.yaml) for one epoch through the real training engine. Prints one
JSON object, then a short table: videos/s, seconds per step, peak memory (CUDA: peak
allocated; CPU: peak resident set size of the process).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from e2etal.config import load_config, to_dict
from e2etal.data.annotations import ClassMap
from e2etal.data.features import FeatureGrid, FeatureItem, collate_features
from e2etal.engine import Trainer
from e2etal.engine.trainer import resolve_device
from e2etal.experiment import ExperimentConfig, build_detector
from e2etal.machine import describe_cpu

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "thumos14_i3d.yaml"


class RandomFeatures(torch.utils.data.Dataset):
    def __init__(self, videos: int, length: int, channels: int, num_classes: int, max_seq_len: int, seed: int = 0):
        self.videos, self.length, self.channels = videos, length, channels
        self.num_classes, self.max_seq_len, self.seed = num_classes, max_seq_len, seed

    def __len__(self) -> int:
        return self.videos

    def __getitem__(self, i: int) -> FeatureItem:
        g = torch.Generator().manual_seed(self.seed * 100003 + i)
        t = min(self.max_seq_len, int(self.length * (0.9 + 0.2 * torch.rand((), generator=g))))
        starts = torch.rand(4, generator=g) * (t - 60)
        segments = torch.stack([starts, starts + 10 + 40 * torch.rand(4, generator=g)], dim=1)
        return FeatureItem(f"v{i}", torch.randn(self.channels, t, generator=g), segments,
                           torch.randint(0, self.num_classes, (4,), generator=g), FeatureGrid(8 / 30, 4 / 30), None)


def measure(videos: int = 413, length: int = 2300, channels: int = 2048, batch_size: int = 2,
            max_seq_len: int = 2304, device: str = "auto") -> dict:
    """One training epoch of the THUMOS-14 I3D preset's head on `videos` random videos:
    the figures `main` prints (peak memory is this process's)."""
    dev = resolve_device(device)
    cfg = load_config(ExperimentConfig, CONFIG, [
        f"model.input_dim={channels}", f"train.batch_size={batch_size}", f"train.device={dev}",
        f"model.max_seq_len={max_seq_len}", f"data.max_seq_len={max_seq_len}",
        "train.epochs=1", "train.warmup_epochs=0", "train.tensorboard=false"])
    dataset = RandomFeatures(videos, length, channels, cfg.model.num_classes, cfg.data.max_seq_len)
    collate = partial(collate_features, pad_multiple=cfg.model.max_stride, pad_to=cfg.data.max_seq_len)
    detector = build_detector(cfg)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(detector, dataset, collate, cfg.train, out, to_dict(cfg), ClassMap(tuple(map(str, range(20)))))
        t0 = time.perf_counter()
        trainer.train_epoch(0)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    if dev.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated() / 2**30
        machine = torch.cuda.get_device_name()
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        machine = f"cpu ({describe_cpu()}, {torch.get_num_threads()} threads)"
    steps = trainer.epoch_steps[0]
    return {
        "benchmark": "train_throughput", "device": machine, "videos": videos, "length": length,
        "channels": channels, "batch_size": batch_size, "padded_length": cfg.data.max_seq_len,
        "seconds": seconds, "videos_per_s": videos / seconds, "s_per_step": seconds / steps,
        "peak_memory_gb": peak_gb, "amp_bf16": cfg.train.amp and dev.type == "cuda",
        "torch": torch.__version__, "python": sys.version.split()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=413)
    ap.add_argument("--length", type=int, default=2300)
    ap.add_argument("--channels", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-seq-len", type=int, default=2304, help="training crop and padding (a multiple of 32)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    out = measure(args.videos, args.length, args.channels, args.batch_size, args.max_seq_len, args.device)
    print(json.dumps(out))
    print(f"\n{'device':<12}{'videos/s':>10}{'s/step':>10}{'peak GB':>10}")
    kind = resolve_device(args.device).type
    print(f"{kind:<12}{out['videos_per_s']:>10.2f}{out['s_per_step']:>10.3f}{out['peak_memory_gb']:>10.2f}")


if __name__ == "__main__":
    main()
