"""Configuration of the ActionFormer-style detection head.

The defaults are ActionFormer's published THUMOS-14 setting (I3D features, 2048-d): its
`configs/thumos_i3d.yaml` merged over the release's defaults in `libs/core/config.py`
(happyharrycn/actionformer_release, commit 61ea7eb). Each comment below names the key a
value comes from: `thumos:` for the THUMOS-14 config, `default:` for config.py, or the
module that hard-codes it. Every length here is in feature-grid units: one unit is one
input feature step, whatever its duration in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from e2etal.postprocess import PostprocessConfig

THUMOS14_REGRESSION_RANGES: tuple[tuple[float, float], ...] = (
    (0.0, 4.0),
    (4.0, 8.0),
    (8.0, 16.0),
    (16.0, 32.0),
    (32.0, 64.0),
    (64.0, 10000.0),
)


@dataclass
class HeadConfig:
    # Input and width.
    input_dim: int = 2048  # channels of the input features (thumos: dataset.input_dim)
    embed_dim: int = 512  # width of the embedding and of the transformer pyramid (default: model.embd_dim)
    num_classes: int = 20  # thumos: dataset.num_classes

    # Embedding: masked conv + LayerNorm + ReLU layers at full resolution.
    embed_layers: int = 2  # default: model.backbone_arch[0]
    embed_kernel_size: int = 3  # default: model.embd_kernel_size

    # Transformer pyramid: `stem_layers` blocks at full resolution, then `branch_layers`
    # blocks that each halve the length; level 0 is the stem's output, level l the l-th
    # branch block's, so there are 1 + branch_layers levels with strides 1, 2, 4, ...
    stem_layers: int = 2  # default: model.backbone_arch[1]
    branch_layers: int = 5  # default: model.backbone_arch[2]
    # Local self-attention span (odd): |i - j| <= window_size // 2 at each level
    # (thumos: model.n_mha_win_size).
    window_size: int = 19
    num_heads: int = 4  # default: model.n_head
    mlp_ratio: int = 4  # libs/modeling/blocks.py TransformerBlock: n_hidden = 4 * n_embd
    drop_path: float = 0.1  # default: train_cfg.droppath
    # Residual branches are multiplied by a learnable per-channel scale starting here
    # (blocks.py AffineDropPath, init_scale_value 1e-4, used whenever drop_path > 0);
    # None = no scale.
    layer_scale_init: float | None = 1e-4
    # Dropout after the attention projection and in the MLP (default: train_cfg.dropout,
    # which the THUMOS-14 and ActivityNet configs do not override).
    dropout: float = 0.0

    # Classification and regression towers, shared across levels. `head_layers` counts
    # the output conv, as ActionFormer's head_num_layers does: head_layers - 1 blocks of
    # conv + LayerNorm + ReLU, then one conv to the outputs.
    head_dim: int = 512  # default: model.head_dim
    head_layers: int = 3  # default: model.head_num_layers
    head_kernel_size: int = 3  # default: model.head_kernel_size
    # Initial foreground probability of every class logit (thumos: train_cfg.cls_prior_prob).
    prior_prob: float = 0.01

    # Target assignment (feature units; see heads.targets).
    regression_ranges: tuple[tuple[float, float], ...] = THUMOS14_REGRESSION_RANGES  # default: model.regression_range
    center_sample: bool = True  # thumos: train_cfg.center_sample = radius
    center_sample_radius: float = 1.5  # in units of the level's stride (thumos: train_cfg.center_sample_radius)

    # Losses.
    focal_alpha: float = 0.25  # libs/modeling/losses.py sigmoid_focal_loss
    focal_gamma: float = 2.0  # same
    reg_loss_weight: float = 1.0  # default: train_cfg.loss_weight
    loss_norm_init: float = 100.0  # initial EMA of the number of positives (thumos: train_cfg.init_loss_norm)
    loss_norm_momentum: float = 0.9  # meta_archs.py PtTransformer: loss_normalizer_momentum
    label_smoothing: float = 0.0  # default: train_cfg.label_smoothing

    # Training sequences are cropped/padded to this many feature steps by the data
    # pipeline; it must be a valid input length (a multiple of the largest stride).
    max_seq_len: int = 2304  # thumos: dataset.max_seq_len

    # Decoding (`ActionFormerHead.decode`), per pyramid level: the (point, class) pairs
    # whose probability exceeds pre_nms_threshold, at most pre_nms_topk of them, and of
    # those the segments longer than min_segment_length (feature units).
    pre_nms_threshold: float = 0.001  # default: test_cfg.pre_nms_thresh
    pre_nms_topk: int = 2000  # thumos: test_cfg.pre_nms_topk
    min_segment_length: float = 0.05  # default: test_cfg.duration_thresh
    # Suppression of a video's pooled candidates, in seconds.
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    @property
    def num_levels(self) -> int:
        return 1 + self.branch_layers

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride of each pyramid level, in input feature steps."""
        return tuple(2**level for level in range(self.num_levels))

    @property
    def max_stride(self) -> int:
        return 2 ** (self.num_levels - 1)

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise ValueError(f"HeadConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        for name in ("input_dim", "embed_dim", "num_classes", "num_heads", "mlp_ratio", "head_dim", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(name, "a positive integer")
        for name in ("embed_layers", "stem_layers", "branch_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                fail(name, "an integer >= 0")
        if self.head_layers < 1:
            fail("head_layers", "an integer >= 1 (it counts the output conv)")
        for name in ("embed_kernel_size", "head_kernel_size", "window_size"):
            value = getattr(self, name)
            if value < 1 or value % 2 == 0:
                fail(name, "a positive odd integer (windows are centred)")
        if self.embed_dim % self.num_heads:
            fail("embed_dim", f"a multiple of num_heads = {self.num_heads}")
        if not 0.0 <= self.drop_path < 1.0:
            fail("drop_path", "a probability in [0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            fail("dropout", "a probability in [0, 1)")
        if self.layer_scale_init is not None and not self.layer_scale_init > 0:
            fail("layer_scale_init", "a positive number or None")
        if not 0.0 < self.prior_prob < 1.0:
            fail("prior_prob", "a probability in (0, 1)")
        ranges = tuple(tuple(r) for r in self.regression_ranges)
        if len(ranges) != self.num_levels:
            raise ValueError(
                f"HeadConfig.regression_ranges: expected one (low, high) pair per pyramid level "
                f"(1 + branch_layers = {self.num_levels}), got {len(ranges)}: {ranges!r}"
            )
        for level, r in enumerate(ranges):
            if len(r) != 2 or not 0 <= r[0] < r[1]:
                raise ValueError(f"HeadConfig.regression_ranges[{level}]: expected (low, high) with 0 <= low < high, got {r!r}")
        self.regression_ranges = tuple((float(lo), float(hi)) for lo, hi in ranges)
        if not self.center_sample_radius > 0:
            fail("center_sample_radius", "a positive number (in strides)")
        if not self.focal_alpha < 1.0:
            fail("focal_alpha", "a weight in [0, 1), or negative to disable class balancing")
        if not self.focal_gamma >= 0:
            fail("focal_gamma", "a number >= 0")
        if not self.reg_loss_weight >= 0:
            fail("reg_loss_weight", "a number >= 0")
        if not self.loss_norm_init > 0:
            fail("loss_norm_init", "a positive number")
        if not 0.0 <= self.loss_norm_momentum < 1.0:
            fail("loss_norm_momentum", "a momentum in [0, 1)")
        if not 0.0 <= self.label_smoothing < 1.0:
            fail("label_smoothing", "a number in [0, 1)")
        if self.max_seq_len % self.max_stride:
            fail("max_seq_len", f"a multiple of the largest stride {self.max_stride} (2 ** branch_layers)")
        if not self.min_segment_length >= 0:
            fail("min_segment_length", "a length >= 0 in feature steps")
        if not 0.0 <= self.pre_nms_threshold < 1.0:
            fail("pre_nms_threshold", "a probability in [0, 1)")
        if isinstance(self.pre_nms_topk, bool) or not isinstance(self.pre_nms_topk, int) or self.pre_nms_topk < 1:
            fail("pre_nms_topk", "a positive integer")
