"""Configs as plain dataclasses, named presets, YAML/JSON load and `key=value` overrides."""

from lmforge.config.model import ModelConfig
from lmforge.config.presets import PRESETS

__all__ = ["ModelConfig", "PRESETS"]
