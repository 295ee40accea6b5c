"""`lmforge generate` options beyond sampling: beams, a draft model, stop strings, min-p, chat."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import run_cli
from test_cli_generate_hf import PROMPT, family

from lmforge.generate import GenerationConfig, beam_search, generate
from lmforge.generate.engine import encode_prompt
from lmforge.interop.hf import import_hf
from lmforge.recipes.finetuned import load_model_and_tokenizer

pytest.importorskip("transformers")
NEW = 10
TEMPLATE = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A converted random Llama (GQA) with its BOS-adding tokenizer."""
    root = tmp_path_factory.mktemp("gen_options")
    _, path = family("llama", root)
    return import_hf(path, root / "lm")


def cli(monkeypatch, capsys, model_dir, *args) -> tuple[str, str]:
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "generate",
        model_dir,
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        NEW,
        *args,
    )
    assert code == 0, err
    return out.rstrip("\n"), err


def test_beams_print_the_best_beam(monkeypatch, capsys, llama_dir):
    out, _ = cli(monkeypatch, capsys, llama_dir, "--num-beams", "3", "--length-penalty", "0.5")
    model, tok = load_model_and_tokenizer(llama_dir)
    gen = GenerationConfig(max_new_tokens=NEW, num_beams=3, length_penalty=0.5)
    best = beam_search(model, [encode_prompt(tok, PROMPT)], gen)[0]
    assert out == PROMPT + tok.decode(best.tokens)


def test_draft_gives_the_greedy_text_and_an_acceptance_rate(monkeypatch, capsys, llama_dir):
    greedy, _ = cli(monkeypatch, capsys, llama_dir, "--top-k", "1")
    out, err = cli(
        monkeypatch, capsys, llama_dir, "--temperature", "0", "--draft", llama_dir, "--draft-k", "3"
    )
    assert out == greedy
    assert "draft acceptance rate: 100.0%" in err  # the draft is the target itself


def test_stop_and_min_p(monkeypatch, capsys, llama_dir):
    model, tok = load_model_and_tokenizer(llama_dir)
    greedy, _ = cli(monkeypatch, capsys, llama_dir, "--top-k", "1")
    new_ids = generate(
        model, [encode_prompt(tok, PROMPT)], GenerationConfig(max_new_tokens=NEW, top_k=1)
    )[0]
    stop = tok.decode(new_ids[4:6])  # two tokens from the middle of the continuation
    out, _ = cli(monkeypatch, capsys, llama_dir, "--top-k", "1", "--stop", stop)
    new = greedy[len(PROMPT) :]
    assert out == PROMPT + new[: new.index(stop)]
    out, _ = cli(monkeypatch, capsys, llama_dir, "--min-p", "1.0", "--seed", "3")
    assert out == greedy  # min-p 1 keeps only the most likely token


def test_chat_applies_the_template(monkeypatch, capsys, llama_dir, tmp_path):
    chat_dir = tmp_path / "chat"
    chat_dir.mkdir()
    for f in llama_dir.iterdir():
        (chat_dir / f.name).write_bytes(f.read_bytes())
    config = json.loads((chat_dir / "tokenizer_config.json").read_text())
    (chat_dir / "tokenizer_config.json").write_text(
        json.dumps({**config, "chat_template": TEMPLATE})
    )
    out, _ = cli(monkeypatch, capsys, chat_dir, "--top-k", "1", "--chat")
    model, tok = load_model_and_tokenizer(chat_dir)
    ids = tok.encode(f"[user] {PROMPT}\n")
    assert out == tok.decode(
        generate(model, [ids], GenerationConfig(max_new_tokens=NEW, top_k=1))[0]
    )


def test_a_model_that_ends_at_once_gets_the_chat_hint(monkeypatch, capsys, tmp_path):
    hf, path = family("gpt2", tmp_path)
    with torch.no_grad():  # zero final norm: all logits 0, so the top token is id 0 = EOS
        hf.transformer.ln_f.weight.zero_()
        hf.transformer.ln_f.bias.zero_()
    hf.save_pretrained(path, safe_serialization=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    lm = import_hf(path, tmp_path / "lm")
    out, err = cli(monkeypatch, capsys, lm, "--temperature", "0")
    assert out == PROMPT and "try --chat" in err
    _, err = cli(monkeypatch, capsys, lm, "--temperature", "0", "--chat")
    assert "try --chat" not in err
