"""Configs as plain dataclasses, named presets, each family's traits (`families`), YAML/JSON load
and `key=value` overrides."""

from lmforge.config.families import FAMILIES
from lmforge.config.model import ModelConfig
from lmforge.config.presets import PRESETS

__all__ = ["FAMILIES", "ModelConfig", "PRESETS"]
