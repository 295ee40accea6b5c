"""Config validation and overrides: each mistake gets one clear sentence."""

from __future__ import annotations

import pytest

from lmforge.config import PRESETS, ModelConfig
from lmforge.config.train import parse_overrides, split_values
from lmforge.errors import ConfigError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    cfg = ModelConfig.from_preset(name)
    assert cfg.head_dim * cfg.n_head > 0
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_gpt_presets_have_the_shapes_users_know():
    from lmforge.models import Transformer

    assert 120e6 < Transformer(ModelConfig.from_preset("gpt2")).num_parameters() < 130e6
    assert 8e6 < Transformer(ModelConfig.from_preset("gpt-mini")).num_parameters() < 12e6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_layr": 2}, "did you mean 'n_layer'"),
        ({"n_head": 3}, "not divisible"),
        ({"n_head": 4, "n_kv_head": 3}, "multiple of n_kv_head"),
        ({"dropout": 1.5}, "dropout"),
        ({"pos": "rotary"}, "pos"),
        ({"heads": ["mlm"]}, "do not fit"),
    ],
)
def test_model_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_preset("gpt-tiny", **kwargs)


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="did you mean 'gpt-mini'.*available presets"):
        ModelConfig.from_preset("gpt-mni")


def test_overrides_parse_and_split():
    values = parse_overrides(["lr=3e-4", "n_layer=3", "model.dropout=0.1", "compile=true"])
    train, model = split_values(values)
    assert train == {"lr": 3e-4, "compile": True}
    assert model == {"n_layer": 3, "dropout": 0.1}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])
    with pytest.raises(ConfigError, match="unknown config key 'max_step'.*max_steps"):
        split_values({"max_step": 3})
