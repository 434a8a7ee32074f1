"""From a video's candidate detections to its final list: clipping, NMS or Soft-NMS,
score voting, top-k. Plain PyTorch on the inputs' device; no compiled extension.

Rules every function here follows:

* Ranking is by descending score; of equal scores, the detection given first wins.
  Results come back in that order.
* Class-wise (the default) means only detections with the same label interact
  (suppress, decay, vote); `class_agnostic=True` lets every detection interact.
  Detections of different videos never interact.
* Segments and scores are computed and returned in the inputs' floating dtype, promoted
  to at least float32 (Soft-NMS decays and voting averages lose too much in half
  precision). Labels keep their dtype.
* An empty input (N = 0) gives empty outputs of the usual shapes and dtypes.
* Segments and scores must be finite (no NaN or inf).

Speed. Greedy suppression is sequential inside a group (one class of one video, or a
whole video when class-agnostic), but groups never interact, so every group of every
video advances at once. Each group is a column of one [M, G] table (M its largest group;
columns by descending size; a group's detections down its column in input order; short
columns padded with dead slots). Step k takes the best live detection of every column
and decays (Soft-NMS) or removes (NMS) the rest of its column by their tIoU with it:
about thirty tensor operations on the table, whatever the number of videos, classes or
detections. There are at most min(M, max_segments) steps; columns with at most k
detections leave at step k, every 32 steps each column's live detections move up and the
dead rows are cut, and the loop ends when no column has a live detection. The table goes
in blocks of columns small enough to stay in cache. Score voting is one batched pass of
the kept detections against their own group's column. Work is O(G * M) per step, memory
O(G * M).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from e2etal.geometry import segment_lengths

METHODS = ("soft", "hard", "none")


@dataclass
class PostprocessConfig:
    """Suppression of one video's candidates. The defaults are ActionFormer's THUMOS-14
    `test_cfg` (happyharrycn/actionformer_release, commit 61ea7eb): `configs/thumos_i3d.yaml`
    (`thumos:`) over `libs/core/config.py` (`default:`)."""

    method: str = "soft"  # "soft" (Gaussian Soft-NMS), "hard" (NMS) or "none" (default: nms_method)
    iou_threshold: float = 0.1  # hard NMS: suppress overlaps above this tIoU (default: iou_threshold)
    sigma: float = 0.5  # Soft-NMS: score *= exp(-tiou^2 / sigma) (default: nms_sigma)
    min_score: float = 0.001  # Soft-NMS: drop detections decayed below this (thumos: min_score)
    class_agnostic: bool = False  # thumos: multiclass_nms true
    voting_iou: float | None = 0.7  # None = no score voting (thumos: voting_thresh)
    max_segments: int = 200  # thumos: max_seg_num

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"PostprocessConfig.method must be one of {', '.join(map(repr, METHODS))}, got {self.method!r}")
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise ValueError(f"PostprocessConfig.iou_threshold must be in [0, 1], got {self.iou_threshold!r}")
        if not self.sigma > 0:
            raise ValueError(f"PostprocessConfig.sigma must be > 0, got {self.sigma!r}")
        if self.voting_iou is not None and not 0.0 <= self.voting_iou <= 1.0:
            raise ValueError(f"PostprocessConfig.voting_iou must be in [0, 1] or None, got {self.voting_iou!r}")
        value = self.max_segments
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"PostprocessConfig.max_segments must be a positive integer, got {value!r}")


def postprocess(
    segments: Tensor,  # [N, 2] (start, end), seconds
    scores: Tensor,  # [N]
    labels: Tensor,  # [N] class index
    cfg: PostprocessConfig,
    duration_s: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # [K, 2], [K], [K], K <= cfg.max_segments
    """The whole chain a detection head runs on one video's candidates.

    Clip to [0, duration_s] (to >= 0 when the duration is not known), drop segments of
    non-positive length, then NMS / Soft-NMS / nothing, the `max_segments` best by
    descending score, and optional score voting of those against all the surviving
    candidates (the voted segments clipped again). Which candidates come in is the
    decoder's business (`ActionFormerHead.decode`: a score threshold and top-k per pyramid
    level). This is `postprocess_videos` on one video."""
    return postprocess_videos([(segments, scores, labels)], cfg, [duration_s])[0]


def postprocess_videos(
    candidates: Sequence[tuple[Tensor, Tensor, Tensor]],  # per video: [N_i, 2] seconds, [N_i], [N_i]
    cfg: PostprocessConfig,
    durations_s: Sequence[float | None] | None = None,
) -> list[tuple[Tensor, Tensor, Tensor]]:  # per video: [K_i, 2], [K_i], [K_i], K_i <= cfg.max_segments
    """`postprocess` of many videos in one go: element i is what
    `postprocess(*candidates[i], cfg, durations_s[i])` returns. Videos do not interact;
    they only share the tensor operations, which is what makes this fast."""
    if durations_s is None:
        durations_s = [None] * len(candidates)
    if len(durations_s) != len(candidates):
        raise ValueError(f"postprocess_videos: {len(candidates)} videos but {len(durations_s)} durations")
    work = []
    for i, (segments, scores, labels) in enumerate(candidates):
        try:
            work.append((*_as_work(segments, scores, labels), labels))
        except ValueError as error:
            raise ValueError(f"postprocess_videos: video {i}: {error}") from None
    # A batch computes in one dtype on one device, so no video's result depends on the
    # dtypes of the others.
    batches: dict[tuple, list[int]] = {}
    for i, (segments, _, labels) in enumerate(work):
        batches.setdefault((segments.dtype, labels.dtype, segments.device), []).append(i)
    results: list[tuple[Tensor, Tensor, Tensor]] = [None] * len(work)  # type: ignore[list-item]
    for members in batches.values():
        outputs = _postprocess_batch([work[i] for i in members], [durations_s[i] for i in members], cfg)
        for i, output in zip(members, outputs):
            results[i] = output
    return results


def nms(
    segments: Tensor,  # [N, 2]
    scores: Tensor,  # [N]
    labels: Tensor,  # [N]
    iou_threshold: float,
    class_agnostic: bool = False,
    max_segments: int | None = None,
) -> Tensor:  # [K] long, indices into the inputs, descending score
    """Greedy (hard) NMS: the best remaining detection is kept and every remaining one of
    its class whose tIoU with it exceeds `iou_threshold` (strictly) is discarded."""
    segments, scores = _as_work(segments, scores, labels)
    kept, _ = _suppress_one_video(segments, scores, labels, class_agnostic, max_segments, "hard", iou_threshold, 1.0, 0.0)
    return kept


def soft_nms(
    segments: Tensor,  # [N, 2]
    scores: Tensor,  # [N]
    labels: Tensor,  # [N]
    sigma: float = 0.5,
    min_score: float = 1e-3,
    class_agnostic: bool = False,
    max_segments: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # [K, 2], [K] decayed scores, [K]; descending score
    """Gaussian Soft-NMS (Bodla et al. 2017).

    Repeatedly keep the remaining detection of highest (decayed) score and multiply the
    score of every remaining one of its class by exp(-tiou^2 / sigma). A detection whose
    score is below `min_score`, before or after a decay, is dropped."""
    if not sigma > 0:
        raise ValueError(f"soft_nms: sigma must be > 0, got {sigma!r}")
    segments, scores = _as_work(segments, scores, labels)
    kept, kept_scores = _suppress_one_video(segments, scores, labels, class_agnostic, max_segments, "soft", 0.0, sigma, min_score)
    kept_segments, kept_labels = _take(kept, segments, labels)
    return kept_segments, kept_scores, kept_labels


def score_voting(
    kept_segments: Tensor,  # [K, 2]
    kept_scores: Tensor,  # [K]
    kept_labels: Tensor,  # [K]
    all_segments: Tensor,  # [N, 2]
    all_scores: Tensor,  # [N]
    all_labels: Tensor,  # [N]
    iou_threshold: float = 0.7,
    class_agnostic: bool = False,
) -> Tensor:  # [K, 2] refined kept segments
    """Refine each kept segment's boundaries by voting among the candidates.

    As in ActionFormer: the candidates (same class unless `class_agnostic`) whose tIoU
    with the kept segment is at least `iou_threshold` vote with weight tIoU x original
    score; the refined segment is the weighted mean of theirs. Only the candidates'
    scores weigh, not the kept (possibly decayed) score. A kept segment with no vote of
    positive weight is returned unchanged."""
    kept_segments, kept_scores = _as_work(kept_segments, kept_scores, kept_labels)
    all_segments, all_scores = _as_work(all_segments, all_scores, all_labels)
    dtype = torch.promote_types(kept_segments.dtype, all_segments.dtype)
    kept_segments, all_segments, all_scores = kept_segments.to(dtype), all_segments.to(dtype), all_scores.to(dtype)
    if class_agnostic:
        kept_groups = torch.zeros_like(kept_labels, dtype=torch.long)
        groups, num_groups = torch.zeros_like(all_labels, dtype=torch.long), 1
    else:
        classes, inverse = torch.unique(torch.cat([all_labels, kept_labels.to(all_labels.dtype)]), return_inverse=True)
        groups, kept_groups, num_groups = inverse[: all_labels.numel()], inverse[all_labels.numel() :], classes.numel()
    layout = _layout(groups, num_groups)
    return _vote(kept_segments, layout.column_of_group[kept_groups], all_segments, all_scores, layout, iou_threshold)


def top_k(
    segments: Tensor,  # [N, 2]
    scores: Tensor,  # [N]
    labels: Tensor,  # [N]
    k: int,
) -> tuple[Tensor, Tensor, Tensor]:  # [min(k, N), 2], [min(k, N)], [min(k, N)]; descending score
    """The k best detections by score (ties: the one given first), best first."""
    if k < 0:
        raise ValueError(f"top_k: k must be >= 0, got {k!r}")
    segments, scores = _as_work(segments, scores, labels)
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return segments[order], scores[order], labels[order]


# `_suppress` compacts its table every this many steps: often enough to save work as
# detections are kept or dropped, seldom enough that the compaction (a few passes over
# the table) costs less than it saves.
_COMPACT_EVERY = 32

# `_suppress` works on blocks of columns (groups) of about this many table entries, so
# that a block's tables stay in cache.
_BLOCK_ENTRIES = 1 << 17

# Voting compares each kept detection with its group's whole column, in chunks of kept
# detections of about this many (kept, candidate) pairs.
_VOTE_CHUNK_PAIRS = 1 << 18


class _Layout(NamedTuple):
    """Where each detection sits in the [M, G] table of `_suppress` (see "Speed" above)."""

    column: Tensor  # [N] its group's column
    flat: Tensor  # [N] slot * G + column, its place in the flattened table (slot: its rank in its group, in input order)
    column_of_group: Tensor  # [num_groups] a group's column, -1 for a group without detections
    sizes: list[int]  # detections in each column, descending


def _postprocess_batch(
    videos: list[tuple[Tensor, Tensor, Tensor]],  # work segments [N_i, 2], scores [N_i], labels [N_i]
    durations_s: list[float | None],
    cfg: PostprocessConfig,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """`postprocess_videos` on videos of one work dtype, label dtype and device."""
    num_videos = len(videos)
    segments = torch.cat([v[0] for v in videos])  # [N, 2], every video's candidates
    scores = torch.cat([v[1] for v in videos])  # [N]
    labels = torch.cat([v[2] for v in videos])  # [N]
    device = scores.device
    sizes = torch.tensor([v[1].numel() for v in videos], device=device)
    video = torch.repeat_interleave(torch.arange(num_videos, device=device), sizes)  # [N]

    # Position order is every video's "given first" order from here on. Segments are
    # clipped to [0, duration] per video (geometry.clip_segments), to >= 0 without one.
    high = torch.tensor([torch.inf if d is None else float(d) for d in durations_s], dtype=scores.dtype, device=device)
    segments = segments.clamp(min=0.0).minimum(high.index_select(0, video)[:, None])
    # A zero-length segment can match nothing and would only take a slot in the output.
    keep = torch.nonzero(segment_lengths(segments) > 0).squeeze(1)
    segments, scores, labels, video = _take(keep, segments, scores, labels, video)
    if scores.numel() == 0:
        return [(segments, scores, labels)] * num_videos

    groups, num_groups = _group_ids(video, labels, num_videos, cfg.class_agnostic)
    layout = _layout(groups, num_groups)
    if cfg.method == "none":
        kept_scores = scores
    else:
        kept_scores = _suppress(
            segments, scores, layout, cfg.max_segments, cfg.method, cfg.iou_threshold, cfg.sigma, cfg.min_score
        )
    # Voting moves boundaries but not scores, so cutting to max_segments first is exact
    # and spares voting for detections that would be cut anyway.
    kept = _best_per_video(kept_scores, video, num_videos, cfg.max_segments)
    out_segments, out_scores, out_labels, out_video = _take(kept, segments, kept_scores, labels, video)
    if cfg.voting_iou is not None:
        out_segments = _vote(out_segments, layout.column.index_select(0, kept), segments, scores, layout, cfg.voting_iou)
        # A weighted mean of clipped segments lies inside the clip, but for its rounding.
        out_segments = out_segments.clamp(min=0.0).minimum(high.index_select(0, out_video)[:, None])
    counts = torch.bincount(out_video, minlength=num_videos).tolist()
    return list(zip(out_segments.split(counts), out_scores.split(counts), out_labels.split(counts)))


def _suppress_one_video(
    segments: Tensor,  # [N, 2] work dtype
    scores: Tensor,  # [N]
    labels: Tensor,  # [N]
    class_agnostic: bool,
    max_segments: int | None,
    method: str,
    iou_threshold: float,
    sigma: float,
    min_score: float,
) -> tuple[Tensor, Tensor]:  # [K] kept indices, [K] their scores when kept; ranked
    """`nms` / `soft_nms` on work tensors."""
    n = scores.numel()
    cap = _cap(max_segments, n)
    if n == 0 or cap == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device), scores[:0]
    video = torch.zeros(n, dtype=torch.long, device=scores.device)
    groups, num_groups = _group_ids(video, labels, 1, class_agnostic)
    kept_scores = _suppress(segments, scores, _layout(groups, num_groups), cap, method, iou_threshold, sigma, min_score)
    # Inside one group this ranking is the order of selection (a later pick can tie an
    # earlier one only if it came later in the input), so capping each group at `cap`
    # in `_suppress` loses nothing of the global top `cap`.
    kept = _best_per_video(kept_scores, video, 1, cap)
    return kept, kept_scores.index_select(0, kept)


def _suppress(
    segments: Tensor,  # [N, 2]
    scores: Tensor,  # [N]
    layout: _Layout,
    cap: int,
    method: str,  # "soft" or "hard"
    iou_threshold: float,
    sigma: float,
    min_score: float,
) -> Tensor:  # [N] a detection's score when kept (decayed for Soft-NMS), -inf if not kept
    """Greedy NMS or Soft-NMS inside every group at once, at most `cap` kept per group."""
    start = _table(segments[:, 0], layout, 0.0)  # [M, G]; padding: zero length at 0,
    end = _table(segments[:, 1], layout, 0.0)  # which overlaps nothing
    # A pick scoring below `lowest` is no pick. Dead slots are -inf, below any finite one.
    lowest = max(min_score if method == "soft" else -torch.inf, torch.finfo(scores.dtype).min)
    # A score below min_score before any decay is dropped; after one, it stays below.
    live = torch.where(scores >= lowest, scores, -torch.inf)
    current = _table(live, layout, -torch.inf)  # [M, G] -inf: kept, dropped or padding
    score_when_kept = torch.full_like(current, -torch.inf)
    # Columns in blocks small enough for the cache; each block is as tall as its first
    # (largest) column.
    first = 0
    while first < current.shape[1]:
        rows = slice(0, layout.sizes[first])
        block = slice(first, first + max(1, _BLOCK_ENTRIES // layout.sizes[first]))
        first = block.stop
        score_when_kept[rows, block] = _suppress_block(
            start[rows, block].contiguous(), end[rows, block].contiguous(), current[rows, block].contiguous(),
            layout.sizes[block], cap, method, iou_threshold, sigma, lowest,
        )
    return score_when_kept.view(-1).index_select(0, layout.flat)


def _suppress_block(
    start: Tensor,  # [M, A] a block of the table
    end: Tensor,  # [M, A]
    current: Tensor,  # [M, A] live scores, -inf elsewhere; updated in place
    sizes: list[int],  # [A] detections per column, descending
    cap: int,
    method: str,
    iou_threshold: float,
    sigma: float,
    lowest: float,  # a pick scoring below this is no pick; finite
) -> Tensor:  # [M, A] a slot's score when kept, -inf if not kept
    """`_suppress` on one block of columns."""
    num_slots, num_columns = current.shape
    device = current.device
    # Lengths of at least `tiny` keep every union positive (see _tiou). They change no
    # tIoU of a segment longer than that, nor of one of zero or negative length (padding
    # included), whose intersection with anything is empty: its tIoU is 0 either way.
    tiny = torch.finfo(current.dtype).tiny
    length = torch.sub(end, start).clamp_(min=tiny)
    slots = torch.arange(num_slots, dtype=current.dtype, device=device)[:, None]  # [M, 1]
    origin = torch.arange(num_slots, device=device)[:, None].expand(num_slots, num_columns).contiguous()  # [M, A] slot of each entry
    columns = torch.arange(num_columns, device=device)  # [A]
    # Every step's temporaries go to these, not to new tensors: allocating them is
    # slower than the arithmetic.
    scratch = [torch.empty(num_slots * num_columns, dtype=current.dtype, device=device) for _ in range(3)]
    # A decay exp(-tiou^2 / sigma) underflows to 0 for sigma below about 0.01, and a dead
    # slot's -inf * 0 is NaN, which must not be taken for a maximum: then dead slots are
    # reset to -inf after every decay.
    underflows = method == "soft" and bool(torch.tensor(-1.0 / sigma, dtype=current.dtype).exp() == 0)
    inverse = _exact_negated_inverse(sigma)
    score_when_kept = current.new_full((num_slots * num_columns,), -torch.inf)  # [M * A] the flattened block
    active, stale = num_columns, True
    for k in range(min(num_slots, cap)):
        if k % _COMPACT_EVERY == 0 and k > 0:
            # Kept and dropped detections only cost work from here on: move each column's
            # live ones up, in order (ties still go to the one given first), and cut the
            # rows no column needs any more. Only the active columns: the rest hold none,
            # and the compaction leaves them out of the tables.
            live_cur, live_start, live_end, live_length, live_origin = (
                t[:, :active] for t in (current, start, end, length, origin)
            )
            current, start, end, length, origin = _compact(
                live_cur >= lowest, (live_cur, -torch.inf), (live_start, 0.0), (live_end, 0.0), (live_length, tiny),
                (live_origin, 0),
            )
            stale = True
        # Columns come by descending size, so those with more than k detections are a prefix.
        while sizes[active - 1] <= k:
            active, stale = active - 1, True
        if stale:
            height, width = current.shape
            # Views of the live part: the updates below land in the tables.
            cur, start_a, end_a, length_a, origin_a = (t[:, :active] for t in (current, start, end, length, origin))
            flat_tables = [t.view(-1) for t in (start, end, length, origin)]
            columns_a, slots_h = columns[:active], slots[:height]
            temp = [t[: height * active].view(height, active) for t in scratch]
            stale = False
        best = cur.amax(dim=0)  # [A]
        kept = best >= lowest  # [A] the column still had a detection
        if not bool(kept.any()):
            break
        row = _first_max_slot(cur, best, slots_h, out=temp[0])  # [A]
        flat = torch.add(columns_a, row, alpha=width)  # [A] index into the flattened tables
        pick_start, pick_end, pick_length, pick_slot = _take(flat, *flat_tables)
        # A column without a detection picks a dead slot, maybe one kept before: leave it.
        where = torch.add(columns_a, pick_slot, alpha=num_columns)
        score_when_kept.index_copy_(0, where, torch.where(kept, best, score_when_kept.index_select(0, where)))
        iou = _tiou(pick_start, pick_end, pick_length, start_a, end_a, length_a, out=temp[1:], positive_lengths=True)
        if method == "soft":
            exponent = iou.square_().div_(-sigma) if inverse is None else iou.square_().mul_(inverse)
            cur.mul_(exponent.exp_())
            if underflows:
                cur.nan_to_num_(nan=-torch.inf, neginf=-torch.inf)
        else:
            cur.masked_fill_(iou > iou_threshold, -torch.inf)
        current.view(-1).index_fill_(0, flat, -torch.inf)
    return score_when_kept.view(num_slots, num_columns)


def _exact_negated_inverse(sigma: float) -> float | None:
    """-1 / sigma where x * (-1 / sigma) equals x / -sigma for every float x (sigma a power
    of two that float32 holds, with its inverse: both are then the rounding of one real
    number), else None. On CPU a multiplication is about twice as fast as a division."""
    if math.frexp(sigma)[0] == 0.5 and 2.0**-100 < sigma < 2.0**100:
        return -1.0 / sigma
    return None


def _compact(live: Tensor, *tables: tuple[Tensor, float]) -> list[Tensor]:
    """Each (table [M, A], fill) with the live entries ([M, A] bool) of every column moved
    to its top, in order, and `fill` below them, cut to the fullest column -> [M', A]."""
    rank = torch.cumsum(live, dim=0)  # [M, A] live entries down to here
    height = max(int(rank[-1].max()), 1)
    target = torch.where(live, rank - 1, height)  # the dead all go to a spare row
    moved = []
    for table, fill in tables:
        out = table.new_full((height + 1, table.shape[1]), fill)
        moved.append(out.scatter_(0, target, table)[:height])
    return moved


def _first_max_slot(values: Tensor, best: Tensor, slots: Tensor, out: Tensor | None = None) -> Tensor:
    """The first slot holding each column's maximum: values [M, A], best [A] (their
    maximum), slots [M, 1] (0..M-1 as floats) -> [A] long; slot 0 for a column of -inf.

    What argmax(dim=0) says, but argmax over the rows is several times slower on CPU than
    these three vectorised passes: the key is the slot at a maximum and slot + M + 1
    below it, and its minimum is the first maximum."""
    below = torch.lt(values, best, out=out)  # [M, A] 1.0 below the maximum, else 0.0 (also where all are -inf)
    key = torch.add(slots, below, alpha=values.shape[0] + 1, out=below).amin(dim=0)  # [A]
    return key.long()


def _vote(
    kept_segments: Tensor,  # [K, 2]
    kept_columns: Tensor,  # [K] the column of each kept detection's group, -1 for none
    segments: Tensor,  # [N, 2] the candidates, placed by `layout`
    scores: Tensor,  # [N]
    layout: _Layout,
    iou_threshold: float,
) -> Tensor:  # [K, 2]
    """`score_voting` of kept detections against the candidates of their own group."""
    # [M, G + 1]; the last column is padding only, for a kept detection whose group has
    # no candidate, and padding has no vote.
    start, end, weight = (F.pad(_table(v, layout, 0.0), (0, 1)) for v in (segments[:, 0], segments[:, 1], scores))
    length = end - start
    columns = torch.where(kept_columns >= 0, kept_columns, start.shape[1] - 1)
    kept_start, kept_end = kept_segments[:, 0].contiguous(), kept_segments[:, 1].contiguous()
    kept_length = kept_end - kept_start
    refined = []
    chunk = max(1, _VOTE_CHUNK_PAIRS // max(1, start.shape[0]))
    for lo in range(0, columns.numel(), chunk):
        hi = lo + chunk
        cand_start, cand_end, cand_length, cand_weight = (t.index_select(1, columns[lo:hi]) for t in (start, end, length, weight))  # [M, C]
        iou = _tiou(kept_start[lo:hi], kept_end[lo:hi], kept_length[lo:hi], cand_start, cand_end, cand_length)
        # 1 where iou >= iou_threshold, else 0, in float arithmetic (on CPU a bool mask
        # and `where` cost several times more).
        votes = torch.sub(iou, iou_threshold).sign_().add_(1.0).clamp_(max=1.0)
        weights = iou.mul_(cand_weight).mul_(votes)  # [M, C]
        total = weights.sum(dim=0)  # [C]
        has_votes = total > 0
        voted = torch.stack([(weights * cand_start).sum(dim=0), (weights * cand_end).sum(dim=0)], dim=1)
        voted /= torch.where(has_votes, total, 1.0)[:, None]
        refined.append(torch.where(has_votes[:, None], voted, kept_segments[lo:hi]))
    return torch.cat(refined) if refined else kept_segments


def _tiou(
    a_start: Tensor, a_end: Tensor, a_length: Tensor, b_start: Tensor, b_end: Tensor, b_length: Tensor,
    out: Sequence[Tensor] | None = None,  # two tensors of the result's shape to compute in
    positive_lengths: bool = False,
) -> Tensor:
    """tIoU of segments a against segments b, any broadcastable shapes: the formula of
    geometry.pairwise_tiou (0 where the union is empty, which forces an empty
    intersection) without its fixed [N] x [M] layout.

    `positive_lengths=True` says every length is > 0, which spares the guard against an
    empty union: a + b - i is then positive in float arithmetic too, as the rounded
    a + b is at least the longer length, so at least the intersection i, and equals i
    only where a = b = i, when it is 2a; a difference of unequal floats is never 0."""
    inter, union = out if out is not None else (None, None)
    inter = torch.minimum(a_end, b_end, out=inter).sub_(torch.maximum(a_start, b_start, out=union)).clamp_(min=0)
    union = torch.add(a_length, b_length, out=union).sub_(inter)
    if not positive_lengths:
        union.clamp_(min=torch.finfo(inter.dtype).tiny)
    return inter.div_(union)


def _best_per_video(scores: Tensor, video: Tensor, num_videos: int, k: int) -> Tensor:
    """Positions of each video's k best detections, -inf scores left out: by video, then
    descending score, ties by position -> [K] long."""
    order = torch.argsort(_descending_key(scores), stable=True)
    rank = torch.arange(order.numel(), device=order.device)
    if num_videos > 1:
        order = order.index_select(0, torch.argsort(_small_ints(video.index_select(0, order), num_videos), stable=True))
        counts = torch.bincount(video, minlength=num_videos)  # [V]
        first = torch.cumsum(counts, dim=0) - counts  # [V] where each video starts in `order`
        rank -= first.index_select(0, video.index_select(0, order))
    return order.masked_select((rank < k) & (scores.index_select(0, order) > -torch.inf))


def _descending_key(scores: Tensor) -> Tensor:
    """Integers in ascending order where `scores` [N] are in descending order, equal where
    they are equal: CPUs sort integers several times faster than floats. A float's IEEE
    bits read as a signed integer order the floats >= 0 and reverse the negative ones."""
    bits = (scores + 0.0).view(torch.int32 if scores.element_size() == 4 else torch.int64)  # + 0.0: -0.0 is 0.0
    ascending = torch.where(bits < 0, bits ^ torch.iinfo(bits.dtype).max, bits)
    return ~ascending


def _take(index: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """The rows `index` of each tensor (index_select: several times faster than t[index]
    on CPU)."""
    return tuple(t.index_select(0, index) for t in tensors)


def _group_ids(video: Tensor, labels: Tensor, num_videos: int, class_agnostic: bool) -> tuple[Tensor, int]:
    """Group of each detection [N] (one per video and class, or per video), and the
    number of groups."""
    if class_agnostic:
        return video, num_videos
    low, high = (int(x) for x in torch.aminmax(labels))
    if num_videos * (high - low + 1) <= labels.numel():
        # Class indices are usually 0..C-1: offsetting them is exact and much cheaper than
        # unique; a group without detections costs nothing in `_layout`.
        label_index, num_classes = labels.long() - low, high - low + 1
    else:
        classes, label_index = torch.unique(labels, return_inverse=True)
        num_classes = classes.numel()
    return video * num_classes + label_index, num_videos * num_classes


def _layout(groups: Tensor, num_groups: int) -> _Layout:
    """Place detections of groups [N] (0..num_groups-1) in the table of `_suppress`."""
    sizes, by_size = torch.sort(torch.bincount(groups, minlength=num_groups), descending=True, stable=True)
    sizes = sizes[sizes > 0]
    column_of_group = torch.full_like(by_size, -1)
    column_of_group[by_size[: sizes.numel()]] = torch.arange(sizes.numel(), device=groups.device)
    column = column_of_group.index_select(0, groups)  # [N]
    # By column, input order inside one.
    num_columns = sizes.numel()
    order = torch.argsort(_small_ints(column, num_columns), stable=True)
    # In that order position p holds column c's detection of rank p - first[c], whose
    # flat place is (p - first[c]) * G + c = p * G - (first[c] * G - c).
    first = torch.cumsum(sizes, dim=0) - sizes  # [G] position of each column's first
    offset = torch.repeat_interleave(first * num_columns - torch.arange(num_columns, device=groups.device), sizes)
    flat_in_order = torch.arange(column.numel(), device=groups.device).mul_(num_columns).sub_(offset)
    flat = torch.empty_like(column).index_copy_(0, order, flat_in_order)
    return _Layout(column, flat, column_of_group, sizes.tolist())


def _small_ints(values: Tensor, bound: int) -> Tensor:
    """Integers in [0, bound) in the narrowest of int16 / int32 / int64 that holds them:
    PyTorch's stable sort of integers on CPU takes time in proportion to their width
    (400,000 keys, one thread: int16 2.6 ms, int32 5.1 ms, int64 11.0 ms)."""
    for dtype in (torch.int16, torch.int32):
        if bound <= torch.iinfo(dtype).max + 1:
            return values.to(dtype)
    return values.long()


def _table(values: Tensor, layout: _Layout, fill: float) -> Tensor:
    """Per-detection values [N] placed in the [M, G] table, `fill` in padding slots."""
    shape = (layout.sizes[0] if layout.sizes else 0, len(layout.sizes))
    table = values.new_full(shape, fill)
    table.view(-1).index_copy_(0, layout.flat, values)
    return table


def _cap(max_segments: int | None, n: int) -> int:
    if max_segments is None:
        return n
    if max_segments < 0:
        raise ValueError(f"max_segments must be >= 0 or None, got {max_segments!r}")
    return min(max_segments, n)


def _as_work(segments: Tensor, scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Check the shapes of one set of detections and promote segments and scores to a
    common floating dtype of at least float32."""
    if segments.ndim != 2 or segments.shape[1] != 2:
        raise ValueError(f"segments must be [N, 2] (start, end), got shape {tuple(segments.shape)}")
    n = segments.shape[0]
    if tuple(scores.shape) != (n,):
        raise ValueError(f"scores must be [N] = [{n}] to match segments, got shape {tuple(scores.shape)}")
    if tuple(labels.shape) != (n,):
        raise ValueError(f"labels must be [N] = [{n}] to match segments, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    dtype = torch.promote_types(torch.promote_types(segments.dtype, scores.dtype), torch.float32)
    segments, scores = segments.to(dtype), scores.to(dtype)
    # -inf marks a dead slot in `_suppress`, whose arithmetic an infinite score would
    # break (inf - inf is NaN), and a NaN never equals the running maximum.
    if not (bool(torch.isfinite(scores).all()) and bool(torch.isfinite(segments).all())):
        raise ValueError("segments and scores must be finite (no NaN or inf)")
    return segments, scores
