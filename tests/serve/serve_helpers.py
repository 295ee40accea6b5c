"""Constants and small helpers shared by the server tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import torch

from lmforge.config import ModelConfig
from lmforge.generate import GenerationConfig, TextStream, generate
from lmforge.models import Transformer

API_KEY = "test-key"
CONTEXT = 512
MAX_BATCH = 8
MODEL = "tiny-chat"


def tiny_model(tok, seed: int, **over) -> Transformer:
    """A random-initialised gpt-tiny (seeded) for `tok`, with the served context."""
    torch.manual_seed(seed)
    cfg = ModelConfig.from_preset(
        "gpt-tiny",
        vocab_size=tok.vocab_size,
        max_seq_len=CONTEXT,
        bos_id=tok.bos_id,
        pad_id=tok.pad_id,
        **over,
    )
    return Transformer(cfg)


def http(
    url: str, body: bytes | None = None, key: str | None = API_KEY, method: str | None = None
) -> tuple[int, dict]:
    """A raw request (no OpenAI client): (status, decoded JSON body)."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def health(base_url: str) -> dict:
    return http(base_url + "/health", key=None)[1]


def prompt_ids(tok, text: str) -> list[int]:
    return [tok.bos_id, *tok.encode(text)]


def reference_texts(reference, ids: list[int], gen: GenerationConfig) -> list[str]:
    """What the server must answer: `generate` alone, its tokens turned into text by the
    same streaming rule the server uses (whole characters, cut before a stop string)."""
    model, tok = reference
    texts = []
    for tokens in generate(model, [ids], gen, tokenizer=tok if gen.stop else None):
        stream = TextStream(tok, gen.stop, prompt_ids=ids)
        texts.append("".join(stream.push(t) for t in tokens) + stream.finish())
    return texts
