"""Feature-extraction throughput: decode only, backbone only, end to end (`extract_video`).

    python benchmarks/video_throughput.py              # ViT-B and ViT-g at 160 and 224 px (GPU: bf16)
    python benchmarks/video_throughput.py --tiny       # CPU smoke run: a tiny ViT at 32 and 48 px
    python benchmarks/video_throughput.py --models vit-b --sizes 224 --seconds 60

A test video is written with PyAV into a temporary folder first (default 30 s at 30 fps,
320x240, H.264), so the benchmark runs anywhere. Weights are random.

All rates are *video* frames per second. Clips of 16 frames start every 4 frames, so the
backbone sees each frame in 4 clips: backbone frames/s = clips/s x stride.

* decode: `iter_frames` (decode + bilinear resize) cut into clip micro-batches by
  `stream_clips` (+ pinning on CUDA): the work of the background decoding thread;
* backbone: `clip_features` on random clips already on the device;
* end to end: `extract_video` on the file, decoding overlapped with the backbone.

ratio = end-to-end / min(decode, backbone): 1.0 is perfect overlap; the target on a GPU
is >= 0.8. On a CPU, decoding and the backbone share the same cores, so expect less.
ViT-g has 14 px patches: a size that is not a multiple of 14 is rounded down (160 -> 154,
the 11 x 11 tokens a 160 px input gives when the patch convolution floors).
Prints one JSON object, then a short table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from e2etal.backbones import VisionTransformer
from e2etal.data.video import iter_frames
from e2etal.backbones import BACKBONES
from e2etal.data.streaming import stream_clips
from e2etal.extract import ExtractConfig, extract_video
from e2etal.machine import describe_cpu


def tiny_vit(**kwargs) -> VisionTransformer:
    return VisionTransformer(img_size=32, patch_size=16, num_frames=16, embed_dim=64, depth=2, num_heads=2, **kwargs)


def write_test_video(path: Path, seconds: float, fps: int, width: int, height: int) -> Path:
    """Colour gradients drifting across the frame plus a little noise: compresses like
    ordinary footage. Frames are shifted windows of a few precomputed noisy patterns, so
    even minutes of 720p are generated in seconds."""
    rng = np.random.default_rng(0)
    margin = 256  # the drift cycles over this many pixels
    y, x = np.mgrid[0 : height + margin // 2, 0 : width + margin].astype(np.float32)
    pattern = np.stack([127 + 90 * np.sin(x / (20 + 7 * c) + y / (31 + 5 * c)) for c in range(3)], axis=-1)
    noisy = [(pattern + rng.normal(0, 6, size=pattern.shape)).clip(0, 255).astype(np.uint8) for _ in range(4)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(round(seconds * fps)):
            dx, dy = i % margin, (i // 2) % (margin // 2)
            image = np.ascontiguousarray(noisy[i % len(noisy)][dy : dy + height, dx : dx + width])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def decode_fps(video: Path, cfg: ExtractConfig, pin: bool, repeats: int) -> tuple[float, int]:
    num_frames = 0

    def run() -> None:
        nonlocal num_frames
        chunks = (frames for frames, _ in iter_frames(video, fps=cfg.fps, size=(cfg.size, cfg.size)))
        batches = stream_clips(chunks, cfg.sampler(), cfg.micro_batch)
        while True:
            try:
                batch = next(batches)
            except StopIteration as done:
                num_frames = done.value
                return
            if pin:
                batch.pin_memory()

    seconds = best_of(repeats, run)
    return num_frames / seconds, num_frames


def backbone_fps(module: torch.nn.Module, cfg: ExtractConfig, device: torch.device, dtype: torch.dtype,
                 min_seconds: float, repeats: int) -> float:
    clips = torch.rand(cfg.micro_batch, 3, cfg.clip_frames, cfg.size, cfg.size, device=device).to(dtype)

    def step() -> None:
        with torch.inference_mode():
            module.clip_features(clips)

    for _ in range(2):  # warm-up: kernels, allocator
        step()
    _sync(device)
    rates = []
    for _ in range(repeats):  # the best of `repeats` windows of >= min_seconds / repeats
        calls, t0 = 0, time.perf_counter()
        while True:
            step()
            calls += 1
            _sync(device)
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds / repeats and calls >= 3:
                break
        rates.append(calls * cfg.micro_batch * cfg.stride_frames / elapsed)
    return max(rates)


def end_to_end_fps(video: Path, module: torch.nn.Module, cfg: ExtractConfig, device: torch.device,
                   repeats: int) -> float:
    num_frames = 0

    def run() -> None:
        nonlocal num_frames
        _, meta = extract_video(video, module, cfg)
        _sync(device)
        num_frames = meta["num_frames"]

    seconds = best_of(repeats, run)
    return num_frames / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny ViT, small inputs, short video")
    ap.add_argument("--models", nargs="+", help="backbone presets (default vit-b vit-g; --tiny: tiny-vit)")
    ap.add_argument("--sizes", nargs="+", type=int, help="frame sizes in px (default 160 224; --tiny: 32 48)")
    ap.add_argument("--seconds", type=float, help="test video length (default 30; --tiny: 8)")
    ap.add_argument("--width", type=int, default=320, help="test video width (default 320)")
    ap.add_argument("--height", type=int, default=240, help="test video height (default 240)")
    ap.add_argument("--micro-batch", type=int, help="clips per backbone call (default 32; --tiny: 8)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each measurement; the best counts")
    ap.add_argument("--video", type=Path, help="use this video instead of writing a test video")
    args = ap.parse_args()

    models = args.models or (["tiny-vit"] if args.tiny else ["vit-b", "vit-g"])
    sizes = args.sizes or ([32, 48] if args.tiny else [160, 224])
    seconds = args.seconds or (8.0 if args.tiny else 30.0)
    micro_batch = args.micro_batch or (8 if args.tiny else 32)
    device = ExtractConfig(device=args.device).resolve_device()
    dtype = ExtractConfig(dtype=args.dtype).resolve_dtype(device)
    constructors = {"tiny-vit": tiny_vit, **BACKBONES}

    with tempfile.TemporaryDirectory(prefix="e2etal-video-bench-") as tmp:
        video = args.video or write_test_video(Path(tmp) / "test.mp4", seconds, fps=30, width=args.width,
                                               height=args.height)
        results = []
        for name in models:
            with torch.device(device):  # initialise the weights where they will run (ViT-g: 1B parameters)
                module = constructors[name]()
            patch = getattr(module, "patch_size", 1)
            for requested in sizes:
                size = requested // patch * patch
                cfg = ExtractConfig(size=size, micro_batch=micro_batch, device=str(device), dtype=args.dtype)
                module.eval().to(dtype=dtype)
                backbone = backbone_fps(module, cfg, device, dtype, min_seconds=1.0 if args.tiny else 3.0,
                                        repeats=args.repeats)
                decode, num_frames = decode_fps(video, cfg, pin=device.type == "cuda", repeats=args.repeats)
                end_to_end = end_to_end_fps(video, module, cfg, device, args.repeats)
                results.append({
                    "model": name,
                    "size_px": size,
                    "size_requested_px": requested,
                    "decode_frames_per_s": round(decode, 1),
                    "backbone_frames_per_s": round(backbone, 1),
                    "end_to_end_frames_per_s": round(end_to_end, 1),
                    "ratio": round(end_to_end / min(decode, backbone), 3),
                    "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                    if device.type == "cuda" else None,
                })
            del module
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)

    out = {
        "benchmark": "video_throughput",
        "machine": f"{describe_cpu()}, torch threads {torch.get_num_threads()}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "video": {"path": str(args.video) if args.video else f"generated {args.width}x{args.height} 30 fps H.264",
                  "frames": num_frames},
        "clip_frames": 16,
        "stride_frames": 4,
        "micro_batch": micro_batch,
        "results": results,
    }
    print(json.dumps(out))
    header = f"\n{'model':<10}{'px':>5}{'decode':>10}{'backbone':>10}{'e2e':>10}{'ratio':>7}   (video frames/s)"
    print(header)
    for r in results:
        print(f"{r['model']:<10}{r['size_px']:>5}{r['decode_frames_per_s']:>10.0f}{r['backbone_frames_per_s']:>10.0f}"
              f"{r['end_to_end_frames_per_s']:>10.0f}{r['ratio']:>7.2f}")


if __name__ == "__main__":
    main()
