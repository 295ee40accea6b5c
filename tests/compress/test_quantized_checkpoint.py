"""`lmforge quantize` and every verb on its output: generate, chat, serve, evaluate."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from lmforge.compress import Int4Linear, Int8Linear, quantize_model, quantized_modules
from lmforge.config import ModelConfig
from lmforge.generate import GenerationConfig, generate
from lmforge.models import Transformer, load_model, save_model
from lmforge.recipes.generate import prompt_ids
from lmforge.tokenizer import Tokenizer, train_tokenizer

LINES = [
    f"Line {i}: the quick brown fox jumps over the lazy dog, then rests {i % 7}." for i in range(80)
]


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    """A random Llama-shaped model (d_model 64, GQA) with a small BPE tokenizer."""
    out = tmp_path_factory.mktemp("quant") / "float"
    tok = train_tokenizer(LINES, vocab_size=320)
    tok.save(out)
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(
        "llama-tiny",
        vocab_size=-(-tok.vocab_size // 16) * 16,
        d_ff=192,
        max_seq_len=128,
        bos_id=tok.bos_id,
    )
    save_model(Transformer(cfg), out)
    (out.parent / "text.txt").write_text("\n".join(LINES[:40]), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def quantized(float_dir):
    """int8 and int4 (group 32) copies, written by the CLI."""
    dirs = {}
    for method in ("int8", "int4"):
        dirs[method] = float_dir.parent / method
        code, out, err = _cli(
            "quantize", float_dir, "--method", method, "--group-size", "32", "--out", dirs[method]
        )
        assert code == 0, err
        assert f"to {method}" in out and "MiB" in out
    return dirs


def _cli(*args):
    mp = pytest.MonkeyPatch()
    try:
        import sys
        from io import StringIO

        out, err = StringIO(), StringIO()
        mp.setattr(sys, "stdout", out)
        mp.setattr(sys, "stderr", err)
        from lmforge.cli import main

        mp.setattr(sys, "argv", ["lmforge", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        return code, out.getvalue(), err.getvalue()
    finally:
        mp.undo()


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_dir_is_safetensors_with_record(float_dir, quantized, method):
    qdir = quantized[method]
    record = json.loads((qdir / "config.json").read_text())["quantization"]
    assert record["method"] == method and "heads.lm_head" in record["modules"]
    assert (method == "int4") == ("group_size" in record)
    with safe_open(qdir / "model.safetensors", "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert (torch.int8 if method == "int8" else torch.uint8) in dtypes
    before = (float_dir / "model.safetensors").stat().st_size
    assert (qdir / "model.safetensors").stat().st_size < before * 0.75
    assert (qdir / "tokenizer.json").is_file()
    model = load_model(qdir)
    kind = Int8Linear if method == "int8" else Int4Linear
    assert set(record["modules"]) == set(quantized_modules(model))
    assert all(isinstance(m, kind) for m in quantized_modules(model).values())
    # the loaded model is the in-memory quantized one
    ref = quantize_model(load_model(float_dir), method, group_size=32)
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_generate_cli_equals_the_quantized_model(float_dir, quantized, method):
    tok = Tokenizer.load(float_dir)
    ref = quantize_model(load_model(float_dir), method, group_size=32)
    ids = prompt_ids(tok, "the quick")
    with torch.no_grad():
        (new,) = generate(ref, [ids], GenerationConfig(max_new_tokens=10, temperature=0))
    code, out, err = _cli(
        "generate", quantized[method], "--prompt", "the quick", "--max-new-tokens", "10",
        "--top-k", "1",
    )  # fmt: skip
    assert code == 0, err
    assert tok.decode(new).strip() in out


def test_chat_serve_evaluate_on_quantized(float_dir, quantized):
    from lmforge.recipes.chat import chat
    from lmforge.serve import BackgroundServer, build_app

    qdir = quantized["int8"]
    said = []
    lines = iter(["hello there", "/exit"])
    chat(qdir, max_new_tokens=6, temperature=0, read=lambda _: next(lines), write=said.append)
    assert "bot> " in said and len("".join(said)) > 40

    app = build_app(qdir, max_batch=2, device="cpu")
    assert quantized_modules(app.state.engine.batcher.model)
    import urllib.request

    body = json.dumps({"model": "int8", "prompt": "the quick", "max_tokens": 5, "temperature": 0})
    with BackgroundServer(app) as server:
        req = urllib.request.Request(
            server.url + "/v1/completions", body.encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req) as r:
            reply = json.loads(r.read())
    assert reply["usage"]["completion_tokens"] == 5

    text = float_dir.parent / "text.txt"
    ppl = {}
    for name, d in (("float", float_dir), ("int8", qdir), ("int4", quantized["int4"])):
        code, out, err = _cli("evaluate", d, "--data", text)
        assert code == 0, err
        ppl[name] = float(out.split()[1])
    assert abs(ppl["int8"] / ppl["float"] - 1) < 0.01, ppl
    assert abs(ppl["int4"] / ppl["float"] - 1) < 0.1, ppl


def test_quantize_errors(float_dir, quantized):
    for args, words in [
        (("--out", float_dir), "is the model dir itself"),
        (("--out", float_dir.parent / "x", "--method", "int2"), "unknown quantization method"),
        (
            ("--out", float_dir.parent / "x", "--method", "int4", "--group-size", "100"),
            "group size",
        ),
    ]:
        code, out, err = _cli("quantize", float_dir, *args)
        assert code != 0 and words in err and "Traceback" not in err, err
    code, out, err = _cli("quantize", quantized["int8"], "--out", float_dir.parent / "again")
    assert code != 0 and "already quantized" in err
