"""Synthetic feature datasets for tests: actions are class-specific patterns in noise."""

import json

import numpy as np

FPS, STRIDE, CLIP = 30.0, 4, 16


def make_feature_dataset(root, num_train=40, num_val=10, num_classes=3, channels=32, length=(96, 200), seed=0):
    """Write `root/features/*.npy` and `root/annotations.json`; returns both paths."""
    rng = np.random.default_rng(seed)
    patterns = rng.normal(0, 1, (num_classes, channels))
    patterns /= np.linalg.norm(patterns, axis=1, keepdims=True) / 3.0
    feat_dir = root / "features"
    feat_dir.mkdir(parents=True, exist_ok=True)
    database = {}
    names = [f"action{c}" for c in range(num_classes)]
    offset_s, step_s = CLIP / 2 / FPS, STRIDE / FPS
    for i in range(num_train + num_val):
        vid = f"video_{i:03d}"
        t = int(rng.integers(*length))
        feats = rng.normal(0, 1, (t, channels)).astype(np.float32)
        anns, pos = [], int(rng.integers(2, 12))
        while pos < t - 10:
            dur = int(rng.integers(6, 30))
            end = min(pos + dur, t - 1)
            c = int(rng.integers(num_classes))
            feats[pos:end] += patterns[c]
            anns.append({"label": names[c], "segment": [offset_s + pos * step_s, offset_s + end * step_s], "label_id": c})
            pos = end + int(rng.integers(5, 40))
        np.save(feat_dir / f"{vid}.npy", feats)
        duration = (t * STRIDE + CLIP) / FPS
        database[vid] = {"subset": "training" if i < num_train else "validation", "duration": duration, "fps": FPS,
                         "annotations": anns}
    gt = root / "annotations.json"
    gt.write_text(json.dumps({"version": "synthetic", "database": database}))
    return gt, feat_dir


def tiny_config_overrides(gt, feat_dir, out_dir, channels=32, num_classes=3, epochs=12):
    return [
        f"data.annotations={gt}", f"data.feature_dir={feat_dir}", f"out_dir={out_dir}",
        f"model.input_dim={channels}", f"model.num_classes={num_classes}", "model.embed_dim=64", "model.head_dim=64",
        "model.branch_layers=3", "model.regression_ranges=[[0,4],[4,8],[8,16],[16,10000]]", "model.window_size=9",
        "model.max_seq_len=256", "data.max_seq_len=256", "model.drop_path=0.0", "model.dropout=0.0",
        f"train.epochs={epochs}", f"train.warmup_epochs={min(2, epochs)}", "train.batch_size=4", "train.lr=0.001",
        "train.eval_every=0", "train.progress=false", "train.tensorboard=false", "train.ema_decay=0.99",
        "data.stride_frames=4", "data.clip_frames=16",
    ]
