"""Interop with other libraries' checkpoints: Hugging Face gpt2, llama, bert and t5, both ways."""

from lmforge.interop.hf import (
    FAMILIES,
    SUPPORTED_ARCHITECTURES,
    config_from_hf,
    config_to_hf,
    export_hf,
    import_hf,
    read_hf_state,
    state_from_hf,
    state_to_hf,
)

__all__ = [
    "FAMILIES",
    "SUPPORTED_ARCHITECTURES",
    "config_from_hf",
    "config_to_hf",
    "export_hf",
    "import_hf",
    "read_hf_state",
    "state_from_hf",
    "state_to_hf",
]
