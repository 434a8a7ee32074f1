"""Pretraining on a synthetic world: a clip classifier trained on trimmed clips, as Kinetics
pretraining precedes TAL (the demo's backbone is pretrained so; `research/` probes use it
to measure what a model can learn of a world).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from e2etal.data.video import normalize_clip
from e2etal.synthetic.motions import mirror_label_ids
from e2etal.synthetic.world import WorldConfig, make_trimmed_clips

__all__ = ["fit_clip_classifier", "mirror_flip"]


def fit_clip_classifier(model: torch.nn.Module, classify: Callable[[torch.Tensor], torch.Tensor], world: WorldConfig,
                        num_clips: int, epochs: int, seed: int, device: torch.device, progress: bool = True, *,
                        lr: float, pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> dict:
    """Train `model` (`classify`: clips normalised by `pixel_mean`/`pixel_std`, `[B, 3, T, H, W]`
    -> logits) on `num_clips` trimmed clips of `world` for `epochs` (AdamW, one-cycle to `lr`,
    batch 16, mirror flips).

    Returns `clip_accuracy` on held-out clips (a fifth as many, at least 60) and
    `train_accuracy` on (up to 240 of) the training clips, which tells memorising from
    learning the world."""
    clips, labels = make_trimmed_clips(world, num_clips, seed=seed + 1000)
    val_clips, val_labels = make_trimmed_clips(world, max(60, num_clips // 5), seed=seed + 2000)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    batch = 16
    steps = epochs * (len(clips) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)

    def prepare(x: torch.Tensor) -> torch.Tensor:  # uint8 [B, T, H, W, 3] -> [B, 3, T, H, W]
        return normalize_clip(x, pixel_mean, pixel_std).transpose(1, 2).to(device)

    @torch.no_grad()
    def accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
        model.eval()
        pred = torch.cat([classify(prepare(x[i : i + 32])).argmax(1).cpu() for i in range(0, len(x), 32)])
        return float((pred == y).float().mean())

    bar = tqdm(total=steps, desc="pretrain", unit="step", disable=not progress)
    gen = torch.Generator().manual_seed(seed)
    mirror = torch.tensor(mirror_label_ids(world.num_classes))
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(clips), generator=gen)
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i : i + batch]
            x, y = mirror_flip(clips[idx], labels[idx], mirror, gen)
            loss = F.cross_entropy(classify(prepare(x)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return {"clip_accuracy": accuracy(val_clips, val_labels), "train_accuracy": accuracy(clips[:240], labels[:240]),
            "clips": len(clips), "epochs": epochs}


def mirror_flip(clips: torch.Tensor, labels: torch.Tensor, mirror: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-right flip each clip `[B, T, H, W, 3]` with probability 1/2, relabelled as its mirror
    class (`mirror[label]`, see `mirror_label_ids`): a flipped move_left clip is a move_right
    clip. A clip whose mirror class is not in the world (-1) is never flipped."""
    flip = (torch.rand(len(labels), generator=generator) < 0.5) & (mirror[labels] >= 0)
    clips = torch.where(flip[:, None, None, None, None], clips.flip(-2), clips)
    return clips, torch.where(flip, mirror[labels], labels)
