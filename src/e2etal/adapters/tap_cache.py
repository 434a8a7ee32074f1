"""Tap cache: the pooled taps of a whole video, computed once and stored.

No gradient reaches a frozen backbone, so with augmentation off the pooled taps of a
video are a pure function of the video and of the settings that produce them (backbone
weights, tapped layers, grid, frame rate, size, clip length, layout, compute dtype). They
are stored as `<root>/<key>/<video_id>.safetensors`, `key` a hash of those settings
(also written to `<root>/<key>/settings.json`), so changing any of them starts a new
cache and never reads a stale one. Taps are stored in the dtype the frozen pass computed
in (bf16 on GPU, fp32 on CPU), so a cached run sees exactly the values an uncached one
computes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from e2etal import io
from e2etal.data.streaming import ClipBatch, ClipStream, VideoEnd, VideoFailed


class TapCache:
    def __init__(self, root: str | Path, settings: dict, store_dtype: torch.dtype = torch.float32):
        self.settings = settings
        self.key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root) / self.key
        self.store_dtype = store_dtype
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "settings.json").exists():
            io.write_json(self.dir / "settings.json", settings)

    def path(self, video_id: str) -> Path:
        return self.dir / f"{video_id}.safetensors"

    def has(self, video_id: str) -> bool:
        return self.path(video_id).exists()

    def save(self, video_id: str, tapped: torch.Tensor, last: torch.Tensor) -> None:
        tensors = {"tapped": tapped.to(self.store_dtype).contiguous(), "last": last.to(self.store_dtype).contiguous()}
        with io.atomic_path(self.path(video_id)) as tmp:
            save_file(tensors, str(tmp))

    def load(self, video_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(tapped [T', L, g*g, D], last [T', g*g, D]) in float32."""
        path = self.path(video_id)
        try:
            tensors = load_file(str(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: video {video_id!r} is not in the tap cache (fill it first)") from None
        return tensors["tapped"].float(), tensors["last"].float()

    @torch.no_grad()
    def fill(self, dataset, frozen, progress: bool = True, videos: list[str] | None = None) -> int:
        """Compute and store the taps of every video of `dataset` (a `VideoWindows`), or of
        `videos` among them (a rank's share), not cached yet, with `frozen` (a
        `FrozenBackbone`), decoding ahead in a background thread (`ClipStream`). Returns
        how many were computed."""
        todo = [v for v in (dataset.videos if videos is None else videos) if not self.has(v)]
        if not todo:
            return 0
        device = next(frozen.parameters()).device
        cfg = dataset.cfg
        stream = ClipStream(todo, dataset.open_video, dataset.sampler, frozen.micro_batch,
                            pin_memory=device.type == "cuda")
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        with stream, tqdm(total=len(todo), desc="tap cache", unit="video", disable=not progress) as bar:
            for event in stream.events():
                if isinstance(event, ClipBatch):
                    parts.append(frozen(event.clips(device, cfg.mean, cfg.std)))  # ([t, L, g*g, D], [t, g*g, D])
                elif isinstance(event, VideoEnd):
                    self.save(event.video, torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
                    parts = []
                    bar.update()
                elif isinstance(event, VideoFailed):
                    raise event.error
        return len(todo)
