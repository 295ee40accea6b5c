"""The lmforge ``Tokenizer``: a thin, typed wrapper over a Hugging Face ``tokenizers.Tokenizer``.

A tokenizer directory holds two files, the same ones a Hugging Face tokenizer directory holds:

- ``tokenizer.json``: the full pipeline (normalizer, pre-tokenizer, model, post-processor, decoder);
- ``tokenizer_config.json``: the special-token roles (``bos_token``, ``eos_token``, ...),
  ``model_max_length`` when known, an optional ``chat_template`` and ``lmforge_kind``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tokenizers

from lmforge.errors import TokenizerError, first_line
from lmforge.tokenizer.specials import ROLES, Role, infer_roles
from lmforge.utils.fs import atomic_write_text

TokenizerKind = Literal["bpe", "wordpiece", "unigram", "wordlevel"]

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
_SPECIAL_MAP_FILE = "special_tokens_map.json"
_CHAT_TEMPLATE_FILE = "chat_template.jinja"
# Hugging Face writes a huge integer as model_max_length when the length is unknown.
_UNKNOWN_LENGTH = 10**12
_SURROGATE = re.compile("[\ud800-\udfff]")
_HINT = "make one with `lmforge tokenizer train` or point to a folder that has one"


@dataclass(frozen=True)
class PairEncoding:
    """Ids of a text pair and the segment (0 = first text, 1 = second text) of each id."""

    ids: list[int]
    token_type_ids: list[int]


class Tokenizer:
    """Encode text to token ids and back, and know which ids play which special role.

    Args:
        backend: the Hugging Face ``tokenizers.Tokenizer`` doing the work.
        kind: the model family; inferred from ``backend`` when None.
        roles: role name (``"bos"``, ``"eos"``, ``"pad"``, ``"unk"``, ``"mask"``, ``"cls"``,
            ``"sep"``) -> token string; every token must be in the vocabulary.
        model_max_length: the longest sequence a model using this tokenizer accepts, if known.
        chat_template: an optional Jinja chat template, saved with the tokenizer.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        kind: TokenizerKind | None = None,
        roles: dict[Role, str] | None = None,
        model_max_length: int | None = None,
        chat_template: str | None = None,
    ) -> None:
        self._backend = backend
        self._kind: TokenizerKind = kind or _infer_kind(backend)
        self._vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self._roles: dict[Role, str] = {}
        self._role_ids: dict[Role, int] = {}
        for role, token in (roles or {}).items():
            if role not in ROLES:
                raise TokenizerError(f"unknown special-token role '{role}'; use one of {ROLES}.")
            token_id = backend.token_to_id(token)
            if token_id is None:
                raise TokenizerError(
                    f"the {role} token '{token}' is not in the vocabulary; "
                    "name a token the tokenizer has or drop the role."
                )
            self._roles[role] = token
            self._role_ids[role] = token_id
        self.model_max_length = model_max_length
        self.chat_template = chat_template

    # ----------------------------------------------------------------- properties

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The wrapped Hugging Face tokenizer."""
        return self._backend

    @property
    def kind(self) -> TokenizerKind:
        """The model family: ``"bpe"``, ``"wordpiece"``, ``"unigram"`` or ``"wordlevel"``."""
        return self._kind

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self._vocab_size

    def __len__(self) -> int:
        return self._vocab_size

    @property
    def roles(self) -> dict[Role, str]:
        """Role -> token string for every role this tokenizer fills."""
        return dict(self._roles)

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of all special tokens (role tokens and any other added special token)."""
        added = self._backend.get_added_tokens_decoder()
        special = {i for i, tok in added.items() if tok.special}
        return frozenset(special | set(self._role_ids.values()))

    @property
    def bos_id(self) -> int | None:
        """Id of the beginning-of-sequence token, or None."""
        return self._role_ids.get("bos")

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-sequence token, or None."""
        return self._role_ids.get("eos")

    @property
    def pad_id(self) -> int | None:
        """Id of the padding token, or None."""
        return self._role_ids.get("pad")

    @property
    def unk_id(self) -> int | None:
        """Id of the unknown token, or None."""
        return self._role_ids.get("unk")

    @property
    def mask_id(self) -> int | None:
        """Id of the mask token (for MLM), or None."""
        return self._role_ids.get("mask")

    @property
    def cls_id(self) -> int | None:
        """Id of the classification token (BERT ``[CLS]``), or None."""
        return self._role_ids.get("cls")

    @property
    def sep_id(self) -> int | None:
        """Id of the separator token (BERT ``[SEP]``), or None."""
        return self._role_ids.get("sep")

    # ----------------------------------------------------------------- encode / decode

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``.

        Special-token strings written in ``text`` (such as ``<|eos|>``) become their special ids.
        With ``add_special_tokens`` the post-processor adds the kind's markers: ``<|bos|>`` in
        front for BPE, ``[CLS] ... [SEP]`` around for WordPiece.
        """
        try:
            return self._backend.encode(text, add_special_tokens=add_special_tokens).ids
        except TypeError:
            _explain_bad_text([text])
            raise

    def encode_batch(
        self, texts: Iterable[str], add_special_tokens: bool = False
    ) -> list[list[int]]:
        """Token ids of many texts at once, encoded in parallel by the Rust batch encoder."""
        batch = list(texts)
        encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        try:
            encodings = encode(batch, add_special_tokens=add_special_tokens)
        except TypeError:
            _explain_bad_text(batch)
            raise
        return [enc.ids for enc in encodings]

    def encode_pair(self, first: str, second: str, add_special_tokens: bool = True) -> PairEncoding:
        """Ids and token types of a text pair.

        WordPiece gives ``[CLS] first [SEP] second [SEP]`` with types ``0..0 1..1``; BPE gives
        ``<|bos|> first <|eos|> second <|eos|>``. Without ``add_special_tokens`` the two texts
        are simply concatenated.
        """
        try:
            enc = self._backend.encode(first, second, add_special_tokens=add_special_tokens)
        except TypeError:
            _explain_bad_text([first, second])
            raise
        return PairEncoding(ids=enc.ids, token_type_ids=enc.type_ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; byte-level BPE gives back exactly the text that was encoded."""
        id_list = [int(i) for i in ids]
        if id_list:
            low, high = min(id_list), max(id_list)
            if low < 0 or high >= self._vocab_size:
                bad = low if low < 0 else high
                raise TokenizerError(
                    f"token id {bad} is outside the vocabulary of {self._vocab_size} ids; decode "
                    "only ids from this tokenizer or from a model that shares its vocabulary."
                )
        return self._backend.decode(id_list, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string, or None when it is not in the vocabulary."""
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of an id, or None when the id is out of range."""
        return self._backend.id_to_token(token_id)

    def __repr__(self) -> str:
        roles = ", ".join(f"{r}={t!r}" for r, t in self._roles.items())
        return f"Tokenizer(kind={self._kind!r}, vocab_size={self._vocab_size}, {roles})"

    # ----------------------------------------------------------------- save / load

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` atomically into ``directory``."""
        out = Path(directory)
        if out.exists() and not out.is_dir():
            raise TokenizerError(
                f"{out} is a file, not a directory; pass a directory (new or existing) to save "
                "the tokenizer in."
            )
        out.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "lmforge_kind": self._kind,
        }
        for role in ROLES:
            if role in self._roles:
                config[f"{role}_token"] = self._roles[role]
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        # Byte-level BPE decodes exactly; only WordPiece wants HF's space clean-up.
        config["clean_up_tokenization_spaces"] = self._kind == "wordpiece"
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        atomic_write_text(out / TOKENIZER_FILE, self._backend.to_str(pretty=True))
        atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False))
        return out

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer directory (lmforge or Hugging Face), or a ``tokenizer.json`` file.

        Roles come from ``tokenizer_config.json`` (then ``special_tokens_map.json``); when
        neither file exists they are inferred from well-known token strings such as ``<s>``,
        ``</s>``, ``<|endoftext|>``, ``[CLS]``, ``[SEP]``, ``[PAD]``, ``[MASK]`` and ``[UNK]``.
        """
        path = Path(path)
        if path.is_file():
            directory, tokenizer_file = path.parent, path
        else:
            directory, tokenizer_file = path, path / TOKENIZER_FILE
        if not directory.is_dir():
            raise TokenizerError(f"tokenizer folder {directory} does not exist; {_HINT}.")
        if not tokenizer_file.is_file():
            raise TokenizerError(f"no {TOKENIZER_FILE} in {directory}; {_HINT}.")
        try:
            backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # the Rust side raises a bare Exception
            raise TokenizerError(
                f"{tokenizer_file} is not a valid tokenizer file ({first_line(exc)}); "
                f"re-create it or {_HINT}."
            ) from exc
        # padding and truncation are decided per batch by lmforge, never baked into the file
        backend.no_padding()
        backend.no_truncation()

        config = _read_json(directory / CONFIG_FILE)
        special_map = _read_json(directory / _SPECIAL_MAP_FILE)
        if config is None and special_map is None:
            roles = infer_roles(backend.get_vocab(with_added_tokens=True))
        else:
            roles = {}
            for source in (config or {}, special_map or {}):
                for role in ROLES:
                    token = _token_content(source.get(f"{role}_token"))
                    if token is not None:
                        roles.setdefault(role, token)
        for role, token in roles.items():
            if backend.token_to_id(token) is None:
                raise TokenizerError(
                    f"the {role} token '{token}' named in {directory} is not in the vocabulary "
                    f"of {tokenizer_file.name}; fix the token name or remove {role}_token."
                )
        config = config or {}
        kind = config.get("lmforge_kind")
        if kind not in (None, "bpe", "wordpiece", "unigram", "wordlevel"):
            raise TokenizerError(
                f"{directory / CONFIG_FILE} has unknown lmforge_kind '{kind}'; "
                "use 'bpe' or 'wordpiece', or delete the key."
            )
        max_len = config.get("model_max_length")
        if not isinstance(max_len, int) or max_len >= _UNKNOWN_LENGTH:
            max_len = None
        return cls(
            backend,
            kind=kind,
            roles=roles,
            model_max_length=max_len,
            chat_template=_chat_template(config, directory),
        )

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> Tokenizer:
        """Load a Hugging Face tokenizer directory; the same as :meth:`load`."""
        return cls.load(path)


# --------------------------------------------------------------------- helpers


def _infer_kind(backend: tokenizers.Tokenizer) -> TokenizerKind:
    name = type(backend.model).__name__.lower()
    if name in ("bpe", "wordpiece", "unigram", "wordlevel"):
        return name  # type: ignore[return-value]
    raise TokenizerError(f"unsupported tokenizer model '{name}'; use a BPE or WordPiece tokenizer.")


def _explain_bad_text(texts: list[object]) -> None:
    """Turn the backend's bare TypeError for a non-string or non-Unicode text into one sentence."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TokenizerError(
                f"text {i} is a {type(text).__name__}, not a string; pass str values to encode."
            ) from None
        match = _SURROGATE.search(text)
        if match:
            raise TokenizerError(
                f"text {i} holds the lone surrogate U+{ord(match.group()):04X} at position "
                f"{match.start()}, which is not valid Unicode; clean the text, for example with "
                "text.encode('utf-8', 'replace').decode('utf-8')."
            ) from None


def _token_content(value: object) -> str | None:
    """A role token from a config value: a string, or an AddedToken dict with ``content``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _chat_template(config: dict[str, Any], directory: Path) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # HF's list of named templates: keep the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None and (directory / _CHAT_TEMPLATE_FILE).is_file():
        template = (directory / _CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    return template if isinstance(template, str) else None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenizerError(
            f"{path} is not valid JSON ({first_line(exc)}); fix the file or delete it."
        ) from exc
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object; fix the file or delete it.")
    return data
