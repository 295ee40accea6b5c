"""The family table (`lmforge.config.families`) is the one home of each family's traits.

Checked against the references: a family's preset, the import of the config that transformers'
own config class writes, and the import of a GGUF file whose metadata the `gguf` package writes
all agree on every trait of the table; the table's keys and defaults are transformers' and
llama.cpp's own; and an export refuses a config that differs from the table in any trait.
"""

from __future__ import annotations

import gguf
import pytest
import transformers

from lmforge.config import PRESETS, ModelConfig
from lmforge.config.families import FAMILIES, Family
from lmforge.errors import CheckpointError
from lmforge.interop import config_from_gguf, config_from_hf, config_to_hf, read_gguf
from lmforge.interop.gguf import gguf_format

# family -> (its tiny preset, a transformers config class and architecture, small sizes)
HF = {
    "gpt2": ("gpt-tiny", "GPT2Config", "GPT2LMHeadModel", dict(n_embd=64, n_layer=2, n_head=2)),
    "llama": (
        "llama-tiny",
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    ),
    "bert": (
        "bert-tiny",
        "BertConfig",
        "BertForPreTraining",
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2),
    ),
    "t5": ("t5-tiny", "T5Config", "T5ForConditionalGeneration", dict(d_model=64, num_layers=2)),
}


# keys of older config.json files that transformers' config class no longer sets
LEGACY_KEYS = {("t5", "n_positions")}


def _gguf_file(tmp_path, arch: str):
    """A GGUF file holding only metadata, written with the `gguf` package's own key names."""
    path = tmp_path / f"{arch}.gguf"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_block_count(2)
    w.add_feed_forward_length(256)
    w.add_head_count(4)
    if arch == "llama":
        w.add_head_count_kv(2)
        w.add_rope_dimension_count(16)
        w.add_layer_norm_rms_eps(1e-5)
    else:
        w.add_layer_norm_eps(1e-5)
    w.add_token_list([f"t{i}" for i in range(100)])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return read_gguf(path)


def _traits(family: Family) -> dict:
    fixed = family.gguf.fixed if family.gguf else {}
    out = dict(family.traits)
    out.update({k: v for k, v in fixed.items() if not isinstance(v, frozenset)})
    return out


@pytest.mark.parametrize("name", sorted(HF))
def test_preset_hf_import_and_gguf_import_agree_on_every_trait(tmp_path, name):
    family = FAMILIES[name]
    preset, cls, arch, sizes = HF[name]
    hf_dict = getattr(transformers, cls)(architectures=[arch], **sizes).to_dict()
    configs = {
        "preset": ModelConfig.from_preset(preset),
        "hf import": config_from_hf(hf_dict),
    }
    if family.gguf is not None:
        f = _gguf_file(tmp_path, family.gguf.arch)
        configs["gguf import"] = config_from_gguf(f.metadata, f)
    for where, cfg in configs.items():
        for trait, want in _traits(family).items():
            assert getattr(cfg, trait) == want, (where, trait)
    # the preset's further choices are the table's too
    for field, want in family.preset.items():
        assert getattr(configs["preset"], field) == want, field


@pytest.mark.parametrize("name", sorted(HF))
def test_hf_keys_and_defaults_are_transformers_own(name):
    """Every key the table maps exists in transformers' config class, with its default."""
    family = FAMILIES[name]
    _, cls, _, _ = HF[name]
    defaults = getattr(transformers, cls)().to_dict()
    keys = dict(family.hf.fields)
    if family.hf.activation is not None:
        keys["activation"] = family.hf.activation
    for field, key in keys.items():
        if (name, key.name) in LEGACY_KEYS:
            continue
        assert key.name in defaults, (field, key.name)
        if key.default is not None:
            assert defaults[key.name] == key.default, (field, key.name)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_gguf_keys_are_llama_cpp_own(name):
    """Every metadata key the table maps is one of the `gguf` package's constants."""
    fmt = FAMILIES[name].gguf
    known = set()
    for group in (gguf.Keys.LLM, gguf.Keys.Attention, gguf.Keys.Rope):
        known |= {v.replace("{arch}", fmt.arch) for k, v in vars(group).items() if k.isupper()}
    for _, key in fmt.fields:
        assert f"{fmt.arch}.{key.name}" in known, key.name
    tensor_names = {n for n in gguf.TENSOR_NAMES.values()}
    for theirs in [*fmt.tensors, *(f"blk.{{bid}}.{t}" for t in fmt.block_tensors)]:
        assert theirs in tensor_names, theirs


def _other(value):
    """Another valid value of a trait."""
    options = {
        "decoder": "encoder",
        "encoder": "decoder",
        "encoder-decoder": "decoder",
        "learned": "alibi",
        "rope": "alibi",
        "relative": "alibi",
        "sinusoidal": "alibi",
        "layernorm": "rmsnorm",
        "rmsnorm": "layernorm",
        "pre": "post",
        "post": "pre",
        "mlp": "glu",
        "glu": "mlp",
        "silu": "relu",
        None: 0.5,
        1.0: None,
        0: 2,
    }
    if isinstance(value, bool):
        return not value
    return options[value]


@pytest.mark.parametrize(
    "name, trait",
    [(n, t) for n in sorted(HF) for t in _traits(FAMILIES[n])],
)
def test_a_config_that_differs_in_one_trait_is_not_exported_as_that_family(name, trait):
    family = FAMILIES[name]
    preset = HF[name][0]
    value = _other(family.traits.get(trait, family.gguf.fixed.get(trait) if family.gguf else None))
    changes = {trait: value}
    if trait == "arch":  # keep the heads valid for the new arch
        changes["heads"] = ("lm",) if value == "decoder" else ("mlm",)
    if trait == "sliding_window":
        changes[trait] = 8
    if trait == "pos" and value == "alibi" and PRESETS[preset]["arch"] == "encoder-decoder":
        changes[trait] = "sinusoidal"
    cfg = ModelConfig.from_preset(preset, **changes)
    if trait in family.traits:
        try:
            hf = config_to_hf(cfg)
        except CheckpointError:
            hf = None
        assert hf is None or hf["model_type"] != family.hf.model_type, changes
    if family.gguf is not None:
        try:
            arch = gguf_format(cfg).arch
        except CheckpointError:
            arch = None
        assert arch != family.gguf.arch, changes
