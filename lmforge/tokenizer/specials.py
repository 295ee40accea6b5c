"""Special-token roles: the tokens lmforge trains with and the well-known names it recognises."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

Role = Literal["bos", "eos", "pad", "unk", "mask", "cls", "sep"]

#: Every role a tokenizer may fill, in the order they are saved.
ROLES: tuple[Role, ...] = ("bos", "eos", "pad", "unk", "mask", "cls", "sep")

#: Byte-level BPE special tokens; their position in this dict is their id (0..4).
BPE_SPECIALS: dict[Role, str] = {
    "bos": "<|bos|>",
    "eos": "<|eos|>",
    "pad": "<|pad|>",
    "unk": "<|unk|>",
    "mask": "<|mask|>",
}

#: BERT-style WordPiece special tokens; their position in this dict is their id (0..4).
WORDPIECE_SPECIALS: dict[Role, str] = {
    "pad": "[PAD]",
    "unk": "[UNK]",
    "cls": "[CLS]",
    "sep": "[SEP]",
    "mask": "[MASK]",
}

# Token strings that mean a role in common tokenizers, used only when no config names the roles.
# Earlier entries win when a vocabulary holds several candidates for the same role.
_WELL_KNOWN: tuple[tuple[str, tuple[Role, ...]], ...] = (
    ("<|bos|>", ("bos",)),
    ("<|eos|>", ("eos",)),
    ("<|pad|>", ("pad",)),
    ("<|unk|>", ("unk",)),
    ("<|mask|>", ("mask",)),
    ("<|endoftext|>", ("bos", "eos")),
    ("<s>", ("bos",)),
    ("</s>", ("eos",)),
    ("<pad>", ("pad",)),
    ("<unk>", ("unk",)),
    ("<mask>", ("mask",)),
    ("[CLS]", ("cls",)),
    ("[SEP]", ("sep",)),
    ("[PAD]", ("pad",)),
    ("[UNK]", ("unk",)),
    ("[MASK]", ("mask",)),
)


def infer_roles(vocab: Iterable[str]) -> dict[Role, str]:
    """Guess role -> token from well-known token strings present in ``vocab``."""
    present = set(vocab)
    roles: dict[Role, str] = {}
    for token, token_roles in _WELL_KNOWN:
        if token in present:
            for role in token_roles:
                roles.setdefault(role, token)
    return roles
