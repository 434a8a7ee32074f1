"""Defaults said to follow ActionFormer equal the values in its release
(happyharrycn/actionformer_release, commit 61ea7eb): `libs/core/config.py` DEFAULTS with
`configs/thumos_i3d.yaml` merged over them, and the constants its modules hard-code. The
table below was read off those files; each entry names its key."""

from pathlib import Path

import pytest

from e2etal.config import load_config
from e2etal.engine.trainer import TrainConfig
from e2etal.experiment import ExperimentConfig
from e2etal.heads import HeadConfig
from e2etal.postprocess import PostprocessConfig

# (our field, ActionFormer's value, where it comes from)
HEAD = [
    ("input_dim", 2048, "thumos: dataset.input_dim"),
    ("num_classes", 20, "thumos: dataset.num_classes"),
    ("embed_dim", 512, "default: model.embd_dim"),
    ("embed_kernel_size", 3, "default: model.embd_kernel_size"),
    ("embed_layers", 2, "default: model.backbone_arch[0]"),
    ("stem_layers", 2, "default: model.backbone_arch[1]"),
    ("branch_layers", 5, "default: model.backbone_arch[2]"),
    ("window_size", 19, "thumos: model.n_mha_win_size"),
    ("num_heads", 4, "default: model.n_head"),
    ("mlp_ratio", 4, "blocks.py TransformerBlock: n_hidden = 4 * n_embd"),
    ("dropout", 0.0, "default: train_cfg.dropout"),
    ("drop_path", 0.1, "default: train_cfg.droppath"),
    ("layer_scale_init", 1e-4, "blocks.py AffineDropPath: init_scale_value"),
    ("head_dim", 512, "default: model.head_dim"),
    ("head_layers", 3, "default: model.head_num_layers"),
    ("head_kernel_size", 3, "default: model.head_kernel_size"),
    ("prior_prob", 0.01, "thumos: train_cfg.cls_prior_prob"),
    ("regression_ranges", ((0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 10000)), "default: model.regression_range"),
    ("center_sample", True, "thumos: train_cfg.center_sample = radius"),
    ("center_sample_radius", 1.5, "thumos: train_cfg.center_sample_radius"),
    ("focal_alpha", 0.25, "losses.py sigmoid_focal_loss"),
    ("focal_gamma", 2.0, "losses.py sigmoid_focal_loss"),
    ("reg_loss_weight", 1.0, "default: train_cfg.loss_weight"),
    ("loss_norm_init", 100.0, "thumos: train_cfg.init_loss_norm"),
    ("loss_norm_momentum", 0.9, "meta_archs.py: loss_normalizer_momentum"),
    ("label_smoothing", 0.0, "default: train_cfg.label_smoothing"),
    ("max_seq_len", 2304, "thumos: dataset.max_seq_len"),
    ("pre_nms_threshold", 0.001, "default: test_cfg.pre_nms_thresh"),
    ("pre_nms_topk", 2000, "thumos: test_cfg.pre_nms_topk"),
    ("min_segment_length", 0.05, "default: test_cfg.duration_thresh"),
]
POSTPROCESS = [
    ("method", "soft", "default: test_cfg.nms_method"),
    ("iou_threshold", 0.1, "default: test_cfg.iou_threshold"),
    ("sigma", 0.5, "default: test_cfg.nms_sigma"),
    ("min_score", 0.001, "thumos: test_cfg.min_score"),
    ("max_segments", 200, "thumos: test_cfg.max_seg_num"),
    ("voting_iou", 0.7, "thumos: test_cfg.voting_thresh"),
    ("class_agnostic", False, "thumos: test_cfg.multiclass_nms = True"),
]
TRAIN = [
    ("lr", 1e-4, "thumos: opt.learning_rate"),
    ("weight_decay", 0.05, "thumos: opt.weight_decay"),
    ("batch_size", 2, "thumos: loader.batch_size"),
    ("warmup_epochs", 5, "default: opt.warmup_epochs"),
    ("epochs", 35, "thumos: opt.epochs 30 + warmup_epochs 5 (train.py max_epochs)"),
    ("clip_grad_norm", 1.0, "thumos: train_cfg.clip_grad_l2norm"),
    ("ema_decay", 0.999, "train_utils.py ModelEma: decay"),
]

PRESET = Path(__file__).resolve().parents[1] / "configs" / "thumos14_i3d.yaml"


@pytest.mark.parametrize("cls, table", [(HeadConfig, HEAD), (PostprocessConfig, POSTPROCESS), (TrainConfig, TRAIN)],
                         ids=["head", "postprocess", "train"])
def test_defaults_are_actionformers_thumos14_setting(cls, table):
    cfg = cls()
    wrong = [f"{name} = {getattr(cfg, name)!r}, ActionFormer {value!r} ({source})"
             for name, value, source in table if getattr(cfg, name) != value]
    assert not wrong


def test_thumos14_i3d_preset_is_actionformers_setting():
    cfg = load_config(ExperimentConfig, PRESET)
    tables = [(cfg.model, HEAD), (cfg.model.postprocess, POSTPROCESS), (cfg.train, TRAIN)]
    wrong = [f"{name} = {getattr(section, name)!r}, ActionFormer {value!r} ({source})"
             for section, table in tables for name, value, source in table if getattr(section, name) != value]
    assert not wrong
    assert (cfg.data.stride_frames, cfg.data.clip_frames, cfg.data.max_seq_len) == (4, 16, 2304)
    assert (cfg.data.crop_keep_ratio, cfg.data.crop_ratio) == (0.5, (0.9, 1.0))  # dataset.trunc_thresh, crop_ratio
