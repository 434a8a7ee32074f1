"""Detection heads that turn a sequence of features into scored segments (feature steps)."""

from e2etal.heads.actionformer import ActionFormerHead, HeadOutput, build_head, padded_length
from e2etal.heads.config import HeadConfig

__all__ = ["ActionFormerHead", "HeadConfig", "HeadOutput", "build_head", "padded_length"]
