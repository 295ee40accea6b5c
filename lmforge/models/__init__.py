"""The config-driven Transformer core: attention, positions, blocks, stacks, heads, cache."""

from lmforge.models.attention import Attention, attention
from lmforge.models.cache import KVCache
from lmforge.models.heads import ModelOutput
from lmforge.models.io import is_model_dir, load_model, save_model
from lmforge.models.transformer import Transformer

__all__ = [
    "Attention",
    "KVCache",
    "ModelOutput",
    "Transformer",
    "attention",
    "is_model_dir",
    "load_model",
    "save_model",
]
