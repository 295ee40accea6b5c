"""Longer context: context-extension recipes on RoPE scalings, and probes that measure them."""

from lmforge.longctx.extend import METHODS, extended_config
from lmforge.longctx.probes import (
    PasskeyResult,
    PplByLength,
    passkey_probe,
    plot_passkey,
    plot_ppl,
    ppl_by_length,
)
from lmforge.longctx.streaming import StreamResult, streaming_perplexity

__all__ = [
    "METHODS",
    "PasskeyResult",
    "PplByLength",
    "StreamResult",
    "extended_config",
    "passkey_probe",
    "plot_passkey",
    "plot_ppl",
    "ppl_by_length",
    "streaming_perplexity",
]
