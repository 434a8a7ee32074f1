"""Video backbones: VideoMAE / VideoMAEv2 ViTs (LoSA) and TSM-ResNets (LoFi), with one
interface (`layout`), presets by name (`factory`), and checkpoint conversion for all of
them in one place (`checkpoint`).
"""

from e2etal.backbones.checkpoint import (
    canonical_resnet_state_dict,
    canonical_vit_state_dict,
    infer_vit_config,
    load_backbone_checkpoint,
    read_checkpoint,
    vit_from_checkpoint,
)
from e2etal.backbones.factory import (
    BACKBONES,
    VIT_BACKBONES,
    Backbone,
    BackboneConfig,
    build_backbone,
    file_sha256,
    module_sha256,
)
from e2etal.backbones.layout import IMAGENET_MEAN, IMAGENET_STD, TapFn, TapLayout
from e2etal.backbones.tsm_resnet import TSMResNet, temporal_shift, tsm_resnet18, tsm_resnet50
from e2etal.backbones.vit import (
    VisionTransformer,
    default_taps,
    position_table,
    sinusoid_table,
    vit_base,
    vit_giant,
    vit_huge,
    vit_large,
    vit_small,
    vit_tiny,
)

__all__ = [
    "BACKBONES",
    "VIT_BACKBONES",
    "Backbone",
    "BackboneConfig",
    "build_backbone",
    "file_sha256",
    "module_sha256",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TapFn",
    "TapLayout",
    "TSMResNet",
    "VisionTransformer",
    "canonical_resnet_state_dict",
    "canonical_vit_state_dict",
    "default_taps",
    "infer_vit_config",
    "load_backbone_checkpoint",
    "position_table",
    "read_checkpoint",
    "sinusoid_table",
    "temporal_shift",
    "tsm_resnet18",
    "tsm_resnet50",
    "vit_base",
    "vit_from_checkpoint",
    "vit_giant",
    "vit_huge",
    "vit_large",
    "vit_small",
    "vit_tiny",
]
