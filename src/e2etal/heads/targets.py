"""Points, target assignment and losses of the ActionFormer-style head: pure functions.

Units. Everything is on the input feature grid: a point's position, a ground-truth
segment (start, end) and a regression range are all in input feature steps. Only the
regression targets (and the head's offsets) are divided by the point's level stride.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Two ground truths whose lengths differ by less than this (feature steps) tie for a point.
_LENGTH_TIE = 1e-3


def make_points(
    level_lengths: Sequence[int],
    strides: Sequence[int],
    regression_ranges: Sequence[tuple[float, float]],
    device: torch.device | str | None = None,
) -> Tensor:  # [P, 4], P = sum(level_lengths)
    """One row (position, range low, range high, stride) per step of every pyramid level.

    Step i of a level of stride s sits at position i * s on the input grid (the input
    step its conv windows are centred on). Levels are concatenated in order."""
    if not len(level_lengths) == len(strides) == len(regression_ranges):
        raise ValueError(
            f"make_points: one length, stride and regression range per level expected, got "
            f"{len(level_lengths)}, {len(strides)} and {len(regression_ranges)}"
        )
    rows = []
    for length, stride, (low, high) in zip(level_lengths, strides, regression_ranges):
        position = torch.arange(length, dtype=torch.float32, device=device) * stride  # [T_l]
        rest = torch.tensor([low, high, float(stride)], dtype=torch.float32, device=device).expand(length, 3)
        rows.append(torch.cat([position[:, None], rest], dim=1))  # [T_l, 4]
    return torch.cat(rows, dim=0)


def assign_targets(
    points: Tensor,  # [P, 4] from make_points
    gt_segments: Tensor,  # [N, 2] (start, end), feature steps
    gt_labels: Tensor,  # [N] long, class index in [0, num_classes)
    num_classes: int,
    center_sample: bool = True,
    radius: float = 1.5,
) -> tuple[Tensor, Tensor]:  # cls_targets [P, K] float, reg_targets [P, 2] float
    """ActionFormer's assignment of ground truths to points (FCOS-style).

    A point at position t is a candidate for a ground truth (s, e) when
      * it lies strictly inside (s, e); with center sampling, strictly inside the part of
        (s, e) within `radius` strides of its centre instead (so a short action still
        gets a point on coarse levels, and a long one only central points), and
      * max(t - s, e - t) lies in the point's level range [low, high] (both inclusive),
        which sends each ground truth to the level whose scale fits it.
    Among its candidates a point takes the shortest ground truth: its class becomes a
    positive (1.0) in `cls_targets` and its regression target is (t - s, e - t) / stride.
    Candidates as short as the shortest (within 1e-3) also set their classes to 1.0, the
    regression target coming from the first of them. Points with no candidate are
    negatives: an all-zero row and a (0, 0) regression target."""
    num_points = points.shape[0]
    num_gt = gt_segments.shape[0]
    dtype = points.dtype
    cls_targets = points.new_zeros(num_points, num_classes)
    reg_targets = points.new_zeros(num_points, 2)
    if num_gt == 0:
        return cls_targets, reg_targets
    if gt_labels.shape != (num_gt,):
        raise ValueError(f"assign_targets: gt_labels must be [N] = [{num_gt}], got shape {tuple(gt_labels.shape)}")
    if bool((gt_labels < 0).any()) or bool((gt_labels >= num_classes).any()):
        raise ValueError(f"assign_targets: gt_labels must lie in [0, {num_classes}), got {gt_labels.tolist()}")
    gt_segments = gt_segments.to(dtype)
    position, low, high, stride = points[:, 0:1], points[:, 1:2], points[:, 2:3], points[:, 3:4]  # [P, 1] each
    start, end = gt_segments[None, :, 0], gt_segments[None, :, 1]  # [1, N] each

    left = position - start  # [P, N]
    right = end - position  # [P, N]
    if center_sample:
        centre = 0.5 * (start + end)  # [1, N]
        inner_start = torch.maximum(centre - radius * stride, start)  # [P, N]
        inner_end = torch.minimum(centre + radius * stride, end)
        inside = (position > inner_start) & (position < inner_end)
    else:
        inside = (left > 0) & (right > 0)
    reach = torch.maximum(left, right)  # [P, N]
    in_range = (reach >= low) & (reach <= high)

    length = (end - start).expand(num_points, num_gt)  # [P, N]
    length = torch.where(inside & in_range, length, torch.full_like(length, float("inf")))
    shortest, index = length.min(dim=1)  # [P], [P]
    chosen = (length <= shortest[:, None] + _LENGTH_TIE) & torch.isfinite(length)  # [P, N]
    one_hot = F.one_hot(gt_labels.long(), num_classes).to(dtype)  # [N, K]
    cls_targets = (chosen.to(dtype) @ one_hot).clamp(max=1.0)  # [P, K]

    positive = torch.isfinite(shortest)  # [P]
    rows = torch.arange(num_points, device=points.device)
    offsets = torch.stack([left[rows, index], right[rows, index]], dim=1) / stride  # [P, 2]
    reg_targets = torch.where(positive[:, None], offsets, reg_targets)
    return cls_targets, reg_targets


def sigmoid_focal_loss(
    logits: Tensor,  # [*]
    targets: Tensor,  # [*] in [0, 1]
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:  # [*], not reduced
    """Focal loss of independent sigmoid classifiers (Lin et al. 2017), element-wise.

    BCE(p, y) * (1 - p_t)^gamma with p_t = p y + (1 - p)(1 - y), weighted by
    alpha y + (1 - alpha)(1 - y) when alpha >= 0. Soft targets are allowed."""
    prob = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def diou_loss_1d(
    pred_offsets: Tensor,  # [N, 2] (left, right) distances from a common point, >= 0
    target_offsets: Tensor,  # [N, 2] same units
    eps: float = 1e-8,
) -> Tensor:  # [N]
    """1-D Distance-IoU loss of segments given as distances from the same anchor point.

    1 - IoU + (distance between centres)^2 / (length of the smallest enclosing segment)^2.
    Both segments contain the anchor, so their intersection is the sum of the shorter
    left and the shorter right distance."""
    pred_left, pred_right = pred_offsets[:, 0], pred_offsets[:, 1]
    gt_left, gt_right = target_offsets[:, 0], target_offsets[:, 1]
    inter = torch.minimum(pred_left, gt_left) + torch.minimum(pred_right, gt_right)
    union = (pred_left + pred_right) + (gt_left + gt_right) - inter
    iou = inter / union.clamp(min=eps)
    enclosing = torch.maximum(pred_left, gt_left) + torch.maximum(pred_right, gt_right)
    # centres at (right - left) / 2 relative to the anchor
    centre_distance = 0.5 * ((pred_right - pred_left) - (gt_right - gt_left))
    return 1.0 - iou + centre_distance.square() / enclosing.square().clamp(min=eps)
