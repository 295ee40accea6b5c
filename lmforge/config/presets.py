"""Named model presets, kept as plain data (each is a dict of `ModelConfig` fields).

A family is a set of choices, not a class: the presets below differ only in their values.
Sizes follow the shapes users know (GPT-2 small = 124M parameters); the `*-tiny` presets exist for
tests and the `*-mini` presets train on a laptop CPU in minutes.
"""

from __future__ import annotations

from typing import Any

from lmforge.config.families import BERT, GPT2, LLAMA, T5, TRANSFORMER

# each family's traits and the presets' further choices live in one table (`families.py`),
# which Hugging Face and GGUF import/export read too
_GPT = GPT2.preset_fields()
_LLAMA = LLAMA.preset_fields()
_BERT = BERT.preset_fields()
_TRANSFORMER = TRANSFORMER.preset_fields()
_T5 = T5.preset_fields()

PRESETS: dict[str, dict[str, Any]] = {
    # decoder-only, GPT-2 style
    "gpt-tiny": {
        **_GPT,
        "vocab_size": 512,
        "n_layer": 2,
        "n_head": 2,
        "d_model": 64,
        "max_seq_len": 64,
    },
    "gpt-mini": {
        **_GPT,
        "vocab_size": 8192,
        "n_layer": 6,
        "n_head": 5,
        "d_model": 320,
        "max_seq_len": 256,
    },
    "gpt2": {
        **_GPT,
        "vocab_size": 50257,
        "n_layer": 12,
        "n_head": 12,
        "d_model": 768,
        "max_seq_len": 1024,
    },
    # decoder-only, Llama style
    "llama-tiny": {
        **_LLAMA,
        "vocab_size": 512,
        "n_layer": 2,
        "n_head": 4,
        "n_kv_head": 2,
        "d_model": 64,
        "d_ff": 176,
        "max_seq_len": 64,
    },
    "llama-mini": {
        **_LLAMA,
        "vocab_size": 8192,
        "n_layer": 6,
        "n_head": 6,
        "n_kv_head": 2,
        "d_model": 288,
        "d_ff": 768,
        "max_seq_len": 256,
    },
    # encoder-only, BERT style
    "bert-tiny": {
        **_BERT,
        "vocab_size": 512,
        "n_layer": 2,
        "n_head": 2,
        "d_model": 64,
        "max_seq_len": 128,
    },
    "bert-mini": {
        **_BERT,
        "vocab_size": 8192,
        "n_layer": 4,
        "n_head": 4,
        "d_model": 256,
        "max_seq_len": 256,
    },
    "bert-base": {
        **_BERT,
        "vocab_size": 30522,
        "n_layer": 12,
        "n_head": 12,
        "d_model": 768,
        "max_seq_len": 512,
    },
    # encoder-decoder
    "transformer-tiny": {
        **_TRANSFORMER,
        "vocab_size": 512,
        "n_layer": 2,
        "n_head": 2,
        "d_model": 64,
        "max_seq_len": 128,
    },
    "t5-tiny": {
        **_T5,
        "vocab_size": 512,
        "n_layer": 2,
        "n_head": 2,
        "d_model": 64,
        "d_ff": 128,
        "max_seq_len": 128,
    },
    "t5-mini": {
        **_T5,
        "vocab_size": 8192,
        "n_layer": 4,
        "n_head": 4,
        "d_model": 256,
        "d_ff": 1024,
        "max_seq_len": 256,
    },
}
