"""A synthetic untrimmed-video world with exact ground truth (no dataset can be downloaded here).

>>> from e2etal.synthetic import WorldConfig, make_world, make_trimmed_clips
>>> root = make_world("synth", WorldConfig(), seed=0)          # videos/*.mp4, annotations.json
>>> clips, labels = make_trimmed_clips(WorldConfig(), n=600)   # for pretraining a backbone

Action classes differ only in how objects move over time; see docs/synthetic.md.
"""

from e2etal.synthetic.motions import ACTION_CLASSES, CLASS_NAMES, ActionClass, mirror_label_ids
from e2etal.synthetic.pretrain import fit_clip_classifier, mirror_flip
from e2etal.synthetic.world import (
    WorldConfig,
    make_trimmed_clips,
    make_world,
    render_clip,
    render_video,
    video_codec,
    write_mp4,
    write_trimmed_clips,
)

__all__ = [
    "ACTION_CLASSES",
    "CLASS_NAMES",
    "ActionClass",
    "WorldConfig",
    "fit_clip_classifier",
    "make_trimmed_clips",
    "make_world",
    "mirror_label_ids",
    "mirror_flip",
    "render_clip",
    "render_video",
    "video_codec",
    "write_mp4",
    "write_trimmed_clips",
]
