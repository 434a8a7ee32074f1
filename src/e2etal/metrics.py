"""Temporal detection mAP with the semantics of the official ActivityNet evaluation
(`ANETdetection`), vectorised.

Per class, detections are taken in order of descending score. At each tIoU threshold a
detection is a true positive if, among the not-yet-matched ground-truth instances of the
same video and class, the one of highest tIoU reaches the threshold; that instance is
then matched. Everything else is a false positive, including detections on videos with no
ground truth of that class. AP is the VOC-2011 interpolated AP (precision made monotone
from the right, summed over the recall steps); mAP averages over every class that has
ground truth in the evaluated subset, a class with no detection scoring 0.

Zero-length segments. A zero-length detection against a zero-length instance of the same
video and class is 0/0 in the reference, a NaN that passes every threshold and is tried
first: it always matches. This module reproduces that (the official sample predictions
need it to score 1.0 against their own ground truth).

Ties. The reference ranks with `argsort()[::-1]`, which for equal values reverses the
input order (exactly so where NumPy's sort is stable, as for short arrays). We make that
the rule everywhere: of detections with equal score, the one given later in the file is
ranked first; of unmatched instances with equal tIoU, the one listed later in the
annotation file is matched. With the official sample predictions (all of score 1.0) this
is what reproduces the published-code figure.

Speed. Matching in one (video, class) group never depends on another group, so all groups
advance together: step r matches the r-th best detection of every group at every
threshold at once. The loop runs over ranks (at most the largest group), not detections.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from e2etal.data.annotations import Annotations, CleanupReport, load_annotations
from e2etal.data.predictions import Detections, load_predictions

log = logging.getLogger(__name__)

THUMOS14_TIOU = (0.3, 0.4, 0.5, 0.6, 0.7)
ACTIVITYNET_TIOU = tuple(float(x) for x in np.linspace(0.5, 0.95, 10))
_CHUNK_ELEMENTS = 1 << 22


def segment_tiou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Temporal IoU of every prediction against every ground-truth segment.

    pred: [N, 2], gt: [M, 2] (start_s, end_s) -> [N, M]. Two zero-length segments give
    +inf (the reference's 0/0, which matches at any threshold)."""
    return paired_tiou(pred[:, None], gt[None])


def paired_tiou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Temporal IoU of segments `a [..., 2]` and `b [..., 2]`, broadcast over the leading
    axes; +inf where both are zero-length (0/0), as `segment_tiou`."""
    inter = np.clip(np.minimum(a[..., 1], b[..., 1]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    union = (b[..., 1] - b[..., 0]) + (a[..., 1] - a[..., 0]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union == 0, np.inf, inter / np.where(union == 0, 1.0, union))


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC-2011 interpolated average precision of one ranked list ([N] each)."""
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


@dataclass
class DetectionResult:
    tiou: np.ndarray  # [K]
    classes: list[str]  # [C]
    ap: np.ndarray  # [K, C]
    num_ground_truth: int
    num_detections: int
    num_ignored: int = 0
    cleanup: CleanupReport | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def mAP(self) -> np.ndarray:  # [K]
        return self.ap.mean(axis=1)

    @property
    def average_mAP(self) -> float:
        return float(self.mAP.mean())

    def to_json(self) -> dict:
        return {
            "tiou": [float(t) for t in self.tiou],
            "mAP": [float(m) for m in self.mAP],
            "average_mAP": self.average_mAP,
            "per_class_ap": {c: [float(x) for x in self.ap[:, i]] for i, c in enumerate(self.classes)},
        }

    def table(self, per_class: bool = False) -> str:
        heads = [f"{t:.2f}" for t in self.tiou]
        width = max([len("average mAP")] + ([len(c) for c in self.classes] if per_class else []))
        lines = [f"{'tIoU':<{width}}  " + "  ".join(f"{h:>6}" for h in heads) + "     avg"]
        lines.append("-" * len(lines[0]))
        lines.append(f"{'mAP (%)':<{width}}  " + "  ".join(f"{100 * m:6.2f}" for m in self.mAP) + f"  {100 * self.average_mAP:6.2f}")
        if per_class:
            lines.append("-" * len(lines[0]))
            for i, c in enumerate(self.classes):
                ap = self.ap[:, i]
                lines.append(f"{c:<{width}}  " + "  ".join(f"{100 * a:6.2f}" for a in ap) + f"  {100 * ap.mean():6.2f}")
        return "\n".join(lines)


def parse_tiou(spec: str) -> tuple[float, ...]:
    """`START:STOP:NUM` (inclusive, as numpy.linspace), a comma list, or one number."""
    usage = "expected START:STOP:NUM (e.g. 0.5:0.95:10) or a comma list (e.g. 0.3,0.5,0.7)"
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) != 3:
            raise ValueError(f"--tiou {spec!r}: {usage}")
        try:
            start, stop, num = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise ValueError(f"--tiou {spec!r}: {usage}; NUM is a whole number") from None
        if num < 1:
            raise ValueError(f"--tiou {spec!r}: NUM must be >= 1, got {num}")
        values = tuple(float(x) for x in np.linspace(start, stop, num))
    else:
        items = spec.split(",")
        if any(not x.strip() for x in items):
            raise ValueError(f"--tiou {spec!r}: empty item in the list; {usage}")
        try:
            values = tuple(float(x) for x in items)
        except ValueError:
            raise ValueError(f"--tiou {spec!r}: {usage}") from None
    if any(not 0 <= v <= 1 for v in values):
        raise ValueError(f"--tiou {spec!r}: thresholds must lie in [0, 1]")
    return values


def evaluate_files(
    ground_truth_path,
    predictions_path,
    subset: str | None = None,
    tiou_thresholds=ACTIVITYNET_TIOU,
    keep_duplicates: bool = False,
) -> DetectionResult:
    """Load an annotation file and a results file and evaluate one subset.

    `subset=None` takes the file's only subset (an error if it has several)."""
    annotations = load_annotations(ground_truth_path)
    if subset is None:
        if len(annotations.subsets) != 1:
            raise ValueError(f"{ground_truth_path}: has subsets {annotations.subsets}; choose one with --subset")
        subset = annotations.subsets[0]
    ground_truth = annotations.subset(subset)
    detections = load_predictions(predictions_path)
    result = evaluate_detections(ground_truth, detections, tiou_thresholds, keep_duplicates)
    past = ground_truth.count_past_duration()
    if past:
        result.notes.append(f"{past} ground-truth instance(s) end after their video's duration; evaluated as given")
    outside = int(sum(1 for v in set(detections.video) if v not in ground_truth.videos))
    if outside:
        result.notes.append(f"detections on {outside} video(s) outside subset {subset!r} count as false positives")
    if result.cleanup is not None and (result.cleanup.dropped_short or result.cleanup.dropped_repeats):
        result.notes.append(f"{result.cleanup} (--keep-duplicates keeps them)")
    return result


def evaluate_detections(
    ground_truth: Annotations,
    detections: Detections,
    tiou_thresholds=ACTIVITYNET_TIOU,
    keep_duplicates: bool = False,
) -> DetectionResult:
    """mAP of `detections` against `ground_truth` (already restricted to one subset).

    Unless `keep_duplicates`, ground-truth instances shorter than 1 ms and repeats are
    dropped first (as ActionFormer and OpenTAD do); the official code keeps them."""
    cleanup = None
    if not keep_duplicates:
        ground_truth, cleanup = ground_truth.without_repeats()
    thr = np.asarray(tiou_thresholds, dtype=np.float64)
    if thr.ndim != 1 or len(thr) == 0 or np.any((thr < 0) | (thr > 1)):
        raise ValueError(f"tIoU thresholds must be a non-empty list in [0, 1], got {tiou_thresholds!r}")

    present = {i.label for v in ground_truth.videos.values() for i in v.instances}
    classes = [c for c in ground_truth.classes.names if c in present]
    class_idx = {c: i for i, c in enumerate(classes)}
    video_idx: dict[str, int] = {}
    g_video, g_class, g_seg = [], [], []
    for vid, v in ground_truth.videos.items():
        vi = video_idx.setdefault(vid, len(video_idx))
        for inst in v.instances:
            g_video.append(vi)
            g_class.append(class_idx[inst.label])
            g_seg.append((inst.start_s, inst.end_s))
    n_gt = len(g_seg)

    d_class = np.array([class_idx.get(lbl, -1) for lbl in detections.label], dtype=np.int64)
    known = d_class >= 0
    num_ignored = int((~known).sum())
    notes = []
    if num_ignored:
        unknown = sorted({str(lbl) for lbl in detections.label[~known]})
        notes.append(f"ignored {num_ignored} detection(s) whose label is not a ground-truth class of this subset: {unknown[:5]}{'...' if len(unknown) > 5 else ''}")
        log.warning(notes[-1])
    d_class = d_class[known]
    d_video = np.array([video_idx.get(v, -1) for v in detections.video[known]], dtype=np.int64)
    d_seg = np.stack([detections.start_s[known], detections.end_s[known]], axis=1) if known.any() else np.zeros((0, 2))
    d_score = detections.score[known]
    n_det = len(d_score)

    n_videos = max(len(video_idx), 1)
    g_key = np.asarray(g_class, dtype=np.int64) * n_videos + np.asarray(g_video, dtype=np.int64)
    g_order = np.argsort(g_key, kind="stable")
    g_seg_sorted = np.asarray(g_seg, dtype=np.float64).reshape(-1, 2)[g_order]
    group_keys, group_start, group_count = np.unique(g_key[g_order], return_index=True, return_counts=True)

    tp = np.zeros((n_det, len(thr)), dtype=bool)
    d_key = d_class * n_videos + d_video
    d_group = np.searchsorted(group_keys, d_key)
    has_gt = (d_video >= 0) & (d_group < len(group_keys))
    has_gt[has_gt] = group_keys[d_group[has_gt]] == d_key[has_gt]
    _match(tp, np.flatnonzero(has_gt), d_group, d_seg, d_score, g_seg_sorted, group_start, group_count, thr)

    npos = np.bincount(np.asarray(g_class, dtype=np.int64), minlength=len(classes))
    ap = np.zeros((len(thr), len(classes)))
    order = np.lexsort((-np.arange(n_det), -d_score, d_class))
    bounds = np.searchsorted(d_class[order], np.arange(len(classes) + 1))
    for c in range(len(classes)):
        rows = order[bounds[c] : bounds[c + 1]]
        if len(rows) == 0:
            continue
        tp_cum = np.cumsum(tp[rows], axis=0).astype(np.float64)  # [n, K]
        fp_cum = np.cumsum(~tp[rows], axis=0).astype(np.float64)
        recall = tp_cum / npos[c]
        precision = tp_cum / (tp_cum + fp_cum)
        for k in range(len(thr)):
            ap[k, c] = interpolated_ap(precision[:, k], recall[:, k])
    return DetectionResult(thr, classes, ap, n_gt, len(detections), num_ignored, cleanup, notes)


def _match(tp, rows, d_group, d_seg, d_score, g_seg, group_start, group_count, thr) -> None:
    """Greedy matching of the detections `rows` (all of which have ground truth in their
    group), written into `tp` [N, K]."""
    if len(rows) == 0:
        return
    grp = d_group[rows]
    # Rank of each detection inside its group: descending score, ties later-first.
    order = np.lexsort((-rows, -d_score[rows], grp))
    rows, grp = rows[order], grp[order]
    first = np.searchsorted(grp, grp, side="left")
    rank = np.arange(len(rows)) - first
    by_rank = np.argsort(rank, kind="stable")
    rank_bounds = np.searchsorted(rank[by_rank], np.arange(rank.max() + 2))

    used_groups, local = np.unique(grp, return_inverse=True)
    g_max = int(group_count[used_groups].max())
    k = len(thr)
    locked = np.zeros((len(used_groups), k, g_max), dtype=bool)
    cols = np.arange(g_max)
    chunk = max(1, _CHUNK_ELEMENTS // (k * g_max))
    for r in range(len(rank_bounds) - 1):
        sel_all = by_rank[rank_bounds[r] : rank_bounds[r + 1]]
        for s in range(0, len(sel_all), chunk):
            sel = sel_all[s : s + chunk]
            g = grp[sel]
            valid = cols[None, :] < group_count[g][:, None]  # [A, G]
            gt_pos = np.where(valid, group_start[g][:, None] + cols[None, :], 0)
            gt = g_seg[gt_pos]  # [A, G, 2]
            seg = d_seg[rows[sel]]  # [A, 2]
            # A point detection against a point instance gives 0/0 in the reference, a NaN
            # that passes every threshold and ranks first: the same as +inf here.
            tiou = np.where(valid, paired_tiou(seg[:, None], gt), -1.0)  # [A, G]
            lg = local[sel]
            masked = np.where(locked[lg], -1.0, tiou[:, None, :])  # [A, K, G]
            best = g_max - 1 - masked[..., ::-1].argmax(axis=-1)  # [A, K], ties -> later instance
            hit = np.take_along_axis(masked, best[..., None], axis=-1)[..., 0] >= thr[None, :]
            tp[rows[sel]] = hit
            locked[lg[:, None], np.arange(k)[None, :], best] |= hit
