"""Target assignment and losses of the ActionFormer-style head, checked by hand."""

import math

import pytest
import torch

from e2etal.heads.targets import assign_targets, diou_loss_1d, make_points, sigmoid_focal_loss

STRIDES = (1, 2, 4)
RANGES = ((0.0, 4.0), (4.0, 8.0), (8.0, 10000.0))


def pyramid_points(length: int = 64) -> torch.Tensor:
    return make_points([length // s for s in STRIDES], STRIDES, RANGES)  # [P, 4]


def positives(points, cls_targets, reg_targets):
    """{(stride, position): (class list, (left, right))} of the positive points."""
    out = {}
    for row, c, r in zip(points.tolist(), cls_targets, reg_targets.tolist()):
        if c.sum() > 0:
            out[(int(row[3]), row[0])] = (torch.nonzero(c).flatten().tolist(), tuple(r))
    return out


def test_make_points_rows():
    points = make_points([4, 2], [1, 2], [(0, 4), (4, 100)])
    assert points.tolist() == [
        [0, 0, 4, 1],
        [1, 0, 4, 1],
        [2, 0, 4, 1],
        [3, 0, 4, 1],
        [0, 4, 100, 2],
        [2, 4, 100, 2],
    ]
    with pytest.raises(ValueError, match="one length, stride and regression range per level"):
        make_points([4, 2], [1], [(0, 4), (4, 100)])


@pytest.mark.parametrize("center_sample", [False, True])
def test_single_ground_truth(center_sample):
    # (10, 16), length 6, centre 13. Stride 1: points 11..15 lie inside, their farther
    # boundary is 5, 4, 3, 4, 5 away, and range [0, 4] keeps 12, 13, 14. Stride 2:
    # points 12 and 14 are 4 away from the farther boundary, inside [4, 8]. Stride 4:
    # point 12 is 4 away, outside [8, inf). The centre region (radius 1.5 strides) is
    # (11.5, 14.5) at stride 1 and the whole segment at stride 2, so it changes nothing.
    points = pyramid_points()
    cls_t, reg_t = assign_targets(points, torch.tensor([[10.0, 16.0]]), torch.tensor([1]), 3, center_sample, 1.5)
    assert cls_t.shape == (points.shape[0], 3) and reg_t.shape == (points.shape[0], 2)
    assert positives(points, cls_t, reg_t) == {
        (1, 12.0): ([1], (2.0, 4.0)),
        (1, 13.0): ([1], (3.0, 3.0)),
        (1, 14.0): ([1], (4.0, 2.0)),
        # regression targets are divided by the stride
        (2, 12.0): ([1], (1.0, 2.0)),
        (2, 14.0): ([1], (2.0, 1.0)),
    }
    negative = cls_t.sum(dim=1) == 0
    assert torch.all(reg_t[negative] == 0)


def test_center_sampling_keeps_only_central_points():
    # (0, 40): every point inside is >= 20 from its farther boundary, so only stride 4
    # (range [8, inf)) can take it. Without center sampling every stride-4 point strictly
    # inside is positive; with radius 1.5 only those within 6 of the centre 20.
    points = pyramid_points()
    gt, label = torch.tensor([[0.0, 40.0]]), torch.tensor([0])
    everywhere = positives(points, *assign_targets(points, gt, label, 2, center_sample=False))
    assert sorted(everywhere) == [(4, float(t)) for t in range(4, 40, 4)]
    central = positives(points, *assign_targets(points, gt, label, 2, center_sample=True, radius=1.5))
    assert central == {
        (4, 16.0): ([0], (4.0, 6.0)),
        (4, 20.0): ([0], (5.0, 5.0)),
        (4, 24.0): ([0], (6.0, 4.0)),
    }
    # A larger radius widens the region: within 10 of the centre, 12..28.
    wide = positives(points, *assign_targets(points, gt, label, 2, center_sample=True, radius=2.5))
    assert sorted(wide) == [(4, float(t)) for t in (12, 16, 20, 24, 28)]


def test_center_region_is_clipped_to_the_segment():
    # (9, 11) at a single level of stride 4 with range [0, inf): the region centre +- 6
    # is clipped to (9, 11), which holds no multiple of 4 -> no positive, although the
    # unclipped region would hold 4 and 8 and 12.
    points = make_points([8], [4], [(0.0, 10000.0)])
    cls_t, _ = assign_targets(points, torch.tensor([[9.0, 11.0]]), torch.tensor([0]), 1, True, 1.5)
    assert cls_t.sum() == 0
    cls_t, reg_t = assign_targets(points, torch.tensor([[7.0, 13.0]]), torch.tensor([0]), 1, True, 1.5)
    assert positives(points, cls_t, reg_t) == {(4, 8.0): ([0], (0.25, 1.25)), (4, 12.0): ([0], (1.25, 0.25))}


def test_overlapping_ground_truths_shorter_wins():
    # One level, stride 1, every distance in range: A = (10, 30) class 0, B = (14, 22)
    # class 1. Points 15..21 lie in both and take B (shorter); 11..14 and 22..29 only A.
    points = make_points([40], [1], [(0.0, 10000.0)])
    gts = torch.tensor([[10.0, 30.0], [14.0, 22.0]])
    cls_t, reg_t = assign_targets(points, gts, torch.tensor([0, 1]), 2, center_sample=False)
    got = positives(points, cls_t, reg_t)
    for t in range(15, 22):
        assert got[(1, float(t))] == ([1], (t - 14.0, 22.0 - t))
    for t in list(range(11, 15)) + list(range(22, 30)):
        assert got[(1, float(t))] == ([0], (t - 10.0, 30.0 - t))
    assert len(got) == 7 + 4 + 8
    # Order of the ground truths does not matter.
    cls_r, reg_r = assign_targets(points, gts.flip(0), torch.tensor([1, 0]), 2, center_sample=False)
    assert torch.equal(cls_r, cls_t) and torch.equal(reg_r, reg_t)


def test_equal_length_ground_truths_share_a_point():
    # Same segment, two classes: both classes are positive (multi-label), one target.
    points = make_points([20], [1], [(0.0, 10000.0)])
    gts = torch.tensor([[4.0, 12.0], [4.0, 12.0]])
    cls_t, reg_t = assign_targets(points, gts, torch.tensor([2, 0]), 3, center_sample=False)
    assert cls_t[8].tolist() == [1.0, 0.0, 1.0]
    assert reg_t[8].tolist() == [4.0, 4.0]


def test_points_outside_every_range_are_negative():
    # (0, 60) is >= 30 from its farther boundary everywhere inside; ranges stop at 16.
    points = make_points([64, 32, 16], STRIDES, ((0.0, 4.0), (4.0, 8.0), (8.0, 16.0)))
    cls_t, reg_t = assign_targets(points, torch.tensor([[0.0, 60.0]]), torch.tensor([0]), 1, center_sample=False)
    assert cls_t.sum() == 0 and torch.all(reg_t == 0)


def test_no_ground_truth_and_bad_labels():
    points = pyramid_points(16)
    cls_t, reg_t = assign_targets(points, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 4)
    assert cls_t.shape == (points.shape[0], 4) and cls_t.sum() == 0 and reg_t.sum() == 0
    with pytest.raises(ValueError, match=r"gt_labels must lie in \[0, 4\)"):
        assign_targets(points, torch.tensor([[1.0, 5.0]]), torch.tensor([4]), 4)


def test_sigmoid_focal_loss_matches_formula():
    logits = torch.tensor([-3.0, -0.5, 0.0, 1.0, 4.0, 2.0])
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.3])
    alpha, gamma = 0.25, 2.0
    expected = []
    for x, y in zip(logits.tolist(), targets.tolist()):
        p = 1 / (1 + math.exp(-x))
        bce = -(y * math.log(p) + (1 - y) * math.log(1 - p))
        p_t = p * y + (1 - p) * (1 - y)
        expected.append((alpha * y + (1 - alpha) * (1 - y)) * (1 - p_t) ** gamma * bce)
    got = sigmoid_focal_loss(logits, targets, alpha, gamma)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    # gamma 0 and no alpha: plain binary cross-entropy
    plain = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0.0)
    assert torch.allclose(plain, torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none"))


def test_diou_loss_matches_formula():
    pred = torch.tensor([[2.0, 3.0], [1.0, 1.0], [0.5, 4.0], [3.0, 0.0]])
    target = torch.tensor([[2.0, 3.0], [3.0, 2.0], [2.0, 1.0], [1.0, 2.0]])
    expected = []
    for (pl, pr), (gl, gr) in zip(pred.tolist(), target.tolist()):
        ps, pe, gs, ge = -pl, pr, -gl, gr  # segments around the anchor at 0
        inter = max(0.0, min(pe, ge) - max(ps, gs))
        union = (pe - ps) + (ge - gs) - inter
        enclosing = max(pe, ge) - min(ps, gs)
        centre_gap = (ps + pe) / 2 - (gs + ge) / 2
        expected.append(1 - inter / union + centre_gap**2 / enclosing**2)
    got = diou_loss_1d(pred, target)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    assert got[0] == 0  # identical segments
