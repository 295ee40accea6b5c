"""Interop with other libraries' checkpoints: Hugging Face gpt2, llama, bert and t5, both ways;
GGUF files (llama.cpp, Ollama) of the llama and gpt2 architectures, both ways. Each family's
traits, config keys and GGUF names come from the family table (`lmforge.config.families`)."""

from lmforge.interop.gguf import SUPPORTED_GGUF_ARCHITECTURES, config_from_gguf, import_gguf
from lmforge.interop.gguf_file import GGUFFile, read_gguf
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
    "GGUFFile",
    "SUPPORTED_GGUF_ARCHITECTURES",
    "SUPPORTED_ARCHITECTURES",
    "config_from_gguf",
    "config_from_hf",
    "config_to_hf",
    "export_hf",
    "import_gguf",
    "import_hf",
    "read_gguf",
    "read_hf_state",
    "state_from_hf",
    "state_to_hf",
]
