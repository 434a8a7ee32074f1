"""From one video's raw detections to its final list: score filtering, NMS or Soft-NMS,
score voting, top-k. Plain PyTorch on the inputs' device; no compiled extension.

Rules every function here follows:

* Ranking is by descending score; of equal scores, the detection given first wins.
  Results come back in that order.
* Class-wise (the default) means only detections with the same label interact
  (suppress, decay, vote); `class_agnostic=True` lets every detection interact.
* Segments and scores are computed and returned in the inputs' floating dtype, promoted
  to at least float32 (Soft-NMS decays and voting averages lose too much in half
  precision). Labels keep their dtype.
* An empty input (N = 0) gives empty outputs of the usual shapes and dtypes.

Speed. Greedy NMS is sequential inside a class, but classes never interact in class-wise
mode, so every class advances at once: each step takes the best remaining detection of
every class and updates all detections in O(N). The loop runs over the number of
detections kept per class (at most `max_segments`), not over detections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from e2etal.geometry import clip_segments, pairwise_tiou, paired_tiou, segment_lengths

METHODS = ("soft", "hard", "none")


@dataclass
class PostprocessConfig:
    method: str = "soft"  # "soft" (Gaussian Soft-NMS), "hard" (NMS) or "none"
    iou_threshold: float = 0.1  # hard NMS: suppress overlaps above this tIoU
    sigma: float = 0.5  # Soft-NMS: score *= exp(-tiou^2 / sigma)
    min_score: float = 0.001  # Soft-NMS: drop detections decayed below this
    class_agnostic: bool = False
    voting_iou: float | None = 0.7  # None = no score voting
    pre_nms_topk: int = 2000
    pre_nms_threshold: float = 0.001
    max_segments: int = 200

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"PostprocessConfig.method must be one of {', '.join(map(repr, METHODS))}, got {self.method!r}")
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise ValueError(f"PostprocessConfig.iou_threshold must be in [0, 1], got {self.iou_threshold!r}")
        if not self.sigma > 0:
            raise ValueError(f"PostprocessConfig.sigma must be > 0, got {self.sigma!r}")
        if self.voting_iou is not None and not 0.0 <= self.voting_iou <= 1.0:
            raise ValueError(f"PostprocessConfig.voting_iou must be in [0, 1] or None, got {self.voting_iou!r}")
        for name in ("pre_nms_topk", "max_segments"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PostprocessConfig.{name} must be a positive integer, got {value!r}")


def postprocess(
    segments: Tensor,  # [N, 2] (start, end), seconds
    scores: Tensor,  # [N]
    labels: Tensor,  # [N] class index
    cfg: PostprocessConfig,
    duration_s: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # [K, 2], [K], [K], K <= cfg.max_segments
    """The whole chain a detection head runs on one video's candidates.

    Drop scores below `pre_nms_threshold`, keep the `pre_nms_topk` best, clip to
    [0, duration_s] when the duration is known, drop segments of non-positive length,
    then NMS / Soft-NMS / nothing, the `max_segments` best by descending score, and
    optional score voting of those against all the surviving candidates."""
    segments, scores = _as_work(segments, scores, labels)
    keep = scores >= cfg.pre_nms_threshold
    segments, scores, labels = top_k(segments[keep], scores[keep], labels[keep], cfg.pre_nms_topk)
    if duration_s is not None:
        segments = clip_segments(segments, duration_s)
    # A zero-length segment can match nothing and would only take a slot in the output.
    keep = segment_lengths(segments) > 0
    segments, scores, labels = segments[keep], scores[keep], labels[keep]

    if cfg.method == "hard":
        idx = nms(segments, scores, labels, cfg.iou_threshold, cfg.class_agnostic, cfg.max_segments)
        out_segments, out_scores, out_labels = segments[idx], scores[idx], labels[idx]
    elif cfg.method == "soft":
        out_segments, out_scores, out_labels = soft_nms(
            segments, scores, labels, cfg.sigma, cfg.min_score, cfg.class_agnostic, cfg.max_segments
        )
    else:
        out_segments, out_scores, out_labels = segments, scores, labels
    # Voting moves boundaries but not scores, so cutting to max_segments first is exact
    # and spares voting for detections that would be cut anyway.
    out_segments, out_scores, out_labels = top_k(out_segments, out_scores, out_labels, cfg.max_segments)

    if cfg.voting_iou is not None:
        out_segments = score_voting(
            out_segments, out_scores, out_labels, segments, scores, labels, cfg.voting_iou, cfg.class_agnostic
        )
    return out_segments, out_scores, out_labels


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
    n = scores.numel()
    cap = _cap(max_segments, n)
    if n == 0 or cap == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    groups, num_groups = _groups(labels, class_agnostic)
    alive = torch.ones(n, dtype=torch.bool, device=scores.device)  # [N] neither kept nor suppressed
    kept_per_group = torch.zeros(num_groups, dtype=torch.long, device=scores.device)  # [G]
    kept = []
    while True:
        pick = _best_per_group(scores, alive, groups, num_groups)  # [G], n where none
        has_pick = pick < n  # [G]
        if not bool(has_pick.any()):
            break
        kept.append(pick[has_pick])
        alive[pick[has_pick]] = False
        iou = paired_tiou(segments[pick.clamp(max=n - 1)[groups]], segments)  # [N] vs own group's pick
        alive &= ~(has_pick[groups] & (iou > iou_threshold))
        kept_per_group += has_pick
        alive &= kept_per_group[groups] < cap
    kept = torch.cat(kept)
    return kept[_ranking(kept, scores[kept])][:cap]


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
    kept, kept_scores = _soft_nms_indices(segments, scores, labels, sigma, min_score, class_agnostic, max_segments)
    return segments[kept], kept_scores, labels[kept]


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

    iou = pairwise_tiou(kept_segments, all_segments)  # [K, N]
    votes = iou >= iou_threshold
    if not class_agnostic:
        votes &= kept_labels[:, None] == all_labels[None, :]
    weights = torch.where(votes, iou * all_scores[None, :], torch.zeros_like(iou))  # [K, N]
    total = weights.sum(dim=1, keepdim=True)  # [K, 1]
    has_votes = total > 0
    refined = (weights @ all_segments) / torch.where(has_votes, total, torch.ones_like(total))  # [K, 2]
    return torch.where(has_votes, refined, kept_segments)


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


def _soft_nms_indices(segments, scores, labels, sigma, min_score, class_agnostic, max_segments) -> tuple[Tensor, Tensor]:
    """Soft-NMS on work tensors -> kept indices [K] and their decayed scores [K], ranked."""
    n = scores.numel()
    cap = _cap(max_segments, n)
    if n == 0 or cap == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device), scores[:0]
    groups, num_groups = _groups(labels, class_agnostic)
    current = scores.clone()  # [N] decayed so far
    alive = current >= min_score  # [N] neither kept nor dropped
    kept_per_group = torch.zeros(num_groups, dtype=torch.long, device=scores.device)  # [G]
    kept, kept_scores = [], []
    while True:
        pick = _best_per_group(current, alive, groups, num_groups)  # [G], n where none
        has_pick = pick < n  # [G]
        if not bool(has_pick.any()):
            break
        kept.append(pick[has_pick])
        kept_scores.append(current[pick[has_pick]])
        alive[pick[has_pick]] = False
        iou = paired_tiou(segments[pick.clamp(max=n - 1)[groups]], segments)  # [N] vs own group's pick
        decayed = alive & has_pick[groups]
        current = torch.where(decayed, current * torch.exp(-iou.square() / sigma), current)
        alive &= current >= min_score
        kept_per_group += has_pick
        alive &= kept_per_group[groups] < cap
    if not kept:
        return torch.zeros(0, dtype=torch.long, device=scores.device), scores[:0]
    kept, kept_scores = torch.cat(kept), torch.cat(kept_scores)
    # Inside one class this ranking is the order of selection (a later pick can tie an
    # earlier one only if it came later in the input), so capping each class at `cap`
    # above loses nothing of the global top `cap`.
    order = _ranking(kept, kept_scores)[:cap]
    return kept[order], kept_scores[order]


def _best_per_group(score: Tensor, alive: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """Index of the best alive detection of each group ([G]; N where the group has none),
    ties to the lowest index."""
    n = score.numel()
    masked = torch.where(alive, score, torch.full_like(score, -torch.inf))  # [N]
    best = torch.full((num_groups,), -torch.inf, dtype=score.dtype, device=score.device)
    best = best.scatter_reduce(0, groups, masked, reduce="amax")  # [G]
    index = torch.arange(n, device=score.device)
    candidate = torch.where(alive & (masked == best[groups]), index, torch.full_like(index, n))  # [N]
    first = torch.full((num_groups,), n, dtype=torch.long, device=score.device)
    return first.scatter_reduce(0, groups, candidate, reduce="amin")


def _ranking(index: Tensor, score: Tensor) -> Tensor:
    """Permutation of `index` [K] (distinct) putting scores descending, ties by index."""
    by_index = torch.argsort(index)
    return by_index[torch.sort(score[by_index], descending=True, stable=True).indices]


def _groups(labels: Tensor, class_agnostic: bool) -> tuple[Tensor, int]:
    """Contiguous group id [N] of each detection, and the number of groups."""
    if class_agnostic:
        return torch.zeros(labels.shape[0], dtype=torch.long, device=labels.device), 1
    unique, groups = torch.unique(labels, return_inverse=True)
    return groups, unique.numel()


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
    # A NaN never equals the running maximum, so it would never be picked nor dropped.
    if bool(torch.isnan(scores).any()) or bool(torch.isnan(segments).any()):
        raise ValueError("segments and scores must not contain NaN")
    return segments, scores
