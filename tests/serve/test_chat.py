"""Chat templates (the tokenizer's own or the default), `lmforge chat` fed from stdin, and the
`lmforge serve` verb's defaults and refusals."""

from __future__ import annotations

import inspect

import pytest
import torch
import typer
from typer.testing import CliRunner

from lmforge.cli.serve import register
from lmforge.config import ModelConfig
from lmforge.errors import GenerationError, ServeError, TokenizerError
from lmforge.generate import GenerationConfig, TextStream, generate
from lmforge.models import Transformer, save_model
from lmforge.recipes.chat import ChatSession
from lmforge.serve import build_app, serve
from lmforge.tokenizer import DEFAULT_CHAT_STOPS, chat_stops, encode_chat, render_chat

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_default_template_is_documented_plain_text(reference):
    _, tok = reference
    text = render_chat(tok, MESSAGES)
    assert text == "<|bos|><|system|>\nBe brief.\n<|user|>\nHi!\n<|assistant|>\n"
    assert encode_chat(tok, MESSAGES)[0] == tok.bos_id  # the BOS string becomes its id
    assert chat_stops(tok) == list(DEFAULT_CHAT_STOPS)


def test_the_tokenizers_own_template_wins(reference, monkeypatch):
    _, tok = reference
    monkeypatch.setattr(tok, "chat_template", CHATML)
    assert render_chat(tok, MESSAGES).endswith("<|im_start|>assistant\n")
    assert chat_stops(tok) == []
    monkeypatch.setattr(tok, "chat_template", "{{ raise_exception('system messages are off') }}")
    with pytest.raises(TokenizerError, match="system messages are off"):
        render_chat(tok, MESSAGES)
    monkeypatch.setattr(tok, "chat_template", "{% for %}")
    with pytest.raises(TokenizerError, match="not valid Jinja"):
        render_chat(tok, MESSAGES)


def test_chat_session_streams_generate_and_drops_old_turns(reference):
    model, tok = reference
    gen = GenerationConfig(max_new_tokens=12, temperature=0)
    session = ChatSession(model, tok, gen, system="Be brief.")
    reply = "".join(session.reply("Hi!"))
    ids = encode_chat(tok, MESSAGES)
    stops = chat_stops(tok)
    stream = TextStream(tok, stops, prompt_ids=ids)
    tokens = generate(model, [ids], GenerationConfig(max_new_tokens=12, temperature=0, stop=stops), tokenizer=tok)[0]  # fmt: skip
    assert reply == "".join(stream.push(t) for t in tokens) + stream.finish()
    assert [t["role"] for t in session.turns] == ["user", "assistant"]
    small = ChatSession(model, tok, GenerationConfig(max_new_tokens=model.cfg.max_seq_len - 40))
    for _ in range(3):
        "".join(small.reply("the quick brown fox"))  # old turns are dropped to fit
    with pytest.raises(GenerationError, match="shorter message"):
        "".join(small.reply("fox " * 100))
    assert small.turns[-1]["role"] == "assistant"  # the refused message was not kept
    # a reply as long as the context leaves no room: the sentence says what would fit
    whole = ChatSession(model, tok, GenerationConfig(max_new_tokens=model.cfg.max_seq_len))
    with pytest.raises(GenerationError, match=r"lower --max-new-tokens to at most \d+") as e:
        "".join(whole.reply("Hi!"))
    assert "-" not in str(e.value).split("at most")[1]


def test_chat_cli_reads_stdin(model_dir):
    app = typer.Typer()
    register(app)
    args = ["chat", str(model_dir), "--max-new-tokens", "6", "--temperature", "0"]
    result = CliRunner().invoke(app, args, input="hello\n/reset\n\nhi there\n/exit\n")
    assert result.exit_code == 0, result.output
    assert "default chat format" in result.output
    assert result.output.count("bot> ") == 2
    assert "(conversation cleared)" in result.output
    result = CliRunner().invoke(app, args[:2], input="hello")  # end of input also leaves
    assert result.exit_code == 0 and result.output.count("bot> ") == 1


def test_an_empty_chat_reply_says_why(model_dir, monkeypatch):
    import lmforge.recipes.chat as chat_recipe

    monkeypatch.setattr(chat_recipe, "stream_ids", lambda *a, **k: iter(["", " "]))  # EOS first
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["chat", str(model_dir)], input="hello\n/exit\n")
    assert result.exit_code == 0, result.output
    assert f"bot>  {chat_recipe.EMPTY_REPLY}\n" in result.output


def test_chat_cli_reports_a_message_too_long_and_goes_on(model_dir):
    app = typer.Typer()
    register(app)
    args = ["chat", str(model_dir), "--max-new-tokens", "500"]
    result = CliRunner().invoke(app, args, input="hello there, fox\n/exit\n")
    assert result.exit_code == 0 and "error: the message needs" in result.output


def test_serve_binds_localhost_by_default():
    from lmforge.cli.serve import serve as serve_verb

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(serve_verb).parameters["host"].default == "127.0.0.1"
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0 and "127.0.0.1" in result.output


def test_serve_refuses_what_it_cannot_serve(tmp_path, model_dir):
    with pytest.raises(ServeError, match="max-batch"):
        build_app(model_dir, max_batch=0)
    torch.manual_seed(0)
    save_model(Transformer(ModelConfig.from_preset("bert-tiny")), tmp_path)
    with pytest.raises(ServeError, match="decoder-only"):
        build_app(tmp_path, device="cpu")
