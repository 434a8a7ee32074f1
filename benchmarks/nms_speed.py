"""Soft-NMS speed: the post-processing before and after batching it over classes and
videos, and ActionFormer's C++ Soft-NMS.

    python benchmarks/nms_speed.py [--actionformer DIR] [--repeats 3] [--threads 1]

Workload (seeded): 200 videos of 120-300 s with 2,000 candidates each: start uniform in
the video, length log-uniform in [1, 55] s cut at the video's end, score uniform in
[0.001, 1), label uniform over 20 classes; float32. (The scores are above the 0.001
threshold the post-processing applied before; that threshold and the top-k now belong to
the head's decoding, so both versions see the same candidates.) Settings: ActionFormer's THUMOS-14
test_cfg, which are PostprocessConfig()'s defaults: class-wise Gaussian Soft-NMS with
sigma 0.5 and min_score 0.001, at most 200 segments per video, voting at tIoU 0.7.

Timed, interleaved over the repeats (min and median reported), on CPU:
  * before postprocess: the post-processing as it was before batching, a private copy
    below (`_before_*`, src/e2etal/postprocess.py at 2cdc314), called once per video as
    the detector called it: filter, top-k, clip, Soft-NMS, top 200, voting.
  * now postprocess_videos: the same chain on all the videos at once.
  * before soft_nms: the Soft-NMS step alone, `_before_soft_nms` once per video, every
    candidate in, every kept detection out (max_segments=None), class-wise.
  * now soft_nms: the same step once on all the videos (label = video * classes + class,
    so that a group is one class of one video), max_segments=None.
  * actionformer batched_nms: ActionFormer's libs/utils/nms.py, imported from DIR, called
    once per video as its meta_archs does: per class its C++ Soft-NMS, then the video's
    top 200. No voting (it votes only class-agnostic) and no filtering (ActionFormer does
    that before), so it is compared with both the chain and the step.
  * actionformer kernel: only the C++ calls, nms_1d_cpu.softnms on each (video, class),
    the inputs split beforehand: a lower bound on any use of it from Python.
"x now": the method's time over now's (postprocess_videos for the chain, soft_nms for
the step) in the same round, median over the rounds.

Checks (printed in the JSON): now against before, per video, full chain and Soft-NMS step
(same detections in the same order; max abs difference of segments and scores), and now's
Soft-NMS step against ActionFormer's (batched_nms with no cap), per (video, class): same
set of kept segments, max abs difference of the decayed scores.

How ActionFormer's Soft-NMS (nms_cpu.cpp, softnms_1d_cpu, method 2) relates to ours:
  * Same greedy: take the remaining detection of highest score, multiply every remaining
    score of its class by exp(-tiou^2 / sigma). iou_threshold is unused by both.
  * tIoU: theirs inter / (len_a + len_b + 2e-6 - inter) (1e-6 added to every length);
    ours inter / (len_a + len_b - inter), 0 where the union is empty. The tIoU moves by
    about 2e-6 s / union (1e-6 for 2 s segments), the decayed scores here by up to ~2e-5.
  * min_score: both drop a detection once its decayed score is below min_score (theirs
    `sc < min_score`, ours keeps `>= min_score`). Theirs tests only decayed scores: a
    candidate below min_score goes at the first decay, but a class's first pick is never
    tested, so a class whose scores are all below min_score keeps one detection; ours
    drops candidates below min_score before the first pick. (Here about 0.1% of the
    scores are below 0.001, never a class's best.)
  * Ties: theirs takes the first maximum of its working array, whose order its swaps
    change; ours the detection given first. Only exactly equal decayed scores differ.
  * Output: theirs runs each class to the end and batched_nms cuts each class, then each
    video (after an unstable sort), to max_seg_num; ours stops a class after
    max_segments picks, which are the same first picks.
  * float32 only (data_ptr<float>); std::exp where ours uses torch.exp.
The extension is compiled from DIR/libs/utils/csrc/nms_cpu.cpp at run time by
torch.utils.cpp_extension.load, with the flags its setup.py build gets (-O3 -DNDEBUG
-fopenmp; load adds no optimisation flag of its own). Nothing of ActionFormer lives in
this repository.

Prints one JSON object, then a short table. CPU figures move with other load on the
machine: compare columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from e2etal.geometry import clip_segments, pairwise_tiou, paired_tiou, segment_lengths
from e2etal.machine import describe_cpu
from e2etal.postprocess import PostprocessConfig, postprocess_videos, soft_nms

# ---------------------------------------------------------------- before: a private copy
# of src/e2etal/postprocess.py at 2cdc314 (the functions below PostprocessConfig), names
# prefixed with _before_; as it was, one video per call.


_BEFORE_PRE_NMS_THRESHOLD = 0.001  # PostprocessConfig's pre_nms_threshold and pre_nms_topk
_BEFORE_PRE_NMS_TOPK = 2000  # at 2cdc314, since moved to the head's decoding


def _before_postprocess(
    segments: Tensor,  # [N, 2] (start, end), seconds
    scores: Tensor,  # [N]
    labels: Tensor,  # [N] class index
    cfg: PostprocessConfig,
    duration_s: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # [K, 2], [K], [K], K <= cfg.max_segments
    """The whole chain a detection head runs on one video's candidates.

    Drop scores below the pre-NMS threshold, keep the pre-NMS top k, clip to
    [0, duration_s] when the duration is known, drop segments of non-positive length,
    then NMS / Soft-NMS / nothing, the `max_segments` best by descending score, and
    optional score voting of those against all the surviving candidates."""
    segments, scores = _before_as_work(segments, scores, labels)
    keep = scores >= _BEFORE_PRE_NMS_THRESHOLD
    segments, scores, labels = _before_top_k(segments[keep], scores[keep], labels[keep], _BEFORE_PRE_NMS_TOPK)
    if duration_s is not None:
        segments = clip_segments(segments, duration_s)
    # A zero-length segment can match nothing and would only take a slot in the output.
    keep = segment_lengths(segments) > 0
    segments, scores, labels = segments[keep], scores[keep], labels[keep]

    if cfg.method == "hard":
        idx = _before_nms(segments, scores, labels, cfg.iou_threshold, cfg.class_agnostic, cfg.max_segments)
        out_segments, out_scores, out_labels = segments[idx], scores[idx], labels[idx]
    elif cfg.method == "soft":
        out_segments, out_scores, out_labels = _before_soft_nms(
            segments, scores, labels, cfg.sigma, cfg.min_score, cfg.class_agnostic, cfg.max_segments
        )
    else:
        out_segments, out_scores, out_labels = segments, scores, labels
    # Voting moves boundaries but not scores, so cutting to max_segments first is exact
    # and spares voting for detections that would be cut anyway.
    out_segments, out_scores, out_labels = _before_top_k(out_segments, out_scores, out_labels, cfg.max_segments)

    if cfg.voting_iou is not None:
        out_segments = _before_score_voting(
            out_segments, out_scores, out_labels, segments, scores, labels, cfg.voting_iou, cfg.class_agnostic
        )
    return out_segments, out_scores, out_labels


def _before_nms(
    segments: Tensor,  # [N, 2]
    scores: Tensor,  # [N]
    labels: Tensor,  # [N]
    iou_threshold: float,
    class_agnostic: bool = False,
    max_segments: int | None = None,
) -> Tensor:  # [K] long, indices into the inputs, descending score
    """Greedy (hard) NMS: the best remaining detection is kept and every remaining one of
    its class whose tIoU with it exceeds `iou_threshold` (strictly) is discarded."""
    segments, scores = _before_as_work(segments, scores, labels)
    n = scores.numel()
    cap = _before_cap(max_segments, n)
    if n == 0 or cap == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    groups, num_groups = _before_groups(labels, class_agnostic)
    alive = torch.ones(n, dtype=torch.bool, device=scores.device)  # [N] neither kept nor suppressed
    kept_per_group = torch.zeros(num_groups, dtype=torch.long, device=scores.device)  # [G]
    kept = []
    while True:
        pick = _before_best_per_group(scores, alive, groups, num_groups)  # [G], n where none
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
    return kept[_before_ranking(kept, scores[kept])][:cap]


def _before_soft_nms(
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
    segments, scores = _before_as_work(segments, scores, labels)
    kept, kept_scores = _before_soft_nms_indices(segments, scores, labels, sigma, min_score, class_agnostic, max_segments)
    return segments[kept], kept_scores, labels[kept]


def _before_score_voting(
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
    kept_segments, kept_scores = _before_as_work(kept_segments, kept_scores, kept_labels)
    all_segments, all_scores = _before_as_work(all_segments, all_scores, all_labels)
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


def _before_top_k(
    segments: Tensor,  # [N, 2]
    scores: Tensor,  # [N]
    labels: Tensor,  # [N]
    k: int,
) -> tuple[Tensor, Tensor, Tensor]:  # [min(k, N), 2], [min(k, N)], [min(k, N)]; descending score
    """The k best detections by score (ties: the one given first), best first."""
    if k < 0:
        raise ValueError(f"top_k: k must be >= 0, got {k!r}")
    segments, scores = _before_as_work(segments, scores, labels)
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return segments[order], scores[order], labels[order]


def _before_soft_nms_indices(segments, scores, labels, sigma, min_score, class_agnostic, max_segments) -> tuple[Tensor, Tensor]:
    """Soft-NMS on work tensors -> kept indices [K] and their decayed scores [K], ranked."""
    n = scores.numel()
    cap = _before_cap(max_segments, n)
    if n == 0 or cap == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device), scores[:0]
    groups, num_groups = _before_groups(labels, class_agnostic)
    current = scores.clone()  # [N] decayed so far
    alive = current >= min_score  # [N] neither kept nor dropped
    kept_per_group = torch.zeros(num_groups, dtype=torch.long, device=scores.device)  # [G]
    kept, kept_scores = [], []
    while True:
        pick = _before_best_per_group(current, alive, groups, num_groups)  # [G], n where none
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
    order = _before_ranking(kept, kept_scores)[:cap]
    return kept[order], kept_scores[order]


def _before_best_per_group(score: Tensor, alive: Tensor, groups: Tensor, num_groups: int) -> Tensor:
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


def _before_ranking(index: Tensor, score: Tensor) -> Tensor:
    """Permutation of `index` [K] (distinct) putting scores descending, ties by index."""
    by_index = torch.argsort(index)
    return by_index[torch.sort(score[by_index], descending=True, stable=True).indices]


def _before_groups(labels: Tensor, class_agnostic: bool) -> tuple[Tensor, int]:
    """Contiguous group id [N] of each detection, and the number of groups."""
    if class_agnostic:
        return torch.zeros(labels.shape[0], dtype=torch.long, device=labels.device), 1
    unique, groups = torch.unique(labels, return_inverse=True)
    return groups, unique.numel()


def _before_cap(max_segments: int | None, n: int) -> int:
    if max_segments is None:
        return n
    if max_segments < 0:
        raise ValueError(f"max_segments must be >= 0 or None, got {max_segments!r}")
    return min(max_segments, n)


def _before_as_work(segments: Tensor, scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
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


# ---------------------------------------------------------------- workload


def make_videos(num_videos: int, candidates: int, classes: int, seed: int) -> tuple[list[tuple[Tensor, Tensor, Tensor]], list[float]]:
    g = torch.Generator().manual_seed(seed)
    videos, durations_s = [], []
    for _ in range(num_videos):
        duration_s = float(torch.empty(1).uniform_(120.0, 300.0, generator=g))
        start_s = torch.rand(candidates, generator=g) * duration_s
        length_s = torch.exp(torch.empty(candidates).uniform_(0.0, 4.0, generator=g))  # 1 to 55 s
        end_s = torch.clamp(start_s + length_s, max=duration_s)
        scores = 0.001 + 0.999 * torch.rand(candidates, generator=g)  # above the old pre-NMS threshold
        labels = torch.randint(0, classes, (candidates,), generator=g)
        videos.append((torch.stack([start_s, end_s], dim=1), scores, labels))
        durations_s.append(duration_s)
    return videos, durations_s


# ---------------------------------------------------------------- ActionFormer


def load_actionformer(root: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """ActionFormer's compiled nms_1d_cpu and its libs/utils/nms.py, from the checkout at `root`."""
    from torch.utils.cpp_extension import load

    source = root / "libs" / "utils" / "csrc" / "nms_cpu.cpp"
    if not source.is_file():
        raise SystemExit(f"nms_speed.py: --actionformer {root}: no {source.relative_to(root)}")
    # The flags its setup.py build gets: Python's -O3 -DNDEBUG, and its own -fopenmp.
    ext = load(name="nms_1d_cpu", sources=[str(source)], extra_cflags=["-O3", "-DNDEBUG", "-fopenmp"])
    sys.modules["nms_1d_cpu"] = ext  # the name nms.py imports
    spec = importlib.util.spec_from_file_location("actionformer_nms", root / "libs" / "utils" / "nms.py")
    nms_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nms_py)
    return ext, nms_py


# ---------------------------------------------------------------- checks


def compare_per_video(a: list[tuple[Tensor, Tensor, Tensor]], b: list[tuple[Tensor, Tensor, Tensor]]) -> dict:
    """Same number of detections and labels in the same order, and how far segments and scores are."""
    same = all(x[2].shape == y[2].shape and torch.equal(x[2], y[2]) for x, y in zip(a, b))
    seg = max((float((x[0] - y[0]).abs().max()) for x, y in zip(a, b) if x[0].numel() and same), default=0.0)
    score = max((float((x[1] - y[1]).abs().max()) for x, y in zip(a, b) if x[1].numel() and same), default=0.0)
    return {"same_labels_in_same_order": same, "max_abs_diff_segments_s": seg, "max_abs_diff_scores": score}


def compare_kept_sets(ours: list[tuple[Tensor, Tensor, Tensor]], theirs: list[tuple[Tensor, Tensor, Tensor]]) -> dict:
    """Per (video, class): the same kept segments? Max abs difference of matched scores."""
    groups = differing = 0
    diff = 0.0
    for a, b in zip(ours, theirs):
        kept_a, kept_b = kept_by_class(a), kept_by_class(b)
        for c in kept_a.keys() | kept_b.keys():
            seg_a, seg_b = kept_a.get(c, {}), kept_b.get(c, {})
            groups += 1
            differing += seg_a.keys() != seg_b.keys()
            diff = max([diff] + [abs(seg_a[k] - seg_b[k]) for k in seg_a.keys() & seg_b.keys()])
    return {"groups": groups, "groups_with_other_kept_segments": differing, "max_abs_diff_scores": diff}


def kept_by_class(detections: tuple[Tensor, Tensor, Tensor]) -> dict[int, dict[tuple[float, float], float]]:
    out: dict[int, dict[tuple[float, float], float]] = {}
    for (start, end), score, label in zip(*(t.tolist() for t in detections)):
        out.setdefault(label, {})[(start, end)] = score
    return out


# ---------------------------------------------------------------- main


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--actionformer", type=Path, help="a checkout of happyharrycn/actionformer_release")
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--candidates", type=int, default=2000, help="per video")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (ActionFormer's kernel uses one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = PostprocessConfig()  # ActionFormer's THUMOS-14 test_cfg
    videos, durations_s = make_videos(args.videos, args.candidates, args.classes, args.seed)
    # The Soft-NMS step on all videos at once: one group per class of each video.
    all_segments = torch.cat([v[0] for v in videos])
    all_scores = torch.cat([v[1] for v in videos])
    all_groups = torch.cat([v[2] + i * args.classes for i, v in enumerate(videos)])

    methods: dict[str, Callable[[], object]] = {
        "before postprocess": lambda: [_before_postprocess(s, p, c, cfg, d) for (s, p, c), d in zip(videos, durations_s)],
        "now postprocess_videos": lambda: postprocess_videos(videos, cfg, durations_s),
        "before soft_nms": lambda: [_before_soft_nms(s, p, c, cfg.sigma, cfg.min_score) for s, p, c in videos],
        "now soft_nms": lambda: soft_nms(all_segments, all_scores, all_groups, cfg.sigma, cfg.min_score),
    }
    chain = ["before postprocess", "actionformer batched_nms"]  # compared with now postprocess_videos
    step = ["before soft_nms", "actionformer batched_nms", "actionformer kernel"]  # with now soft_nms
    source_sha = None
    if args.actionformer is not None:
        ext, af_nms = load_actionformer(args.actionformer)
        source_sha = hashlib.sha256((args.actionformer / "libs/utils/csrc/nms_cpu.cpp").read_bytes()).hexdigest()[:16]

        def actionformer(max_seg_num: int) -> list[tuple[Tensor, Tensor, Tensor]]:
            # meta_archs.py's call with test_cfg: iou_threshold 0.1, min_score 0.001,
            # use_soft_nms, multiclass_nms, sigma 0.5, voting_thresh 0.7.
            return [
                af_nms.batched_nms(
                    s, p, c, cfg.iou_threshold, cfg.min_score, max_seg_num, True, True, cfg.sigma, cfg.voting_iou
                )
                for s, p, c in videos
            ]

        per_class = [(s[c == k].contiguous(), p[c == k].contiguous()) for s, p, c in videos for k in torch.unique(c)]

        def kernel() -> None:
            for s, p in per_class:
                ext.softnms(s, p, s.new_empty((s.shape[0], 3)), cfg.iou_threshold, cfg.sigma, cfg.min_score, 2)

        methods["actionformer batched_nms"] = lambda: actionformer(cfg.max_segments)
        methods["actionformer kernel"] = kernel

    times: dict[str, list[float]] = {name: [] for name in methods}
    for round_ in range(args.warmup + args.repeats):
        for name, fn in methods.items():  # interleaved, so slow phases of the machine hit every method
            t = timed(fn)
            if round_ >= args.warmup:
                times[name].append(t)

    before_full, now_full = methods["before postprocess"](), methods["now postprocess_videos"]()
    now_step = split_by_video(methods["now soft_nms"](), args.classes, args.videos)
    checks = {
        "full_chain_now_vs_before": compare_per_video(now_full, before_full),
        "soft_nms_now_vs_before": compare_per_video(now_step, methods["before soft_nms"]()),
    }
    if args.actionformer is not None:
        theirs = actionformer(10**9)  # no cap: every kept detection of every class
        checks["soft_nms_now_vs_actionformer"] = compare_kept_sets(now_step, theirs)

    def ratio(name: str, now: str) -> float:
        return statistics.median(t / n for t, n in zip(times[name], times[now]))

    x_now = {
        "full_chain": {name: ratio(name, "now postprocess_videos") for name in chain if name in times},
        "soft_nms_step": {name: ratio(name, "now soft_nms") for name in step if name in times},
    }
    out = {
        "benchmark": "nms_speed",
        "machine": describe_cpu(),
        "torch_threads": torch.get_num_threads(),
        "videos": args.videos, "candidates_per_video": args.candidates, "classes": args.classes, "seed": args.seed,
        "config": asdict(cfg), "repeats": args.repeats, "warmup": args.warmup,
        "seconds": {name: {"min_s": min(ts), "median_s": statistics.median(ts)} for name, ts in times.items()},
        "x_now": x_now,
        "checks": checks,
        "actionformer_nms_cpu_sha256": source_sha,
        "torch": torch.__version__, "python": sys.version.split()[0],
    }
    print(json.dumps(out))
    print(f"\n{'method':<28}{'min s':>9}{'median s':>10}{'x now chain':>13}{'x now step':>12}")
    for name, ts in times.items():
        chain_x = f"{x_now['full_chain'][name]:.2f}" if name in x_now["full_chain"] else ""
        step_x = f"{x_now['soft_nms_step'][name]:.2f}" if name in x_now["soft_nms_step"] else ""
        print(f"{name:<28}{min(ts):>9.3f}{statistics.median(ts):>10.3f}{chain_x:>13}{step_x:>12}")
    print(f"{args.videos} videos x {args.candidates} candidates, {args.classes} classes; {out['torch_threads']} torch "
          f"thread(s); x now = time / now's in the same round (chain: postprocess_videos, step: soft_nms), "
          f"median over {args.repeats} rounds")


def split_by_video(detections: tuple[Tensor, Tensor, Tensor], classes: int, num_videos: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """soft_nms's output over all videos (labels video * classes + class) -> per video, in its order."""
    segments, scores, groups = detections
    video = groups // classes
    return [(segments[video == i], scores[video == i], groups[video == i] % classes) for i in range(num_videos)]


if __name__ == "__main__":
    main()
