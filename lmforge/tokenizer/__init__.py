"""Train, load and save tokenizers (byte-level BPE and BERT-style WordPiece), and stream-decode.

Example:
    >>> from lmforge.tokenizer import train_tokenizer, Tokenizer
    >>> tok = train_tokenizer(["some text", "more text"], vocab_size=300)
    >>> tok.decode(tok.encode("héllo 🌍")) == "héllo 🌍"
    True
    >>> tok.save("out/tokenizer")  # tokenizer.json + tokenizer_config.json
    >>> tok = Tokenizer.load("out/tokenizer")
"""

from lmforge.tokenizer.chat import (
    DEFAULT_CHAT_STOPS,
    DEFAULT_CHAT_TEMPLATE,
    chat_stops,
    encode_chat,
    render_chat,
)
from lmforge.tokenizer.core import PairEncoding, Tokenizer, TokenizerKind
from lmforge.tokenizer.specials import BPE_SPECIALS, ROLES, WORDPIECE_SPECIALS, Role
from lmforge.tokenizer.stream import IncrementalDecoder
from lmforge.tokenizer.trainer import train_tokenizer

__all__ = [
    "BPE_SPECIALS",
    "DEFAULT_CHAT_STOPS",
    "DEFAULT_CHAT_TEMPLATE",
    "ROLES",
    "WORDPIECE_SPECIALS",
    "IncrementalDecoder",
    "PairEncoding",
    "Role",
    "Tokenizer",
    "chat_stops",
    "encode_chat",
    "render_chat",
    "TokenizerKind",
    "train_tokenizer",
]
