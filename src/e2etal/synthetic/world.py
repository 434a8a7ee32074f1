"""A synthetic untrimmed-video world with exact ground truth, for the demo and the tests.

A video is a drifting textured background, distractor objects on random walks coming and
going all the time, and action instances laid out on the frame grid: instance i shows its
motion on frames `start_frame <= k < end_frame`, and its ground truth is exactly
`[start_frame / fps, end_frame / fps]` seconds. Around each instance its two actors wander
in and out on random walks, so a boundary is only visible as a change of motion.

Everything is a pure function of `(WorldConfig, seed)`. In a written world video i of a
subset has its own seed derived from `(seed, subset, i)`, so adding videos leaves the
existing ones unchanged; `world.json` records each video's seed and `render_video`
reproduces its frames. See docs/synthetic.md for the classes and the design.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from tqdm import tqdm

from e2etal import __version__, io
from e2etal.data.annotations import Annotations, ClassMap, Instance, VideoAnnotation
from e2etal.synthetic.motions import ACTION_CLASSES, CLASS_NAMES, Canvas, Poses, random_walk, walk_into
from e2etal.synthetic.raster import BackgroundRanges, Look, LookRanges, background, draw, finish, random_look

log = logging.getLogger(__name__)

SUBSETS = (("training", "train"), ("validation", "val"))  # (subset name, video id prefix)
EDGE_MARGIN_S = 0.5  # no instance starts or ends closer than this to the video's ends
ACTOR_IDLE_S = (0.5, 2.5)  # actors wander in before / out after their instance for this long
DISTRACTOR_LIFE_S = (4.0, 12.0)
DISTRACTOR_ABSENT_S = (0.5, 3.0)


@dataclass(frozen=True)
class WorldConfig:
    """Everything that shapes the synthetic world; the defaults make a 2-core CPU demo."""

    height: int = 64  # px; even (H.264 with 4:2:0 chroma)
    width: int = 64
    fps: int = 8
    num_classes: int = 4  # the first `num_classes` of `CLASS_NAMES`
    train_videos: int = 24
    val_videos: int = 8
    min_video_s: float = 20.0
    max_video_s: float = 40.0
    min_instances: int = 2  # per video; fewer when they do not fit
    max_instances: int = 6
    min_instance_s: float = 1.5
    max_instance_s: float = 4.0
    min_gap_s: float = 0.25  # between consecutive instances
    close_gap_s: float = 1.0  # a "close" pair is separated by min_gap_s..close_gap_s
    close_gap_prob: float = 0.3  # chance that an instance follows the previous one closely
    num_distractors: int = 2  # random-walk objects in view at any time (each leaves and returns)
    object_size: tuple[float, float] = (0.1, 0.15)  # half-length range of every object, fraction of the shorter side
    object_saturation: tuple[float, float] = (0.0, 0.15)  # HSV saturation range of object colours (random hue)
    object_value: tuple[float, float] = (0.8, 1.0)  # HSV value range of object colours; (1, 1) with saturation (0, 0) = white
    background_contrast: tuple[float, float] = (6.0, 12.0)  # range of the texture's brightness std, 0-255
    background_saturation: tuple[float, float] = (0.0, 0.0)  # HSV saturation range of the base colour (random hue)
    background_value: tuple[float, float] = (0.35, 0.35)  # HSV value range of the base colour
    clip_frames: int = 16  # length of the trimmed clips (`make_trimmed_clips`)

    def __post_init__(self) -> None:
        # YAML and JSON give lists; the config is hashable and printed as tuples.
        for name in _RANGES:
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = []

        def need(ok: bool, field: str, expected: str) -> None:
            if not ok:
                problems.append(f"{field}={getattr(self, field)!r}: expected {expected}")

        for name in ("height", "width"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 16 and value % 2 == 0, name, "an even int >= 16")
        fps_ok = isinstance(self.fps, int) and not isinstance(self.fps, bool) and self.fps >= 4
        need(fps_ok, "fps", "an int >= 4")
        need(isinstance(self.num_classes, int) and 2 <= self.num_classes <= len(CLASS_NAMES),
             "num_classes", f"an int in 2..{len(CLASS_NAMES)}")
        for name in ("train_videos", "val_videos", "num_distractors"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, name, "an int >= 0")
        need(isinstance(self.min_instances, int) and self.min_instances >= 1, "min_instances", "an int >= 1")
        need(isinstance(self.max_instances, int) and self.max_instances >= self.min_instances,
             "max_instances", f"an int >= min_instances ({self.min_instances})")
        if fps_ok:
            need(self.min_instance_s * self.fps >= 2, "min_instance_s", "at least 2 frames long")
        need(self.max_instance_s >= self.min_instance_s, "max_instance_s", f">= min_instance_s ({self.min_instance_s})")
        need(self.min_gap_s > 0, "min_gap_s", "> 0")
        need(self.close_gap_s >= self.min_gap_s, "close_gap_s", f">= min_gap_s ({self.min_gap_s})")
        need(0 <= self.close_gap_prob <= 1, "close_gap_prob", "a probability in [0, 1]")
        need(self.min_video_s >= self.max_instance_s + 2 * EDGE_MARGIN_S, "min_video_s",
             f">= max_instance_s + {2 * EDGE_MARGIN_S} s (room for the longest instance)")
        need(self.max_video_s >= self.min_video_s, "max_video_s", f">= min_video_s ({self.min_video_s})")
        need(isinstance(self.clip_frames, int) and self.clip_frames >= 2, "clip_frames", "an int >= 2")
        for name, (low, high) in _RANGES.items():
            need(_is_range(getattr(self, name), low, high), name, f"(low, high) with {low:g} <= low <= high <= {high:g}")
        if problems:
            raise ValueError("WorldConfig: " + "; ".join(problems))

    @property
    def look(self) -> LookRanges:
        return LookRanges(self.object_size, self.object_saturation, self.object_value)

    @property
    def backdrop(self) -> BackgroundRanges:
        return BackgroundRanges(self.background_contrast, self.background_saturation, self.background_value)

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES[: self.num_classes]

    @property
    def class_map(self) -> ClassMap:
        return ClassMap(self.class_names)


# WorldConfig fields that are (low, high) ranges, and the interval each must lie in.
_RANGES = {"object_size": (0.01, 0.5), "object_saturation": (0.0, 1.0), "object_value": (0.0, 1.0),
           "background_contrast": (0.0, 128.0), "background_saturation": (0.0, 1.0), "background_value": (0.0, 1.0)}


def _is_range(value: tuple, low: float, high: float) -> bool:
    return (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            and low <= value[0] <= value[1] <= high)


@dataclass
class _Track:
    """One object over a run of frames starting at `first_frame`."""

    first_frame: int
    poses: Poses
    look: Look

    def within(self, num_frames: int) -> _Track | None:
        """The part of the track on frames `[0, num_frames)`, or None."""
        start, stop = max(0, self.first_frame), min(num_frames, self.first_frame + len(self.poses))
        if start >= stop:
            return None
        local = self.poses.slice(start - self.first_frame, stop - self.first_frame)
        return _Track(start, local, self.look)


# ---------------------------------------------------------------------------------------
# Scene planning


def _layout(rng: np.random.Generator, cfg: WorldConfig, num_frames: int) -> list[tuple[int, int]]:
    """Non-overlapping `(start_frame, end_frame)` instances in time order."""
    fps = cfg.fps
    count = int(rng.integers(cfg.min_instances, cfg.max_instances + 1))
    lengths = [round(rng.uniform(cfg.min_instance_s, cfg.max_instance_s) * fps) for _ in range(count)]
    close = [rng.random() < cfg.close_gap_prob for _ in range(count - 1)]
    close_gaps = [round(rng.uniform(cfg.min_gap_s, cfg.close_gap_s) * fps) for _ in range(count - 1)]
    min_gap = max(1, math.ceil(cfg.min_gap_s * fps))
    margin = math.ceil(EDGE_MARGIN_S * fps)
    while True:
        # Fixed gaps: the close ones; the others get at least min_gap plus a share of the slack.
        gaps = [max(min_gap, g) if c else min_gap for g, c in zip(close_gaps, close)]
        slack = num_frames - 2 * margin - sum(lengths) - sum(gaps)
        if slack >= 0 or len(lengths) == 1:
            break
        lengths.pop()
        close.pop()
        close_gaps.pop()
    open_slots = [0] + [i + 1 for i, c in enumerate(close) if not c] + [len(lengths)]  # slot i precedes instance i
    shares = rng.dirichlet(np.ones(len(open_slots))) * max(slack, 0)
    extra = np.zeros(len(lengths) + 1, dtype=np.int64)
    extra[open_slots] = np.floor(shares).astype(np.int64)
    spans, frame = [], margin + int(extra[0])
    for i, length in enumerate(lengths):
        if i:
            frame += gaps[i - 1] + int(extra[i])
        spans.append((frame, frame + length))
        frame += length
    return spans


def _distractors(rng: np.random.Generator, cfg: WorldConfig, canvas: Canvas, num_frames: int) -> list[_Track]:
    """Each of `num_distractors` slots: an object on a random walk for a while, then briefly none."""
    fps, tracks = cfg.fps, []
    for _ in range(cfg.num_distractors):
        frame = -round(rng.uniform(*DISTRACTOR_LIFE_S) * fps * rng.random())  # mid-life at frame 0
        while frame < num_frames:
            life = max(1, round(rng.uniform(*DISTRACTOR_LIFE_S) * fps))
            poses = random_walk(rng, life, fps, canvas)  # drawn before the look: the seed's stream order
            track = _Track(frame, poses, random_look(rng, canvas, cfg.look)).within(num_frames)
            if track is not None:
                tracks.append(track)
            frame += life + max(1, round(rng.uniform(*DISTRACTOR_ABSENT_S) * fps))
    return tracks


def _actors(
    rng: np.random.Generator, cfg: WorldConfig, canvas: Canvas, label_id: int, start: int, end: int, idle: bool
) -> list[_Track]:
    """The two actors of one instance on frames `[start, end)`; with `idle`, plus a random walk
    of ACTOR_IDLE_S before and after (clipped later to the video)."""
    tracks = []
    for poses in ACTION_CLASSES[label_id].motion(rng, end - start, cfg.fps, canvas):
        before = after = 0
        if idle:
            before, after = (round(rng.uniform(*ACTOR_IDLE_S) * cfg.fps) for _ in range(2))
            poses = walk_into(rng, poses, before, after, cfg.fps, canvas)
        tracks.append(_Track(start - before, poses, random_look(rng, canvas, cfg.look)))
    return tracks


def _paint(rng: np.random.Generator, cfg: WorldConfig, canvas: Canvas, tracks: list[_Track], num_frames: int) -> np.ndarray:
    frames = background(rng, num_frames, cfg.fps, canvas, cfg.backdrop)  # [T, H, W, 3] float32
    for index in rng.permutation(len(tracks)):  # random depth order, actors and distractors mixed
        track = tracks[index].within(num_frames)
        if track is not None:
            draw(frames[track.first_frame : track.first_frame + len(track.poses)], track.poses, track.look, canvas)
    return finish(frames, rng)  # [T, H, W, 3] uint8


# ---------------------------------------------------------------------------------------
# Public API


def render_video(cfg: WorldConfig, seed: int) -> tuple[torch.Tensor, list[Instance]]:
    """One untrimmed video in memory: uint8 frames `[T, H, W, 3]` (frame k at `k / fps` s)
    and its action instances in time order (seconds, exact on the frame grid)."""
    rng = np.random.default_rng(seed)
    canvas = Canvas(cfg.height, cfg.width)
    num_frames = round(rng.uniform(cfg.min_video_s, cfg.max_video_s) * cfg.fps)
    spans = _layout(rng, cfg, num_frames)
    label_ids = rng.integers(cfg.num_classes, size=len(spans))
    tracks = _distractors(rng, cfg, canvas, num_frames)
    instances = []
    for (start, end), label_id in zip(spans, label_ids):
        tracks += _actors(rng, cfg, canvas, int(label_id), start, end, idle=True)
        instances.append(Instance(start / cfg.fps, end / cfg.fps, CLASS_NAMES[label_id]))
    return torch.from_numpy(_paint(rng, cfg, canvas, tracks, num_frames)), instances


def render_clip(cfg: WorldConfig, label_id: int, seed: int) -> torch.Tensor:
    """One trimmed clip: `clip_frames` uint8 frames `[T, H, W, 3]` from inside an instance of
    class `label_id` (the instance is 1.5-6 s long as in the videos; the clip is a random
    window of it), with the same background and distractors as the videos."""
    return torch.from_numpy(_render_clip(cfg, label_id, seed))


def _render_clip(cfg: WorldConfig, label_id: int, seed: int) -> np.ndarray:
    if not 0 <= label_id < cfg.num_classes:
        raise ValueError(f"label_id {label_id} out of range for {cfg.num_classes} classes")
    rng = np.random.default_rng(seed)
    canvas = Canvas(cfg.height, cfg.width)
    length = max(cfg.clip_frames, round(rng.uniform(cfg.min_instance_s, cfg.max_instance_s) * cfg.fps))
    offset = int(rng.integers(0, length - cfg.clip_frames + 1))
    tracks = _distractors(rng, cfg, canvas, cfg.clip_frames)
    tracks += _actors(rng, cfg, canvas, label_id, -offset, length - offset, idle=False)
    return _paint(rng, cfg, canvas, tracks, cfg.clip_frames)


def make_trimmed_clips(cfg: WorldConfig, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A balanced classification set: uint8 clips `[N, clip_frames, H, W, 3]`, labels `[N]`
    (class counts differ by at most one, in a seeded random order)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    labels = rng.permutation(np.arange(n) % cfg.num_classes)
    seeds = _seeds(seed, 3, n)
    clips = np.stack([_render_clip(cfg, int(label), s) for label, s in zip(labels, seeds)])
    return torch.from_numpy(clips), torch.from_numpy(labels).long()


def make_world(out_dir: str | Path, cfg: WorldConfig | None = None, seed: int = 0, progress: bool = True) -> Path:
    """Write `out_dir/videos/*.mp4`, `out_dir/annotations.json` (ActivityNet layout, subsets
    training/validation) and `out_dir/world.json` (config, classes, codec, per-video seeds).

    Every file is written atomically; `world.json` comes last. Videos of the same name are
    overwritten; other `.mp4` files already in `out_dir/videos` are an error, since they
    would sit beside the world without ground truth. Returns `out_dir`.
    """
    cfg = cfg or WorldConfig()
    out_dir = Path(out_dir)
    plan = [
        (f"{prefix}_{i:03d}", subset, s)
        for code, (subset, prefix) in enumerate(SUBSETS)
        for i, s in enumerate(_seeds(seed, code, cfg.train_videos if code == 0 else cfg.val_videos))
    ]
    if not plan:
        raise ValueError("WorldConfig: train_videos and val_videos are both 0; nothing to write")
    video_dir = _prepare_dir(out_dir / "videos", {f"{vid}.mp4" for vid, _, _ in plan})
    codec = video_codec()
    began = time.perf_counter()
    videos, records = {}, {}
    for vid, subset, video_seed in tqdm(plan, desc="synth", unit="video", disable=not progress):
        frames, instances = render_video(cfg, video_seed)
        write_mp4(video_dir / f"{vid}.mp4", frames, cfg.fps)
        duration_s = frames.shape[0] / cfg.fps
        videos[vid] = VideoAnnotation(vid, subset, duration_s, cfg.fps, instances)
        records[vid] = {"subset": subset, "seed": video_seed, "file": f"videos/{vid}.mp4", "num_frames": frames.shape[0]}
    annotations = Annotations(str(out_dir / "annotations.json"), videos, cfg.class_map)
    annotations.save(out_dir / "annotations.json", version=f"e2etal-synthetic-{__version__}")
    _save_world(out_dir / "world.json", cfg, seed, codec, {"videos": records})
    log.info("wrote %d videos, %d instances to %s in %.1f s", len(videos), annotations.num_instances(),
             out_dir, time.perf_counter() - began)
    return out_dir


def write_trimmed_clips(out_dir: str | Path, cfg: WorldConfig, n: int, seed: int = 0, progress: bool = True) -> Path:
    """`make_trimmed_clips` on disk: `out_dir/clips/clip_NNNNN.mp4` and `out_dir/clips.json`,
    the latter in the ActivityNet layout (subset training, one instance spanning each clip),
    so `load_annotations` reads the labels. Returns `out_dir`."""
    out_dir = Path(out_dir)
    names = [f"clip_{i:05d}" for i in range(n)]
    clip_dir = _prepare_dir(out_dir / "clips", {f"{name}.mp4" for name in names})
    clips, labels = make_trimmed_clips(cfg, n, seed)
    duration_s = cfg.clip_frames / cfg.fps
    videos = {}
    for name, clip, label in tqdm(list(zip(names, clips, labels.tolist())), desc="clips", unit="clip", disable=not progress):
        write_mp4(clip_dir / f"{name}.mp4", clip, cfg.fps)
        instances = [Instance(0.0, duration_s, CLASS_NAMES[label])]
        videos[name] = VideoAnnotation(name, "training", duration_s, cfg.fps, instances)
    Annotations(str(out_dir / "clips.json"), videos, cfg.class_map).save(
        out_dir / "clips.json", version=f"e2etal-synthetic-{__version__}"
    )
    return out_dir


# ---------------------------------------------------------------------------------------
# Files


@functools.cache
def video_codec() -> str:
    """H.264 (libx264) when the bundled FFmpeg has it, else MPEG-4 part 2."""
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
        except (av.error.FFmpegError, ValueError):
            continue
        return name
    raise RuntimeError("the FFmpeg bundled with PyAV has neither a libx264 nor an mpeg4 encoder")


def write_mp4(path: str | Path, frames: torch.Tensor, fps: int) -> None:
    """Encode uint8 frames `[T, H, W, 3]` as an `.mp4` at constant `fps`, atomically.

    The same frames give the same bytes: one encoder thread, and no x264 macroblock-tree rate
    control, whose output varied from run to run with the same input in the bundled x264."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise TypeError(f"{path}: expected uint8 frames [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    codec = video_codec()
    height, width = int(frames.shape[1]), int(frames.shape[2])
    options = {"crf": "17", "preset": "medium", "x264-params": "mbtree=0"} if codec == "libx264" else {}
    with io.atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream(codec, rate=fps, options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.thread_count = 1
            stream.codec_context.gop_size = 2 * fps  # a keyframe every 2 s: cheap windowed reads
            if codec != "libx264":
                stream.codec_context.bit_rate = max(400_000, 4 * height * width * fps)
            for image in frames.numpy():
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())


def _seeds(seed: int, stream: int, n: int) -> list[int]:
    """n independent 32-bit seeds for items of one kind (`stream`) under `seed`."""
    return [int(np.random.SeedSequence([seed, stream, i]).generate_state(1)[0]) for i in range(n)]


def _prepare_dir(folder: Path, planned: set[str]) -> Path:
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: exists and is not a folder")
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.glob("*.mp4") if p.name not in planned)
        if foreign:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise ValueError(
                f"{folder}: holds {len(foreign)} video(s) that are not part of this world ({shown}); "
                "write the world to an empty folder or remove them"
            )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _save_world(path: Path, cfg: WorldConfig, seed: int, codec: str, extra: dict) -> None:
    io.write_json(path, {
        "generator": f"e2etal.synthetic {__version__}",
        "seed": seed,
        "codec": codec,
        "config": dataclasses.asdict(cfg),
        "classes": [{"label_id": i, "label": c.name, "motion": c.description}
                    for i, c in enumerate(ACTION_CLASSES[: cfg.num_classes])],
        **extra,
    })
