"""A timeline of one video: ground truth above, the top-scoring detections below, one lane each.

Drawn with matplotlib's Agg canvas on a private `Figure` (no pyplot), so plotting never
changes the backend or the global figure state of anyone else using matplotlib.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from e2etal import io
from e2etal.data.annotations import VideoAnnotation
from e2etal.data.predictions import Detections

# tab20 reordered so that consecutive classes get different hues (dark, then light shades).
_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
]
WIDTH_IN = 12.0
BASE_HEIGHT_IN = 2.0
LANE_HEIGHT_IN = 0.35
DPI = 100
BAR_HEIGHT = 0.7  # of a lane
MIN_ALPHA = 0.25  # of a detection with score 0; score 1 is opaque
# A bar narrower than this fraction of the time axis gets its text beside it, not inside.
INSIDE_TEXT_MIN_FRACTION = 0.12


def class_colors(classes: list[str]) -> dict[str, tuple[float, float, float, float]]:
    """RGBA colour of each class by its index in `classes`; the palette repeats past 20."""
    return {name: to_rgba(_PALETTE[i % len(_PALETTE)]) for i, name in enumerate(classes)}


def plot_timeline(
    out_path: str | os.PathLike,
    detections: Detections,
    video_id: str,
    duration_s: float | None = None,
    ground_truth: VideoAnnotation | None = None,
    classes: list[str] | None = None,
    top_k: int = 20,
    min_score: float = 0.0,
    title: str | None = None,
) -> Path:
    """Write a PNG timeline of `video_id` to `out_path` (atomically) and return its path.

    Lanes from the top: the ground truth (when given), then the `top_k` detections of the
    video with score >= `min_score`, best first. Bars are coloured by class and labelled with
    the class and score; a detection's opacity also grows with its score.
    Colours follow the index in `classes`; without it, the sorted labels drawn here, so pass
    the dataset's class list to keep colours the same across videos.
    `duration_s` defaults to the ground truth's duration, else to the last segment's end.
    """
    if top_k < 0:
        raise ValueError(f"plot_timeline: top_k must be >= 0, got {top_k}")
    keep = (detections.video == video_id) & (detections.score >= min_score)
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(-detections.score[idx], kind="stable")][:top_k]
    gt = list(ground_truth.instances) if ground_truth is not None else []

    drawn_labels = [str(detections.label[i]) for i in idx] + [inst.label for inst in gt]
    if classes is None:
        classes = sorted(set(drawn_labels))
    unknown = sorted(set(drawn_labels) - set(classes))
    if unknown:
        raise ValueError(f"plot_timeline: video {video_id!r} has label(s) {unknown} not in the given classes")
    colors = class_colors(classes)

    if duration_s is None and ground_truth is not None:
        duration_s = ground_truth.duration_s
    last_end = max([float(detections.end_s[i]) for i in idx] + [inst.end_s for inst in gt], default=0.0)
    if duration_s is None:
        duration_s = last_end
    x_max = max(duration_s, last_end) or 1.0

    lane_names = (["ground truth"] if ground_truth is not None else []) + [f"#{r + 1}" for r in range(len(idx))]
    n_lanes = max(len(lane_names), 1)
    fig = Figure(figsize=(WIDTH_IN, BASE_HEIGHT_IN + n_lanes * LANE_HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    lane = 0
    if ground_truth is not None:
        for inst in gt:
            # A faint band under every lane makes each detection easy to compare with the truth.
            ax.axvspan(inst.start_s, inst.end_s, color=colors[inst.label], alpha=0.08, linewidth=0)
            _bar(ax, lane, inst.start_s, inst.end_s, colors[inst.label], 1.0, inst.label, x_max)
        lane += 1
    for i in idx:
        label, score = str(detections.label[i]), float(detections.score[i])
        alpha = MIN_ALPHA + (1.0 - MIN_ALPHA) * float(np.clip(score, 0.0, 1.0))
        _bar(ax, lane, float(detections.start_s[i]), float(detections.end_s[i]), colors[label], alpha,
             f"{label} {score:.2f}", x_max)
        lane += 1
    if ground_truth is not None and len(idx):
        ax.axhline(0.5, color="0.3", linewidth=0.8)

    ax.set_xlim(0.0, x_max)
    ax.set_ylim(n_lanes - 0.5, -0.5)  # first lane on top
    ax.set_yticks(range(len(lane_names)), lane_names)
    ax.set_xlabel("time (s)")
    ax.grid(axis="x", color="0.85", linewidth=0.6)
    ax.set_axisbelow(True)
    if last_end > duration_s > 0:
        ax.axvline(duration_s, color="0.3", linestyle="--", linewidth=0.8)
    if title is None:
        n_kept = int(keep.sum())
        shown_of = "no detections" if not len(idx) else f"top {len(idx)} of {n_kept} detection(s)"
        title = f"{video_id}: {shown_of}" + (f" with score >= {min_score:g}" if min_score > 0 else "")
    ax.set_title(title)

    drawn = set(drawn_labels)
    shown = [c for c in classes if c in drawn]
    if shown:
        ax.legend(handles=[Patch(color=colors[c], label=c) for c in shown], loc="upper left",
                  bbox_to_anchor=(1.005, 1.0), frameon=False, fontsize="small")
    fig.tight_layout()

    out_path = Path(out_path)
    with io.atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    return out_path


def _bar(ax, lane: int, start_s: float, end_s: float, color, alpha: float, text: str, x_max: float) -> None:
    width = max(end_s - start_s, 0.0)
    face = (*color[:3], alpha)
    ax.barh(lane, width, left=start_s, height=BAR_HEIGHT, color=face, edgecolor=color, linewidth=0.8)
    if width >= INSIDE_TEXT_MIN_FRACTION * x_max:
        # Dark text on light/transparent bars, white on strong ones.
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        ink = "white" if alpha > 0.6 and luminance < 0.6 else "black"
        ax.text(start_s + width / 2, lane, text, ha="center", va="center", fontsize="small", color=ink, clip_on=True)
    elif end_s < 0.75 * x_max:
        ax.text(end_s + 0.005 * x_max, lane, text, ha="left", va="center", fontsize="small", clip_on=True)
    else:
        ax.text(start_s - 0.005 * x_max, lane, text, ha="right", va="center", fontsize="small", clip_on=True)
