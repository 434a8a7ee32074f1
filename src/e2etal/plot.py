"""A timeline of one video: ground truth above, the top-scoring detections below, one lane each.

Drawn with matplotlib's Agg canvas on a private `Figure` (no pyplot), so plotting never
changes the backend or the global figure state of anyone else using matplotlib.

Rules of the picture:
- Each detection lane is named by its rank and score (`#3  0.0251`). The scores are written
  with the same number of decimals, the fewest (2 to `MAX_SCORE_DECIMALS`) that show the best
  score to 2 significant digits and the distinct scores shown all differently, so a weak
  model's 0.0213 and 0.0209 do not both read 0.02.
- A detection's opacity is its place in the range of the scores shown: the best is opaque,
  the worst `MIN_ALPHA`, linear in score between. It ranks the detections of this plot; it is
  not a calibrated confidence and cannot be compared across plots.
- A bar's label (its class) never covers another bar or another label: it goes inside its bar
  where it fits, else beside it (right, then left) where that space is free, else it is left
  out and the bar's colour names the class through the legend (`place_labels`).
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
MIN_ALPHA = 0.25  # of the lowest-scoring detection shown; the highest is opaque
MAX_SCORE_DECIMALS = 6  # scores closer than 5e-7 may read equal; the ranks naming their lanes still order them
LABEL_PAD_PX = 3.0  # between a label and the edge of its bar, or of the axes
# Between a label beside its bar and any other bar or label, so that it reads as its own bar's.
LABEL_CLEARANCE_PX = 10.0
LABEL_FONT_SIZE = "small"


def class_colors(classes: list[str]) -> dict[str, tuple[float, float, float, float]]:
    """RGBA colour of each class by its index in `classes`; the palette repeats past 20."""
    return {name: to_rgba(_PALETTE[i % len(_PALETTE)]) for i, name in enumerate(classes)}


def score_texts(scores) -> list[str]:
    """`scores` as text with one number of decimals: the fewest, from 2 to `MAX_SCORE_DECIMALS`,
    that give the highest score 2 significant digits and at which distinct scores read
    differently. Rounding keeps the order, so a higher score never reads lower."""
    scores = np.asarray(scores, dtype=np.float64)
    distinct = np.unique(scores)
    top = np.abs(scores).max(initial=0.0)
    least = 2 if top == 0 else int(np.clip(1 - np.floor(np.log10(top)), 2, MAX_SCORE_DECIMALS))
    for decimals in range(least, MAX_SCORE_DECIMALS + 1):
        if len({f"{s:.{decimals}f}" for s in distinct}) == len(distinct):
            break
    return [f"{s:.{decimals}f}" for s in scores]


def score_alpha(scores) -> np.ndarray:
    """Opacity of each detection: `MIN_ALPHA` for the lowest of `scores`, 1 for the highest,
    linear between; all opaque when they are equal."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return scores
    lo, hi = scores.min(), scores.max()
    frac = (scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores)
    return MIN_ALPHA + (1.0 - MIN_ALPHA) * frac


def place_labels(bars, sizes, bounds, pad: float = LABEL_PAD_PX,
                 clearance: float = LABEL_CLEARANCE_PX) -> list[tuple[str, float, float] | None]:
    """Where each bar's label goes: `(where, x, y)`, the centre of its text box and where
    ("inside", "right" or "left") it is, or None where it fits nowhere.

    All in one pixel frame: `bars` are `(x0, y0, x1, y1)` boxes, `sizes` the `(width, height)`
    of each bar's text, `bounds` the `(x0, y0, x1, y1)` box every label must lie in.
    A label goes inside its bar where it fits with `pad` each side, else right of its bar, else
    left, `pad` away, at the bar's height; a place is taken only where the text box lies in
    `bounds` and overlaps no other bar and no label placed before it. A label beside its bar
    also keeps `clearance` to the left and right from those, so that it is not read as the
    label of the bar next to it. Labels that fit inside are placed first, then the others by
    their bar's left edge, so the result depends only on the inputs.
    """
    placed: list[tuple[str, float, float] | None] = [None] * len(bars)
    taken: list[tuple[float, float, float, float]] = []

    def box(x, y, size):
        return (x - size[0] / 2, y - size[1] / 2, x + size[0] / 2, y + size[1] / 2)

    def free(b, own: int, margin: float) -> bool:
        inside_bounds = bounds[0] <= b[0] and b[2] <= bounds[2] and bounds[1] <= b[1] and b[3] <= bounds[3]
        wide = (b[0] - margin, b[1], b[2] + margin, b[3])
        others = [bar for j, bar in enumerate(bars) if j != own] + taken
        return inside_bounds and not any(_overlap(wide, o) for o in others)

    def try_place(i: int, where: str, x: float) -> bool:
        y = (bars[i][1] + bars[i][3]) / 2
        b = box(x, y, sizes[i])
        if not free(b, i, 0.0 if where == "inside" else clearance):
            return False
        placed[i] = (where, x, y)
        taken.append(b)
        return True

    order = sorted(range(len(bars)), key=lambda i: (bars[i][0], bars[i][2], i))
    for i in order:
        (x0, _, x1, _), (w, _) = bars[i], sizes[i]
        if w + 2 * pad <= x1 - x0:
            try_place(i, "inside", (x0 + x1) / 2)
    for i in order:
        (x0, _, x1, _), (w, _) = bars[i], sizes[i]
        if placed[i] is None and not try_place(i, "right", x1 + pad + w / 2):
            try_place(i, "left", x0 - pad - w / 2)
    return placed


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def timeline_figure(
    detections: Detections,
    video_id: str,
    duration_s: float | None = None,
    ground_truth: VideoAnnotation | None = None,
    classes: list[str] | None = None,
    top_k: int = 20,
    min_score: float = 0.0,
    title: str | None = None,
) -> Figure:
    """The timeline of `video_id` as a `Figure` on an Agg canvas, laid out for `DPI`.

    Lanes from the top: the ground truth (when given), then the `top_k` detections of the
    video with score >= `min_score`, best first, each lane named by rank and score (see the
    module docstring for how scores, opacity and labels are drawn).
    Colours follow the index in `classes`; without it, the sorted labels drawn here, so pass
    the dataset's class list to keep colours the same across videos.
    `duration_s` defaults to the ground truth's duration, else to the last segment's end.
    The labels are placed for the final layout: resizing the figure may make them collide.
    Each bar has gid `bar:N` and its label, where it has one, `label:N`.
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

    scores = detections.score[idx].astype(np.float64)
    lane_names = (["ground truth"] if ground_truth is not None else []) + [
        f"#{r + 1}  {text}" for r, text in enumerate(score_texts(scores))
    ]
    n_lanes = max(len(lane_names), 1)
    fig = Figure(figsize=(WIDTH_IN, BASE_HEIGHT_IN + n_lanes * LANE_HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    # (lane, start_s, end_s, class, opacity) of every bar, in drawing order.
    bars = []
    if ground_truth is not None:
        for inst in gt:
            # A faint band under every lane makes each detection easy to compare with the truth.
            ax.axvspan(inst.start_s, inst.end_s, color=colors[inst.label], alpha=0.08, linewidth=0)
            bars.append((0, inst.start_s, inst.end_s, inst.label, 1.0))
    first_det_lane = 1 if ground_truth is not None else 0
    for r, (i, alpha) in enumerate(zip(idx, score_alpha(scores))):
        bars.append((first_det_lane + r, float(detections.start_s[i]), float(detections.end_s[i]),
                     str(detections.label[i]), float(alpha)))
    artists = []
    for n, (lane, start_s, end_s, label, alpha) in enumerate(bars):
        color = colors[label]
        (rect,) = ax.barh(lane, max(end_s - start_s, 0.0), left=start_s, height=BAR_HEIGHT,
                          color=(*color[:3], alpha), edgecolor=color, linewidth=0.8)
        rect.set_gid(f"bar:{n}")
        artists.append(rect)
    if ground_truth is not None and len(idx):
        ax.axhline(0.5, color="0.3", linewidth=0.8)

    ax.set_xlim(0.0, x_max)
    ax.set_ylim(n_lanes - 0.5, -0.5)  # first lane on top
    ax.set_yticks(range(len(lane_names)), lane_names)
    ax.set_xlabel("time (s)")
    if len(idx):
        ax.set_ylabel("rank  score")
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
    _label_bars(ax, bars, artists, colors)
    return fig


def _label_bars(ax, bars, artists, colors) -> None:
    """Label each bar with its class where `place_labels` finds room, on the final layout."""
    renderer = ax.figure.canvas.get_renderer()
    texts = [ax.text(0.0, 0.0, label, ha="center", va="center", fontsize=LABEL_FONT_SIZE, clip_on=True)
             for _, _, _, label, _ in bars]
    sizes = [(e.width, e.height) for e in (t.get_window_extent(renderer) for t in texts)]
    boxes = [tuple(a.get_window_extent(renderer).extents) for a in artists]
    for n, (text, spot, (_, _, _, label, alpha)) in enumerate(
        zip(texts, place_labels(boxes, sizes, tuple(ax.bbox.extents)), bars)
    ):
        if spot is None:
            text.remove()
            continue
        where, x, y = spot
        # White text on dark bars, else black: judged on the bar's colour as blended onto white.
        face = alpha * np.asarray(colors[label][:3]) + (1.0 - alpha)
        dark = where == "inside" and 0.299 * face[0] + 0.587 * face[1] + 0.114 * face[2] < 0.5
        text.set_color("white" if dark else "black")
        text.set_position(ax.transData.inverted().transform((x, y)))
        text.set_gid(f"label:{n}")


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
    """Write the `timeline_figure` of `video_id` as a PNG to `out_path` (atomically) and return its path."""
    fig = timeline_figure(detections, video_id, duration_s, ground_truth, classes, top_k, min_score, title)
    out_path = Path(out_path)
    with io.atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return out_path
