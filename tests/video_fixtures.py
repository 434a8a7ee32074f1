"""Tiny real videos for end-to-end tests: a bright square sliding left or right (two
classes) over noise, written with `e2etal.synthetic.write_mp4`, and their ground truth."""

import json

import numpy as np
import torch

from e2etal.synthetic import write_mp4

FPS = 10


def make_video_dataset(root, num_train=4, num_val=2, seconds=8.0, size=32, seed=0):
    """`root/videos/*.mp4` and `root/annotations.json` (classes 'left' and 'right')."""
    rng = np.random.default_rng(seed)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    database = {}
    n = int(seconds * FPS)
    for i in range(num_train + num_val):
        vid = f"clip{i}"
        frames = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
        anns = []
        t = int(rng.integers(3, 10))
        while t < n - 12:
            dur = int(rng.integers(8, 16))
            label = ["left", "right"][int(rng.integers(2))]
            for k in range(dur):
                x = int((k / dur) * (size - 8)) if label == "right" else int((1 - k / dur) * (size - 8))
                frames[t + k, 12:20, x : x + 8] = 230
            anns.append({"label": label, "segment": [t / FPS, (t + dur) / FPS]})
            t += dur + int(rng.integers(5, 15))
        write_mp4(root / "videos" / f"{vid}.mp4", torch.from_numpy(frames), FPS)
        database[vid] = {"subset": "training" if i < num_train else "validation", "duration": n / FPS,
                         "fps": FPS, "annotations": anns}
    (root / "annotations.json").write_text(json.dumps({"database": database}))
    return root / "annotations.json", root / "videos"


def tiny_video_overrides(gt, videos, out_dir, method="losa", epochs=2):
    return [
        f"method={method}", f"video.annotations={gt}", f"video.video_dir={videos}", f"out_dir={out_dir}",
        f"video.fps={FPS}", "video.size=32", "video.clip_frames=4", "video.window_frames=48",
        "backbone.name=vit-s", "frozen.micro_batch=4",
        "backbone.kwargs={img_size: 32, patch_size: 16, num_frames: 4, embed_dim: 64, depth: 4, num_heads: 4}",
        "frozen.taps=[2, 4]", "losa.num_heads=2", "losa.short_window=2",
        "model.input_dim=64", "model.num_classes=2", "model.embed_dim=32", "model.head_dim=32",
        "model.num_heads=2", "model.window_size=5", "model.branch_layers=2",
        "model.regression_ranges=[[0,4],[4,8],[8,10000]]", "model.max_seq_len=24",
        "model.drop_path=0.0", "model.dropout=0.0",
        f"train.epochs={epochs}", f"train.warmup_epochs={min(1, epochs)}", "train.batch_size=2", "train.lr=0.001",
        "train.eval_every=0", "train.progress=false", "train.tensorboard=false",
    ]


# Appended to `tiny_video_overrides`: the same runs on a TSM-ResNet18 (width 512, stages
# 2, 3, 4 tapped by default, one temporal position per frame: 48 per window), normalised
# with the ImageNet mean/std the backbone says it was trained with.
TSM_R18_OVERRIDES = [
    "backbone.name=tsm-r18", "backbone.kwargs={}", "frozen.taps=null",
    "model.input_dim=512", "model.max_seq_len=48",
]


def lofi_overrides(videos, out_dir, schedule="long_c", epochs=2, *extra):
    gt, folder = videos
    base = [o for o in tiny_video_overrides(gt, folder, out_dir, "lofi", epochs) if not o.startswith(("frozen.", "losa."))]
    return base + [
        "lofi.snippet_frames=4", "lofi.frame_interval=2", f"lofi.schedule.name={schedule}",
        "lofi.schedule.snippets=16", "lofi.schedule.size=32", "lofi.schedule.batch=2",
        "train.optimizer=sgd", "train.lr=0.01", "train.momentum=0.0", "train.weight_decay=0.0001",
        "train.schedule=step", "train.step_epochs=1", "train.warmup_epochs=0", *extra,
    ]
