"""Toy labelled data (separable sentiment, BIO-tagged names and places, prompt/response and
chat, reversal pairs) and tiny random base model dirs with tokenizers trained on the fly."""

from __future__ import annotations

import contextlib
import csv
import json
import random
from pathlib import Path

import torch

from lmforge.config import ModelConfig
from lmforge.models import Transformer, save_model
from lmforge.tokenizer import train_tokenizer

POS = ["good", "great", "nice", "fine", "lovely", "superb"]
NEG = ["bad", "awful", "poor", "sad", "ugly", "terrible"]
FILL = ["the", "film", "was", "a", "plot", "and", "very", "story", "it", "acting", "of", "this"]
PEOPLE = ["alice", "bob", "carol", "dave"]
PLACES = ["paris", "rome", "oslo", "lima"]


def sentence(rng: random.Random, label: str) -> str:
    words = rng.sample(FILL, 4) + [rng.choice(POS if label == "pos" else NEG)]
    rng.shuffle(words)
    return " ".join(words)


def classify_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": sentence(rng, lab), "label": lab} for lab in ["pos", "neg"] * (n // 2)]


def tagged_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(3, 6)):
            r = rng.random()
            if r < 0.2:
                tokens += [rng.choice(PEOPLE), rng.choice(PEOPLE)]
                tags += ["B-PER", "I-PER"]
            elif r < 0.35:
                tokens.append(rng.choice(PLACES))
                tags.append("B-LOC")
            else:
                tokens.append(rng.choice(FILL))
                tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        w = rng.choice(FILL + POS)
        if i % 2:
            rows.append({"prompt": f"repeat {w}:", "response": f" {w} {w}"})
        else:
            rows.append({"messages": [{"role": "user", "content": f"say {w}"},
                                      {"role": "assistant", "content": f"{w}!"}]})  # fmt: skip
    return rows


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"source": " ".join(ws), "target": " ".join(reversed(ws))}
        for ws in (rng.sample(FILL, 3) for _ in range(n))
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def cell(value):
    """A CSV cell: word lists space-separated, chat messages as JSON."""
    if isinstance(value, list):
        return json.dumps(value) if value and isinstance(value[0], dict) else " ".join(value)
    return value


def write_csv(path: Path, rows: list[dict]) -> Path:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: cell(v) for k, v in row.items()})
    return path


def corpus() -> list[str]:
    words = FILL + POS + NEG + PEOPLE + PLACES + ["repeat", "say", "!", ":"]
    rng = random.Random(1)
    return [" ".join(rng.choices(words, k=12)) for _ in range(300)]


def make_base(root: Path, preset: str, kind: str) -> Path:
    tok = train_tokenizer(corpus(), vocab_size=300 if kind == "bpe" else 150, kind=kind)
    extra = {"decoder_start_id": tok.pad_id} if preset.startswith("t5") else {}
    cfg = ModelConfig.from_preset(
        preset,
        vocab_size=tok.vocab_size,
        pad_id=tok.pad_id,
        eos_id=tok.eos_id if tok.eos_id is not None else tok.sep_id,
        bos_id=tok.bos_id,
        dropout=0.0,
        attn_dropout=0.0,
        **extra,
    )
    torch.manual_seed(0)
    out = root / preset
    save_model(Transformer(cfg), out)
    tok.save(out)
    return out


FAST = {"batch_size": 16, "lr": 3e-3, "warmup_steps": 2, "device": "cpu", "precision": "fp32"}


@contextlib.contextmanager
def one_thread():
    """Models this small train fastest on one thread, and a busy machine hurts less."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
