"""ActionFormer-style single-stage detection head (Zhang et al., ECCV 2022), on the
feature grid.

features [B, C_in, T] ─ embedding convs ─ stem blocks ─┬─ level 0  (stride 1)
                                       branch block ×2 ├─ level 1  (stride 2)
                                                  ...  └─ level L-1 (stride 2^(L-1))
every level ─ shared classification tower ─ logits  [B, T_l, K]
            └ shared regression tower × Scale_l, ReLU ─ offsets [B, T_l, 2]

Each step of each level is a point (heads.targets.make_points) that predicts, per
class, whether an action contains it, and the distances from it to that action's start
and end in units of its level's stride. Target assignment and the losses are the pure
functions of heads.targets; `decode` turns outputs into candidate segments, and
suppression is e2etal.postprocess, run by the caller once per video. Segments going in
and coming out are in input feature steps; seconds are someone else's business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from e2etal import distributed
from e2etal.heads.config import HeadConfig
from e2etal.heads.targets import assign_targets, diou_loss_1d, make_points, sigmoid_focal_loss
from e2etal.heads.transformer import ONEDNN_MIN_MACS, SameConv1d, TransformerBlock, downsample_mask


@dataclass
class HeadOutput:
    """The head's raw outputs, one list entry per pyramid level (finest first)."""

    cls_logits: list[Tensor]  # [B, T_l, K]
    offsets: list[Tensor]  # [B, T_l, 2] (to start, to end) in strides of level l, >= 0
    masks: list[Tensor]  # [B, T_l] bool, True = valid step
    points: list[Tensor]  # [T_l, 4] (position in feature steps, range low, range high, stride)


def padded_length(length: int, cfg: HeadConfig) -> int:
    """The length to pad a sequence of `length` feature steps to: the next multiple of
    the largest stride.

    The head accepts any T >= 1 (each level has ceil(T / stride) steps) and its outputs
    at valid steps do not depend on how much padding follows them. Padding a batch to a
    multiple of the largest stride makes every level exactly T / stride long, which is
    what batch collation and fixed-shape compilation want; training batches use
    cfg.max_seq_len, itself such a multiple."""
    if length < 1:
        raise ValueError(f"padded_length: length must be >= 1 feature step, got {length}")
    return math.ceil(length / cfg.max_stride) * cfg.max_stride


def encoder_passes(mask: Tensor, cfg: HeadConfig) -> list[tuple[list[int], int]]:
    """How the encoder runs over a batch: passes of (videos, length), each video in one.

    A video whose valid steps end well before the batch's length T needs no work on the
    steps after them: by heads.transformer's padding rule, running it on its first
    `padded_length(last valid step + 1)` steps gives the same outputs at its valid steps.
    Videos of equal such length share a pass. A further pass has a fixed cost (every
    operation called once more), so on CPU a video goes to a shorter pass only when the
    steps it skips are worth at least ONEDNN_MIN_MACS multiply-adds of the first embedding
    convolution; otherwise it joins the longer pass before it. Sequences of ActionFormer's
    size with a few hundred padded steps split; the demo's 128-wide head never does. On
    a GPU the batch is one pass at T: reading the lengths would wait for the device."""
    batch, t = mask.shape
    if mask.device.type != "cpu":
        return [(list(range(batch)), t)]
    steps = torch.arange(1, t + 1)
    ends = (mask * steps).amax(dim=1).tolist()  # last valid step + 1 per video, 0 if none
    needed = [min(padded_length(max(end, 1), cfg), t) for end in ends]
    macs_per_step = cfg.input_dim * cfg.embed_dim * cfg.embed_kernel_size
    passes: list[tuple[list[int], int]] = []
    videos, length = [], t
    for n in sorted(set(needed), reverse=True):
        group = [b for b in range(batch) if needed[b] == n]
        if (length - n) * len(group) * macs_per_step < ONEDNN_MIN_MACS:
            videos += group
        else:
            if videos:
                passes.append((sorted(videos), length))
            videos, length = group, n
    passes.append((sorted(videos), length))
    return passes


class Scale(nn.Module):
    """A learnable scalar, one per level, so the shared regression tower can output
    offsets of the same magnitude at every level (applied in ActionFormerHead.forward,
    all levels at once)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))


class PyramidEncoder(nn.Module):
    """Embedding convs, stem blocks at full resolution, then one stride-2 block per
    further level; every level's output is LayerNorm-ed (ActionFormer's identity FPN).

    Channels-first in (the features, read in place as a transposed matrix), channels-last
    from there on (see heads.transformer)."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.embed_convs = nn.ModuleList()
        self.embed_norms = nn.ModuleList()
        for layer in range(cfg.embed_layers):
            in_dim = cfg.input_dim if layer == 0 else dim
            self.embed_convs.append(SameConv1d(in_dim, dim, cfg.embed_kernel_size, bias=False))
            self.embed_norms.append(nn.LayerNorm(dim))
        if cfg.embed_layers == 0 and cfg.input_dim != dim:
            raise ValueError(f"HeadConfig: embed_layers = 0 needs input_dim == embed_dim, got {cfg.input_dim} and {dim}")

        def block(stride: int) -> TransformerBlock:
            return TransformerBlock(
                dim,
                cfg.num_heads,
                cfg.window_size,
                stride=stride,
                mlp_ratio=cfg.mlp_ratio,
                dropout=cfg.dropout,
                drop_path=cfg.drop_path,
                layer_scale_init=cfg.layer_scale_init,
            )

        self.stem = nn.ModuleList(block(1) for _ in range(cfg.stem_layers))
        self.branch = nn.ModuleList(block(2) for _ in range(cfg.branch_layers))
        self.level_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(cfg.num_levels))

    def forward(self, x: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        # x: [B, C_in, T], mask: [B, T] -> per level [B, T_l, D] (padded steps: finite,
        # unspecified), [B, T_l]
        # Whatever the padding holds, it must read as zero, like a conv's own padding
        # (torch.where, unlike a product with the mask, also clears NaN and inf).
        x = torch.where(mask[:, None, :], x, 0.0).transpose(1, 2)  # [B, T, C_in], a view
        pad = ~mask[:, :, None]  # [B, T, 1]
        for layer, (conv, norm) in enumerate(zip(self.embed_convs, self.embed_norms)):
            x = norm(conv(x))  # [B, T, D]
            if layer + 1 < len(self.embed_convs):  # the blocks zero their own inputs' padding
                x = x.masked_fill_(pad, 0.0)
            x = x.relu_()  # in place, see PredictionTower.forward
        for blk in self.stem:
            x, mask = blk(x, mask)
        feats, masks = [x], [mask]
        for blk in self.branch:
            x, mask = blk(x, mask)
            feats.append(x)
            masks.append(mask)
        return [norm(f) for norm, f in zip(self.level_norms, feats)], masks


class PredictionTower(nn.Module):
    """(layers - 1) x [conv + LayerNorm + ReLU], then a conv to `out_dim`; shared by all
    levels, which ActionFormerHead.forward passes through it at once."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int, kernel_size: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for layer in range(layers - 1):
            self.convs.append(SameConv1d(in_dim if layer == 0 else hidden_dim, hidden_dim, kernel_size, bias=False))
            self.norms.append(nn.LayerNorm(hidden_dim))
        self.out = SameConv1d(hidden_dim if layers > 1 else in_dim, out_dim, kernel_size)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        # x: [B, T, D] (zero at padding), mask: [B, T] -> [B, T, out_dim], zero at padding
        # Masks and ReLUs in place: neither LayerNorm's backward nor the convolutions' read
        # their outputs, and on CPU a fresh tensor costs page faults on top of its pass.
        pad = ~mask[:, :, None]  # [B, T, 1]
        for conv, norm in zip(self.convs, self.norms):
            x = norm(conv(x)).masked_fill_(pad, 0.0).relu_()  # [B, T, hidden]
        return self.out(x).masked_fill_(pad, 0.0)


class ActionFormerHead(nn.Module):
    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = PyramidEncoder(cfg)
        self.cls_tower = PredictionTower(cfg.embed_dim, cfg.head_dim, cfg.num_classes, cfg.head_layers, cfg.head_kernel_size)
        self.reg_tower = PredictionTower(cfg.embed_dim, cfg.head_dim, 2, cfg.head_layers, cfg.head_kernel_size)
        self.reg_scales = nn.ModuleList(Scale() for _ in range(cfg.num_levels))
        # Running estimate of the number of positive points per batch, which normalises
        # both losses. A buffer, so a resumed run continues with the same normaliser.
        self.register_buffer("loss_norm", torch.tensor(float(cfg.loss_norm_init)))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Linear)) and module.bias is not None:
                nn.init.zeros_(module.bias)
        # Start every class at probability prior_prob: with ~all points negative, a 0.5
        # start would make the first steps' focal loss huge and unstable (RetinaNet).
        nn.init.constant_(self.cls_tower.out.conv.bias, -math.log((1 - self.cfg.prior_prob) / self.cfg.prior_prob))
        # Start every offset at exactly one stride. The offsets pass through a ReLU, and
        # a randomly initialised output conv is negative on a whole level for many seeds
        # (its inputs are post-ReLU, so a common component dominates); a ReLU passes no
        # gradient there, and that side's regression never learns.
        nn.init.zeros_(self.reg_tower.out.conv.weight)
        nn.init.constant_(self.reg_tower.out.conv.bias, 1.0)

    def forward(self, features: Tensor, mask: Tensor) -> HeadOutput:
        # features: [B, C_in, T] in feature steps, mask: [B, T] bool (True = valid)
        cfg = self.cfg
        if features.ndim != 3 or features.shape[1] != cfg.input_dim:
            raise ValueError(f"ActionFormerHead: features must be [B, {cfg.input_dim}, T], got shape {tuple(features.shape)}")
        if mask.shape != (features.shape[0], features.shape[2]) or mask.dtype != torch.bool:
            raise ValueError(
                f"ActionFormerHead: mask must be bool [B, T] = {[features.shape[0], features.shape[2]]}, "
                f"got {mask.dtype} {list(mask.shape)}"
            )
        # Per video and level, its encoder features [T_lb, D] and mask [T_lb]: T_lb is the
        # level's length of the pass that ran the video (see encoder_passes).
        video_feats: list[list[Tensor]] = [[] for _ in range(features.shape[0])]
        video_masks: list[list[Tensor]] = [[] for _ in range(features.shape[0])]
        for videos, length in encoder_passes(mask, cfg):
            rows = slice(videos[0], videos[-1] + 1) if videos[-1] - videos[0] + 1 == len(videos) else videos
            feats, masks = self.encoder(features[rows, :, :length], mask[rows, :length])  # per level [b, T_l, D], [b, T_l]
            for j, b in enumerate(videos):
                video_feats[b] = [f[j] for f in feats]
                video_masks[b] = [m[j] for m in masks]
        # The towers take every level of every video in one pass, as one sequence: level
        # by level, video by video, each followed by head_kernel_size // 2 padded steps,
        # which a kernel reads exactly as it reads a sequence's own zero padding.
        batch, levels = features.shape[0], range(cfg.num_levels)
        gap = cfg.head_kernel_size // 2
        gap_x, gap_m = video_feats[0][0].new_zeros(gap, cfg.embed_dim), mask.new_zeros(gap)
        valid = torch.cat([t for level in levels for b in range(batch) for t in (video_masks[b][level], gap_m)])  # [R]
        x = torch.cat([t for level in levels for b in range(batch) for t in (video_feats[b][level], gap_x)])  # [R, D]
        x = x.masked_fill_(~valid[:, None], 0.0)[None]  # [1, R, D]
        rows_per_piece = [video_masks[b][level].shape[0] + gap for level in levels for b in range(batch)]
        scale = torch.cat([self.reg_scales[i // batch].scale.expand(n) for i, n in enumerate(rows_per_piece)])  # [R]
        cls_pieces = self.cls_tower(x, valid[None])[0].split(rows_per_piece)  # per (level, video) [T_lb + gap, K]
        offset_pieces = F.relu(self.reg_tower(x, valid[None])[0] * scale[:, None]).split(rows_per_piece)  # [T_lb + gap, 2]
        # Back to [B, T_l, ...] per level at the batch's length, zero at padded steps.
        masks = [downsample_mask(mask, stride) for stride in cfg.strides]  # [B, T_l]
        lengths = [m.shape[1] for m in masks]

        def batched(pieces: tuple[Tensor, ...], level: int) -> Tensor:
            n = lengths[level]
            steps = [p.shape[0] - gap for p in pieces[level * batch : (level + 1) * batch]]  # T_lb, gaps dropped
            return torch.stack([F.pad(p[:k], (0, 0, 0, n - k)) for p, k in zip(pieces[level * batch :], steps)])

        cls_logits = [batched(cls_pieces, level) for level in levels]  # [B, T_l, K]
        offsets = [batched(offset_pieces, level) for level in levels]  # [B, T_l, 2]
        points = make_points(lengths, cfg.strides, cfg.regression_ranges, device=features.device).split(lengths)
        return HeadOutput(cls_logits=cls_logits, offsets=offsets, masks=masks, points=list(points))

    def loss(
        self,
        out: HeadOutput,
        gt_segments: list[Tensor],  # per video [N_i, 2] (start, end) in feature steps
        gt_labels: list[Tensor],  # per video [N_i] long
    ) -> dict[str, Tensor]:
        """Focal loss over every valid point and class plus DIoU loss over the positive
        points, both summed and divided by the running mean of the number of positives
        (updated in training mode only). Keys: "cls", "reg", "loss" (the weighted sum)."""
        cfg = self.cfg
        logits = torch.cat(out.cls_logits, dim=1).float()  # [B, P, K]
        offsets = torch.cat(out.offsets, dim=1).float()  # [B, P, 2]
        valid = torch.cat(out.masks, dim=1)  # [B, P]
        points = torch.cat(out.points, dim=0)  # [P, 4]
        batch = logits.shape[0]
        if len(gt_segments) != batch or len(gt_labels) != batch:
            raise ValueError(
                f"ActionFormerHead.loss: one gt_segments and gt_labels entry per video expected "
                f"({batch}), got {len(gt_segments)} and {len(gt_labels)}"
            )
        cls_targets, reg_targets = [], []
        for segments, labels in zip(gt_segments, gt_labels):
            if segments.ndim != 2 or segments.shape[1] != 2:
                raise ValueError(f"ActionFormerHead.loss: gt_segments entries must be [N, 2], got {tuple(segments.shape)}")
            c, r = assign_targets(
                points,
                segments.to(points.device),
                labels.to(points.device),
                cfg.num_classes,
                cfg.center_sample,
                cfg.center_sample_radius,
            )
            cls_targets.append(c)
            reg_targets.append(r)
        cls_target = torch.stack(cls_targets)  # [B, P, K]
        reg_target = torch.stack(reg_targets)  # [B, P, 2]
        positive = valid & (cls_target.sum(dim=-1) > 0)  # [B, P]

        if self.training:
            # In a process group, the positives of every rank's part of the global batch:
            # the loss is then the single process's, whatever the split (e2etal.distributed).
            num_positive = distributed.all_reduce_sum(positive.sum().to(self.loss_norm.dtype)).clamp(min=1)
            self.loss_norm.mul_(cfg.loss_norm_momentum).add_((1 - cfg.loss_norm_momentum) * num_positive)
        norm = self.loss_norm.detach()

        cls_target = cls_target * (1 - cfg.label_smoothing) + cfg.label_smoothing / (cfg.num_classes + 1)
        cls_loss = sigmoid_focal_loss(logits[valid], cls_target[valid], cfg.focal_alpha, cfg.focal_gamma).sum() / norm
        # The zero term keeps the regression branch in the graph when a batch has no
        # positive, so every parameter still gets a (zero) gradient, as DDP requires.
        reg_loss = diou_loss_1d(offsets[positive], reg_target[positive]).sum() / norm + 0.0 * offsets.sum()
        return {"cls": cls_loss, "reg": reg_loss, "loss": cls_loss + cfg.reg_loss_weight * reg_loss}

    @torch.no_grad()
    def decode(self, out: HeadOutput) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Every video's candidate segments, not yet suppressed: per video segments [M, 2]
        (input feature steps), scores [M], labels [M].

        Per level, as ActionFormer's `inference_single_video`: every (point, class) whose
        sigmoid probability exceeds cfg.pre_nms_threshold, at most cfg.pre_nms_topk of
        them (best first), decoded as (t - left * stride, t + right * stride); segments
        not longer than cfg.min_segment_length are dropped. Suppression is a separate
        step (e2etal.postprocess), run once per video on the candidates of all its
        windows, in seconds."""
        cfg = self.cfg
        batch = out.cls_logits[0].shape[0]
        results = []
        for b in range(batch):
            segments, scores, labels = [], [], []
            for logits, offsets, mask, points in zip(out.cls_logits, out.offsets, out.masks, out.points):
                prob = (torch.sigmoid(logits[b].float()) * mask[b, :, None]).flatten()  # [T_l * K]
                candidates = torch.nonzero(prob > cfg.pre_nms_threshold).squeeze(1)  # [M_l]
                score, order = prob[candidates].sort(descending=True, stable=True)
                score, candidates = score[: cfg.pre_nms_topk], candidates[order[: cfg.pre_nms_topk]]
                point = points[candidates // cfg.num_classes]  # [M_l, 4]
                offset = offsets[b, candidates // cfg.num_classes].float()  # [M_l, 2]
                segment = torch.stack(
                    [point[:, 0] - offset[:, 0] * point[:, 3], point[:, 0] + offset[:, 1] * point[:, 3]], dim=1
                )  # [M_l, 2]
                keep = (segment[:, 1] - segment[:, 0]) > cfg.min_segment_length
                segments.append(segment[keep])
                scores.append(score[keep])
                labels.append((candidates % cfg.num_classes)[keep])
            results.append((torch.cat(segments), torch.cat(scores), torch.cat(labels)))
        return results


def build_head(cfg: HeadConfig) -> ActionFormerHead:
    return ActionFormerHead(cfg)
