"""Post-processing against plain Python reference loops, plus hand-checked cases.

The references below are written for obviousness, not speed: one detection at a time,
Python floats, the textbook definition of each algorithm."""

from __future__ import annotations

import math

import pytest
import torch

import e2etal.postprocess as postprocess_module
from e2etal.geometry import clip_segments, paired_tiou, pairwise_tiou, segment_lengths
from e2etal.postprocess import PostprocessConfig, nms, postprocess, postprocess_videos, score_voting, soft_nms, top_k

SEEDS = range(6)


# ---------------------------------------------------------------- references


def ref_tiou(a, b) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def ref_rank(scores) -> list[int]:
    """Descending score, ties: earlier first."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def ref_nms(segs, scores, labels, thr, agnostic) -> list[int]:
    kept = []
    for i in ref_rank(scores):
        if not any((agnostic or labels[j] == labels[i]) and ref_tiou(segs[i], segs[j]) > thr for j in kept):
            kept.append(i)
    return kept


def ref_soft_nms(segs, scores, labels, sigma, min_score, agnostic) -> list[tuple[int, float]]:
    remaining = {i: s for i, s in enumerate(scores) if s >= min_score}
    kept = []
    while remaining:
        best = min(remaining, key=lambda i: (-remaining[i], i))
        kept.append((best, remaining.pop(best)))
        for j in list(remaining):
            if agnostic or labels[j] == labels[best]:
                remaining[j] *= math.exp(-(ref_tiou(segs[best], segs[j]) ** 2) / sigma)
                if remaining[j] < min_score:
                    del remaining[j]
    return sorted(kept, key=lambda t: (-t[1], t[0]))


def ref_voting(kept_segs, kept_labels, segs, scores, labels, thr, agnostic) -> list[tuple[float, float]]:
    out = []
    for seg, lab in zip(kept_segs, kept_labels):
        num_start = num_end = den = 0.0
        for other, score, other_lab in zip(segs, scores, labels):
            iou = ref_tiou(seg, other)
            if (agnostic or other_lab == lab) and iou >= thr:
                num_start += iou * score * other[0]
                num_end += iou * score * other[1]
                den += iou * score
        out.append((num_start / den, num_end / den) if den > 0 else tuple(seg))
    return out


def ref_postprocess(segs, scores, labels, cfg: PostprocessConfig, duration_s):
    high = math.inf if duration_s is None else duration_s
    dets = [((min(max(s[0], 0.0), high), min(max(s[1], 0.0), high)), sc, lab) for s, sc, lab in zip(segs, scores, labels)]
    dets = [d for d in dets if d[0][1] - d[0][0] > 0]
    segs, scores, labels = [d[0] for d in dets], [d[1] for d in dets], [d[2] for d in dets]
    if cfg.method == "hard":
        out = [(segs[i], scores[i], labels[i]) for i in ref_nms(segs, scores, labels, cfg.iou_threshold, cfg.class_agnostic)]
    elif cfg.method == "soft":
        out = [(segs[i], s, labels[i]) for i, s in ref_soft_nms(segs, scores, labels, cfg.sigma, cfg.min_score, cfg.class_agnostic)]
    else:
        out = list(zip(segs, scores, labels))
    if cfg.voting_iou is not None:
        voted = ref_voting([o[0] for o in out], [o[2] for o in out], segs, scores, labels, cfg.voting_iou, cfg.class_agnostic)
        out = [((min(max(v[0], 0.0), high), min(max(v[1], 0.0), high)), o[1], o[2]) for v, o in zip(voted, out)]
    out = [out[i] for i in ref_rank([o[1] for o in out])][: cfg.max_segments]
    return out


def random_detections(seed: int, n: int = 60, num_classes: int = 3, coarse: bool = True):
    """Segments on a half-second grid (identical segments, exact tIoUs) and, if coarse,
    scores on a 0.1 grid (many ties)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(-4, 40, (n,), generator=g).double() / 2
    length = torch.randint(1, 20, (n,), generator=g).double() / 2
    if coarse:
        scores = torch.randint(1, 11, (n,), generator=g).double() / 10
    else:
        scores = torch.rand(n, generator=g, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return torch.stack([start, start + length], dim=1), scores, labels


def as_lists(segments, scores, labels):
    return [tuple(s) for s in segments.tolist()], scores.tolist(), labels.tolist()


# ---------------------------------------------------------------- geometry


def test_tiou_hand_values():
    a = torch.tensor([[0.0, 10.0]])
    b = torch.tensor([[5.0, 15.0], [0.0, 10.0], [10.0, 20.0], [2.0, 4.0], [-5.0, 30.0], [20.0, 25.0]])
    expected = torch.tensor([[1 / 3, 1.0, 0.0, 0.2, 10 / 35, 0.0]])
    torch.testing.assert_close(pairwise_tiou(a, b), expected)


def test_tiou_symmetric_identity_disjoint_and_points():
    segs, _, _ = random_detections(0, n=30)
    iou = pairwise_tiou(segs, segs)
    torch.testing.assert_close(iou, iou.T)
    torch.testing.assert_close(torch.diagonal(iou), torch.ones(30, dtype=torch.float64))
    assert bool(((iou >= 0) & (iou <= 1)).all())
    disjoint = pairwise_tiou(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.tensor([[1.5, 1.8], [5.0, 6.0]]))
    assert bool((disjoint == 0).all())
    # Points never overlap anything, not even themselves (no 0/0).
    points = torch.tensor([[3.0, 3.0], [0.0, 5.0]])
    torch.testing.assert_close(pairwise_tiou(points, points), torch.tensor([[0.0, 0.0], [0.0, 1.0]]))


@pytest.mark.parametrize("seed", SEEDS)
def test_tiou_matches_reference(seed):
    a, _, _ = random_detections(seed, n=25)
    b, _, _ = random_detections(seed + 100, n=17)
    expected = torch.tensor([[ref_tiou(x, y) for y in b.tolist()] for x in a.tolist()], dtype=torch.float64)
    torch.testing.assert_close(pairwise_tiou(a, b), expected)
    torch.testing.assert_close(paired_tiou(a[:17], b), torch.diagonal(expected[:17]))


def test_geometry_empty_and_helpers():
    empty = torch.zeros(0, 2)
    assert pairwise_tiou(empty, torch.ones(3, 2)).shape == (0, 3)
    assert pairwise_tiou(torch.ones(3, 2), empty).shape == (3, 0)
    assert paired_tiou(empty, empty).shape == (0,)
    clipped = clip_segments(torch.tensor([[-2.0, 3.0], [8.0, 12.0], [11.0, 13.0]]), 10.0)
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 3.0], [8.0, 10.0], [10.0, 10.0]]))
    torch.testing.assert_close(segment_lengths(clipped), torch.tensor([3.0, 2.0, 0.0]))


# ---------------------------------------------------------------- hard NMS


def test_nms_two_overlapping_segments():
    segs = torch.tensor([[0.0, 10.0], [5.0, 15.0]])  # tIoU 1/3
    scores = torch.tensor([0.8, 0.9])
    same, other = torch.tensor([0, 0]), torch.tensor([0, 1])
    assert nms(segs, scores, same, 0.3).tolist() == [1]
    assert nms(segs, scores, same, 0.5).tolist() == [1, 0]
    assert nms(segs, scores, other, 0.3).tolist() == [1, 0]
    assert nms(segs, scores, other, 0.3, class_agnostic=True).tolist() == [1]
    # Suppression is strict: a tIoU equal to the threshold survives.
    half = torch.tensor([[0.0, 10.0], [0.0, 5.0]])  # tIoU 0.5
    assert nms(half, scores, same, 0.5).tolist() == [1, 0]
    assert nms(half, scores, same, 0.49).tolist() == [1]


def test_nms_ties_keep_the_earlier_detection():
    segs = torch.tensor([[0.0, 10.0], [20.0, 30.0], [0.0, 10.0]])
    scores = torch.tensor([0.5, 0.5, 0.5])
    assert nms(segs, scores, torch.zeros(3, dtype=torch.long), 0.5).tolist() == [0, 1]


def test_nms_chain_is_greedy_not_transitive():
    # A suppresses B, so B cannot suppress C even though B and C overlap.
    segs = torch.tensor([[0.0, 10.0], [4.0, 14.0], [8.0, 18.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(segs, scores, torch.zeros(3, dtype=torch.long), 0.3).tolist() == [0, 2]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.7])
def test_nms_matches_reference(seed, agnostic, thr):
    segs, scores, labels = random_detections(seed, coarse=seed % 2 == 0)
    expected = ref_nms(*as_lists(segs, scores, labels), thr, agnostic)
    assert nms(segs, scores, labels, thr, class_agnostic=agnostic).tolist() == expected
    assert nms(segs, scores, labels, thr, class_agnostic=agnostic, max_segments=5).tolist() == expected[:5]


# ---------------------------------------------------------------- Soft-NMS


def test_soft_nms_hand_values():
    segs = torch.tensor([[0.0, 10.0], [0.0, 10.0], [20.0, 30.0], [5.0, 15.0]])
    scores = torch.tensor([0.9, 0.85, 0.5, 0.4])
    labels = torch.zeros(4, dtype=torch.long)
    out_segs, out_scores, out_labels = soft_nms(segs, scores, labels, sigma=0.5, min_score=0.0)
    # [0,10] keeps 0.9 and decays its duplicate by exp(-1/0.5) (to 0.115) and [5,15]
    # (tIoU 1/3) by exp(-(1/9)/0.5) (to 0.32). [20,30] is untouched and comes next, then
    # [5,15], which decays the duplicate a second time.
    third = 0.4 * math.exp(-(1 / 9) / 0.5)
    dup = 0.85 * math.exp(-2.0) * math.exp(-(1 / 9) / 0.5)
    expected = [(0, 0.9), (2, 0.5), (3, third), (1, dup)]
    torch.testing.assert_close(out_scores, torch.tensor([s for _, s in expected]))
    torch.testing.assert_close(out_segs, segs[[i for i, _ in expected]])
    assert out_labels.tolist() == [0, 0, 0, 0]
    # The decayed duplicate (0.115) falls under min_score 0.2 and is dropped.
    _, kept_scores, _ = soft_nms(segs, scores, labels, sigma=0.5, min_score=0.2)
    torch.testing.assert_close(kept_scores, torch.tensor([0.9, 0.5, third]))
    # Other classes are not decayed unless class-agnostic.
    _, scores_cw, _ = soft_nms(segs, scores, torch.tensor([0, 1, 0, 0]), min_score=0.0)
    torch.testing.assert_close(scores_cw, torch.tensor([0.9, 0.85, 0.5, third]))


def test_soft_nms_drops_initial_scores_below_min_score():
    segs = torch.tensor([[0.0, 1.0], [5.0, 6.0]])
    _, scores, _ = soft_nms(segs, torch.tensor([0.5, 1e-4]), torch.tensor([0, 1]), min_score=1e-3)
    assert scores.tolist() == [0.5]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("sigma,min_score", [(0.5, 1e-3), (0.1, 0.05)])
def test_soft_nms_matches_reference(seed, agnostic, sigma, min_score):
    segs, scores, labels = random_detections(seed, coarse=seed % 2 == 0)
    expected = ref_soft_nms(*as_lists(segs, scores, labels), sigma, min_score, agnostic)
    for cap in (None, 7):
        out_segs, out_scores, out_labels = soft_nms(segs, scores, labels, sigma, min_score, agnostic, max_segments=cap)
        exp = expected if cap is None else expected[:cap]
        idx = [i for i, _ in exp]
        torch.testing.assert_close(out_scores, torch.tensor([s for _, s in exp], dtype=torch.float64))
        torch.testing.assert_close(out_segs, segs[idx])
        assert out_labels.tolist() == labels[idx].tolist()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("block_entries,compact_every", [(1 << 17, 32), (300, 3), (1, 1)])
def test_suppression_matches_reference_whatever_the_blocks_and_compaction(monkeypatch, seed, block_entries, compact_every):
    # Blocks of columns and compaction are tuning, not semantics: with one column per
    # block and a compaction at every step the results are the reference's still.
    monkeypatch.setattr(postprocess_module, "_BLOCK_ENTRIES", block_entries)
    monkeypatch.setattr(postprocess_module, "_COMPACT_EVERY", compact_every)
    segs, scores, labels = random_detections(seed, n=150, num_classes=7, coarse=seed % 2 == 0)
    lists = as_lists(segs, scores, labels)
    for agnostic in (False, True):
        for sigma, min_score in ((0.5, 1e-3), (0.2, 0.3)):
            expected = ref_soft_nms(*lists, sigma, min_score, agnostic)
            out_segs, out_scores, out_labels = soft_nms(segs, scores, labels, sigma, min_score, agnostic)
            torch.testing.assert_close(out_scores, torch.tensor([s for _, s in expected], dtype=torch.float64))
            torch.testing.assert_close(out_segs, segs[[i for i, _ in expected]])
            assert out_labels.tolist() == labels[[i for i, _ in expected]].tolist()
        for thr in (0.0, 0.4):
            assert nms(segs, scores, labels, thr, agnostic).tolist() == ref_nms(*lists, thr, agnostic)


@pytest.mark.parametrize("seed", range(3))
def test_soft_nms_float32_and_underflowing_decays_match_reference(seed):
    segs, scores, labels = random_detections(seed, n=150, num_classes=4, coarse=False)
    segs, scores = segs.float(), scores.float()
    lists = as_lists(segs.double(), scores.double(), labels)
    # exp(-tiou^2 / 0.004) is 0 in float32 once tiou > 0.65; the decayed scores drop.
    for sigma in (0.5, 0.004):
        expected = ref_soft_nms(*lists, sigma, 1e-3, False)
        out_segs, out_scores, out_labels = soft_nms(segs, scores, labels, sigma, 1e-3)
        torch.testing.assert_close(out_scores, torch.tensor([s for _, s in expected], dtype=torch.float32))
        torch.testing.assert_close(out_segs, segs[[i for i, _ in expected]])
        assert out_labels.tolist() == labels[[i for i, _ in expected]].tolist()


def test_power_of_two_sigmas_multiply_and_decay_exactly_as_the_division(monkeypatch):
    # Every float32 class of value, subnormals and zeros included.
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(10_000, generator=g), torch.rand(1_000, generator=g) * 1e-38, torch.tensor([0.0, 1.0, 3e-45])])
    for sigma in (0.5, 0.25, 1.0, 2.0, 0.0078125):
        inverse = postprocess_module._exact_negated_inverse(sigma)
        assert inverse == -1.0 / sigma
        assert torch.equal(x * inverse, x / -sigma)
        assert torch.equal(x.double() * inverse, x.double() / -sigma)
    for sigma in (0.3, 0.75, 1.5, 0.1, 2.0**-120):
        assert postprocess_module._exact_negated_inverse(sigma) is None
    segs, scores, labels = random_detections(1, n=120, num_classes=3, coarse=False)
    segs, scores = segs.float(), scores.float()
    fast = soft_nms(segs, scores, labels, 0.5, 1e-3)
    monkeypatch.setattr(postprocess_module, "_exact_negated_inverse", lambda sigma: None)
    divided = soft_nms(segs, scores, labels, 0.5, 1e-3)
    assert all(torch.equal(a, b) for a, b in zip(fast, divided))


@pytest.mark.parametrize("method", ["soft", "hard"])
def test_suppression_of_zero_length_reversed_and_dead_columns_matches_reference(monkeypatch, method):
    # soft_nms and nms take segments as given: zero-length and reversed ones overlap
    # nothing, and two zero-length ones at one place have an empty union, which must
    # give a tIoU of 0, not NaN; a class whose scores all fall under min_score goes dead
    # while the others run.
    segs = torch.tensor(
        [[0.0, 10.0], [0.0, 10.0], [3.0, 3.0], [3.0, 3.0], [8.0, 2.0], [0.0, 0.0], [1.0, 9.0], [20.0, 21.0], [0.0, 10.0]]
        + [[float(i), float(i) + 4.0] for i in range(12)],
        dtype=torch.float64,
    )
    n = segs.shape[0]
    scores = torch.linspace(0.9, 0.3, n, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1] + [2] * 12)
    lists = as_lists(segs, scores, labels)
    for compact_every in (1, 32):
        monkeypatch.setattr(postprocess_module, "_COMPACT_EVERY", compact_every)
        if method == "soft":
            for sigma, min_score in ((0.5, 1e-3), (0.05, 0.25)):
                expected = ref_soft_nms(*lists, sigma, min_score, False)
                out_segs, out_scores, out_labels = soft_nms(segs, scores, labels, sigma, min_score)
                torch.testing.assert_close(out_scores, torch.tensor([s for _, s in expected], dtype=torch.float64))
                assert out_labels.tolist() == labels[[i for i, _ in expected]].tolist()
                torch.testing.assert_close(out_segs, segs[[i for i, _ in expected]])
        else:
            for thr in (0.0, 0.5):
                assert nms(segs, scores, labels, thr).tolist() == ref_nms(*lists, thr, False)


@pytest.mark.parametrize("num_groups", [1, 7, 32_768, 32_769])
def test_layout_places_each_detection_at_its_rank_in_its_group(num_groups):
    # Around the bound where the sort keys widen from int16 to int32.
    g = torch.Generator().manual_seed(num_groups)
    groups = torch.cat([torch.arange(num_groups), torch.randint(0, num_groups, (3 * num_groups,), generator=g)])
    groups = groups[torch.randperm(groups.numel(), generator=g)]
    layout = postprocess_module._layout(groups, num_groups)
    sizes = torch.bincount(groups, minlength=num_groups)
    assert layout.sizes == sorted(sizes.tolist(), reverse=True)
    # Columns by descending size, ties by group index.
    by_size = sorted(range(num_groups), key=lambda k: (-sizes[k].item(), k))
    expected_column = {group: column for column, group in enumerate(by_size)}
    assert layout.column_of_group.tolist() == [expected_column[k] for k in range(num_groups)]
    seen = [0] * num_groups
    expected_flat = []
    for group in groups.tolist():
        expected_flat.append(seen[group] * num_groups + expected_column[group])
        seen[group] += 1
    assert layout.flat.tolist() == expected_flat
    assert layout.column.tolist() == [expected_column[k] for k in groups.tolist()]


def test_small_int_keys_keep_their_values():
    for bound, dtype in ((1, torch.int16), (32_768, torch.int16), (32_769, torch.int32), (2**31, torch.int32), (2**31 + 1, torch.int64)):
        values = torch.tensor([0, bound - 1])
        keys = postprocess_module._small_ints(values, bound)
        assert keys.dtype == dtype and keys.tolist() == [0, bound - 1]


# ---------------------------------------------------------------- score voting


def test_score_voting_hand_values():
    kept = torch.tensor([[0.0, 10.0], [40.0, 50.0]])
    kept_labels = torch.tensor([0, 0])
    cands = torch.tensor([[0.0, 10.0], [1.0, 11.0], [0.0, 9.0], [5.0, 15.0], [0.0, 10.5]])
    cand_scores = torch.tensor([0.9, 0.6, 0.3, 1.0, 0.8])
    cand_labels = torch.tensor([0, 0, 0, 0, 1])
    # Votes for [0,10] (tIoU >= 0.7, class 0): itself (1), [1,11] (9/11), [0,9] (0.9);
    # [5,15] is too far (1/3), [0,10.5] is another class. [40,50] has no vote.
    w = [1.0 * 0.9, 9 / 11 * 0.6, 0.9 * 0.3]
    start = (0 * w[0] + 1 * w[1] + 0 * w[2]) / sum(w)
    end = (10 * w[0] + 11 * w[1] + 9 * w[2]) / sum(w)
    refined = score_voting(kept, torch.tensor([0.9, 0.5]), kept_labels, cands, cand_scores, cand_labels, 0.7)
    torch.testing.assert_close(refined, torch.tensor([[start, end], [40.0, 50.0]]))
    # Class-agnostic, [0,10.5] (tIoU 10/10.5) votes too.
    w.append(10 / 10.5 * 0.8)
    start = (1 * w[1]) / sum(w)
    end = (10 * w[0] + 11 * w[1] + 9 * w[2] + 10.5 * w[3]) / sum(w)
    refined = score_voting(kept, torch.tensor([0.9, 0.5]), kept_labels, cands, cand_scores, cand_labels, 0.7, True)
    torch.testing.assert_close(refined, torch.tensor([[start, end], [40.0, 50.0]]))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("thr", [0.0, 0.5, 0.8])
def test_score_voting_matches_reference(seed, agnostic, thr):
    segs, scores, labels = random_detections(seed, coarse=seed % 2 == 0)
    kept = ref_nms(*as_lists(segs, scores, labels), 0.3, agnostic)
    expected = ref_voting(segs[kept].tolist(), labels[kept].tolist(), *as_lists(segs, scores, labels), thr, agnostic)
    refined = score_voting(segs[kept], scores[kept], labels[kept], segs, scores, labels, thr, agnostic)
    torch.testing.assert_close(refined, torch.tensor(expected, dtype=torch.float64))


# ---------------------------------------------------------------- top-k


def test_top_k_order_ties_and_large_k():
    segs = torch.arange(10, dtype=torch.float32).reshape(5, 2)
    scores = torch.tensor([0.1, 0.7, 0.3, 0.7, 0.9])
    labels = torch.tensor([4, 3, 2, 1, 0])
    out_segs, out_scores, out_labels = top_k(segs, scores, labels, 3)
    assert out_labels.tolist() == [0, 3, 1]
    torch.testing.assert_close(out_segs, segs[[4, 1, 3]])
    torch.testing.assert_close(out_scores, torch.tensor([0.9, 0.7, 0.7]))
    assert top_k(segs, scores, labels, 50)[2].tolist() == [0, 3, 1, 2, 4]
    assert top_k(segs, scores, labels, 0)[0].shape == (0, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ranking_of_negative_and_signed_zero_scores(dtype):
    # -0.0 and 0.0 are equal scores (the earlier detection first); negatives rank last.
    scores = torch.tensor([0.0, -0.5, -0.0, 2.0, -3.0, 0.0, -0.5, 1e-30, -1e-30], dtype=dtype)
    segs = torch.stack([torch.arange(9.0) * 10, torch.arange(9.0) * 10 + 1], dim=1).to(dtype)  # disjoint
    labels = torch.zeros(9, dtype=torch.long)
    expected = ref_rank(scores.tolist())
    assert nms(segs, scores, labels, 0.5).tolist() == expected
    cfg = PostprocessConfig(method="none", voting_iou=None)
    torch.testing.assert_close(postprocess(segs, scores, labels, cfg)[0], segs[expected])


# ---------------------------------------------------------------- the whole chain


def test_postprocess_hand_case():
    segs = torch.tensor([[-3.0, 4.0], [0.0, 4.0], [12.0, 15.0], [5.0, 8.0], [6.0, 9.0], [2.0, 3.0]])
    scores = torch.tensor([0.9, 0.8, 0.95, 0.6, 0.7, 0.0005])
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    cfg = PostprocessConfig(method="hard", iou_threshold=0.5, voting_iou=None, max_segments=10)
    out_segs, out_scores, out_labels = postprocess(segs, scores, labels, cfg, duration_s=10.0)
    # [12,15] lies outside the 10 s video; [-3,4] clips onto [0,4] and suppresses it;
    # [6,9] vs [5,8] is tIoU 0.5 (kept); [2,3] lies inside [0,4] (tIoU 0.25, kept). Which
    # candidates come in (the 0.0005 score) is the decoder's business, not this chain's.
    torch.testing.assert_close(out_segs, torch.tensor([[0.0, 4.0], [6.0, 9.0], [5.0, 8.0], [2.0, 3.0]]))
    torch.testing.assert_close(out_scores, torch.tensor([0.9, 0.7, 0.6, 0.0005]))
    assert out_labels.tolist() == [0, 1, 1, 0]
    assert postprocess(segs, scores, labels, PostprocessConfig(method="hard", max_segments=2), 10.0)[1].tolist() == [
        pytest.approx(0.9),
        pytest.approx(0.7),
    ]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", ["soft", "hard", "none"])
@pytest.mark.parametrize("agnostic", [False, True])
def test_postprocess_matches_reference(seed, method, agnostic):
    segs, scores, labels = random_detections(seed, n=80, coarse=seed % 2 == 0)
    scores = scores * 0.5
    scores[::7] = 0.0005  # below Soft-NMS's min_score
    cfg = PostprocessConfig(
        method=method,
        iou_threshold=0.4,
        class_agnostic=agnostic,
        voting_iou=None if seed % 3 == 0 else 0.6,
        max_segments=30,
    )
    duration_s = None if seed == 1 else 17.0
    expected = ref_postprocess(*as_lists(segs, scores, labels), cfg, duration_s)
    out_segs, out_scores, out_labels = postprocess(segs, scores, labels, cfg, duration_s)
    torch.testing.assert_close(out_segs, torch.tensor([e[0] for e in expected], dtype=torch.float64))
    torch.testing.assert_close(out_scores, torch.tensor([e[1] for e in expected], dtype=torch.float64))
    assert out_labels.tolist() == [e[2] for e in expected]


def random_video(seed: int):
    """One video's candidates for the batching tests: anything from none to 120
    candidates, one to eight classes, many ties or none, in float16, float32 or float64,
    int32 or int64 labels, with or without a duration."""
    g = torch.Generator().manual_seed(1000 + seed)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]  # noqa: E731
    segs, scores, labels = random_detections(seed, n=pick([0, 1, 3, 40, 120]), num_classes=pick([1, 3, 8]), coarse=pick([True, False]))
    dtype = pick([torch.float64, torch.float64, torch.float32, torch.float16])
    return (segs.to(dtype), (scores * 0.6).to(dtype), labels.to(pick([torch.int64, torch.int32]))), pick([None, 10.0, 25.0])


CHAIN_CONFIGS = {
    "defaults": PostprocessConfig(),
    "hard": PostprocessConfig(method="hard", iou_threshold=0.4, voting_iou=None, max_segments=15),
    "none": PostprocessConfig(method="none", voting_iou=0.5, max_segments=30),
    "soft agnostic": PostprocessConfig(class_agnostic=True, sigma=0.2, min_score=0.05, max_segments=10),
    "hard agnostic": PostprocessConfig(method="hard", class_agnostic=True, iou_threshold=0.0, voting_iou=0.3),
}


@pytest.mark.parametrize("name", list(CHAIN_CONFIGS))
def test_postprocess_videos_is_postprocess_of_each_video(name):
    cfg = CHAIN_CONFIGS[name]
    videos, durations = zip(*(random_video(seed) for seed in range(40)))
    batched = postprocess_videos(videos, cfg, durations)
    assert len(batched) == len(videos)
    for (segs, scores, labels), duration, got in zip(videos, durations, batched):
        alone = postprocess(segs, scores, labels, cfg, duration)
        assert [t.dtype for t in got] == [t.dtype for t in alone]
        assert got[2].tolist() == alone[2].tolist()
        torch.testing.assert_close(got[1], alone[1], rtol=0, atol=0)
        torch.testing.assert_close(got[0], alone[0])
        if segs.dtype == torch.float64:  # and both are the plain reference's
            expected = ref_postprocess(*as_lists(segs, scores, labels), cfg, duration)
            assert got[2].tolist() == [e[2] for e in expected]
            torch.testing.assert_close(got[1], torch.tensor([e[1] for e in expected], dtype=torch.float64))
            torch.testing.assert_close(got[0], torch.tensor([e[0] for e in expected], dtype=torch.float64).reshape(-1, 2))


def test_postprocess_videos_arguments():
    cfg = PostprocessConfig()
    assert postprocess_videos([], cfg) == []
    video = (torch.tensor([[0.0, 2.0]]), torch.tensor([0.9]), torch.tensor([3]))
    (segs, scores, labels), = postprocess_videos([video], cfg)  # durations default to None
    assert scores.tolist() == [pytest.approx(0.9)] and labels.tolist() == [3]
    with pytest.raises(ValueError, match="2 videos but 1 durations"):
        postprocess_videos([video, video], cfg, [None])
    with pytest.raises(ValueError, match=r"video 1: scores must be \[N\]"):
        postprocess_videos([video, (torch.zeros(2, 2), torch.zeros(3), torch.zeros(2, dtype=torch.long))], cfg)


def test_empty_inputs():
    segs, scores, labels = torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.long)
    idx = nms(segs, scores, labels, 0.5)
    assert idx.shape == (0,) and idx.dtype == torch.long
    for out in (soft_nms(segs, scores, labels), top_k(segs, scores, labels, 5)):
        assert [tuple(t.shape) for t in out] == [(0, 2), (0,), (0,)]
        assert [t.dtype for t in out] == [torch.float32, torch.float32, torch.long]
    for method in ("soft", "hard", "none"):
        out = postprocess(segs, scores, labels, PostprocessConfig(method=method), duration_s=10.0)
        assert [tuple(t.shape) for t in out] == [(0, 2), (0,), (0,)]
        assert out[2].dtype == torch.long
    assert score_voting(segs, scores, labels, segs, scores, labels).shape == (0, 2)
    kept = torch.tensor([[1.0, 2.0]])
    one = torch.tensor([0])
    torch.testing.assert_close(score_voting(kept, torch.ones(1), one, segs, scores, labels), kept)
    # Everything filtered out on the way.
    low = postprocess(torch.tensor([[0.0, 1.0]]), torch.tensor([1e-5]), one, PostprocessConfig())
    assert [tuple(t.shape) for t in low] == [(0, 2), (0,), (0,)]


def test_dtypes_are_promoted_to_at_least_float32():
    segs, scores, labels = random_detections(0, n=20)
    for dtype, work in ((torch.float16, torch.float32), (torch.bfloat16, torch.float32), (torch.float64, torch.float64)):
        out_segs, out_scores, out_labels = postprocess(segs.to(dtype), scores.to(dtype), labels.int(), PostprocessConfig())
        assert out_segs.dtype == work and out_scores.dtype == work and out_labels.dtype == torch.int32
    assert nms(segs.long(), scores, labels, 0.5).tolist() == nms(segs, scores, labels, 0.5).tolist()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    segs, scores, labels = random_detections(3, n=200, num_classes=5, coarse=False)
    for method in ("soft", "hard"):
        cfg = PostprocessConfig(method=method, iou_threshold=0.4)
        cpu = postprocess(segs, scores, labels, cfg, 17.0)
        gpu = postprocess(segs.cuda(), scores.cuda(), labels.cuda(), cfg, 17.0)
        assert all(t.device.type == "cuda" for t in gpu)
        for a, b in zip(cpu, gpu):
            torch.testing.assert_close(b.cpu(), a)
    videos, durations = zip(*(random_video(seed) for seed in range(20)))
    cpu = postprocess_videos(videos, PostprocessConfig(), durations)
    gpu = postprocess_videos([tuple(t.cuda() for t in v) for v in videos], PostprocessConfig(), durations)
    for a, b in zip(cpu, gpu):
        assert b[2].device.type == "cuda" and b[2].tolist() == a[2].tolist()
        torch.testing.assert_close(b[0].cpu(), a[0])
        torch.testing.assert_close(b[1].cpu(), a[1])


def test_invalid_inputs_and_config():
    with pytest.raises(ValueError, match="method"):
        PostprocessConfig(method="linear")
    with pytest.raises(ValueError, match="sigma"):
        PostprocessConfig(sigma=0.0)
    with pytest.raises(ValueError, match="max_segments"):
        PostprocessConfig(max_segments=0)
    with pytest.raises(ValueError, match=r"segments must be \[N, 2\]"):
        nms(torch.zeros(3, 3), torch.zeros(3), torch.zeros(3, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="scores must be"):
        soft_nms(torch.zeros(3, 2), torch.zeros(4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be integer"):
        top_k(torch.zeros(3, 2), torch.zeros(3), torch.zeros(3), 2)
    with pytest.raises(ValueError, match="NaN"):
        nms(torch.tensor([[0.0, 1.0]]), torch.tensor([float("nan")]), torch.tensor([0]), 0.5)
    with pytest.raises(ValueError, match="finite"):
        soft_nms(torch.tensor([[0.0, float("inf")]]), torch.tensor([0.5]), torch.tensor([0]))
    with pytest.raises(ValueError, match="finite"):
        postprocess(torch.tensor([[0.0, 1.0]]), torch.tensor([-float("inf")]), torch.tensor([0]), PostprocessConfig())


def test_segments_stay_inside_the_video_after_voting():
    # Voting averages clipped segments; in float32 the average can round past the clip.
    g = torch.Generator().manual_seed(0)
    start = 30.0 - 8.0 * torch.rand(400, generator=g)
    segs = torch.stack([start, start + 8.0 * torch.rand(400, generator=g) + 0.1], dim=1)  # many end past 30 s
    scores = torch.rand(400, generator=g)
    labels = torch.randint(0, 3, (400,), generator=g)
    cfg = PostprocessConfig(voting_iou=0.3)
    for duration in (30.0, 29.999999, 1e-3 + 29.0):
        out, _, _ = postprocess(segs, scores, labels, cfg, duration_s=duration)
        assert out.min() >= 0 and out.max() <= duration
    out, _, _ = postprocess(segs - 29.5, scores, labels, cfg)  # most start before 0 s
    assert len(out) and out.min() >= 0  # without a duration, still no negative time
