"""Context extension configs, probes and the extend-context verb on a tiny RoPE model."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.longctx import extended_config, passkey_probe, ppl_by_length
from lmforge.longctx.probes import QUESTION, _passkey_prompt
from lmforge.models import Transformer, save_model
from lmforge.tokenizer import train_tokenizer

TEXT = [
    f"Sentence {i}: the quick brown fox jumps over the lazy dog near the river bank."
    for i in range(300)
]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    out = tmp_path_factory.mktemp("llama")
    tok = train_tokenizer(
        TEXT + ["0123456789 The pass key is. What is the pass key?"], vocab_size=300
    )
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(
        "llama-tiny",
        vocab_size=tok.vocab_size,
        max_seq_len=64,
        eos_id=tok.eos_id,
        bos_id=tok.bos_id,
    )
    model = Transformer(cfg).eval()
    save_model(model, out)
    tok.save(out)
    (out / "text.txt").write_text("\n".join(TEXT), encoding="utf-8")
    return out, model, tok


@pytest.mark.parametrize(
    "method, scaling", [("pi", "linear"), ("ntk", "dynamic"), ("yarn", "yarn")]
)
def test_extended_config(method, scaling):
    cfg = extended_config(ModelConfig.from_preset("llama-tiny"), 4, method)
    assert (cfg.rope_scaling, cfg.rope_factor, cfg.rope_original_max_seq_len, cfg.max_seq_len) == (
        scaling,
        4.0,
        64,
        256,
    )


def test_extension_needs_rope():
    with pytest.raises(ConfigError, match="rescales RoPE"):
        extended_config(ModelConfig.from_preset("gpt-tiny"), 2, "pi")


def test_pi_reads_position_p_as_p_over_s():
    # PI: the rotation at position p with factor s equals the unscaled rotation at p / s
    base = ModelConfig.from_preset("llama-tiny")
    from lmforge.models.positions import RotaryEmbedding

    pi = RotaryEmbedding(extended_config(base, 4, "pi"))
    plain = RotaryEmbedding(base)
    cos_pi, _ = pi(torch.tensor([[8, 40]]), torch.float32)
    cos_plain, _ = plain(torch.tensor([[2, 10]]), torch.float32)
    torch.testing.assert_close(cos_pi, cos_plain)


def test_passkey_prompt_places_the_needle(tiny_llama):
    _, _, tok = tiny_llama
    needle = " The pass key is 12345. Remember it. 12345 is the pass key."
    texts = {}
    for depth in (0.0, 0.5, 1.0):
        ids = _passkey_prompt(tok, 120, depth, "12345")
        assert len(ids) == 120
        texts[depth] = tok.decode(ids)
        assert texts[depth].endswith(QUESTION)
    assert texts[0.0].startswith(needle)
    assert texts[1.0].endswith(needle + QUESTION)
    before, after = texts[0.5].split(needle)
    assert len(before) > 10 and len(after) > 10 + len(QUESTION)


def test_probes_run(tiny_llama):
    _, model, tok = tiny_llama
    result = passkey_probe(model, tok, [96, 160], depths=(0.0, 1.0), trials=2)
    assert np.array(result.accuracy).shape == (2, 2) and "| 160 |" in result.table()
    tokens = np.array(tok.encode(" ".join(TEXT)), dtype=np.int64)
    ppl = ppl_by_length(model, tokens, [16, 64, 128])
    assert all(p > 1 for p in ppl.ppl) and ppl.tokens[0] > 0


def test_cli_extend_and_probe(tiny_llama, tmp_path, monkeypatch, capsys):
    from lmforge.cli import main

    model_dir, _, _ = tiny_llama
    text = str(model_dir / "text.txt")

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["lmforge", *args])
        try:
            main()
        except SystemExit as e:
            assert e.code in (0, None), capsys.readouterr().err
        return capsys.readouterr().out

    out = run("extend-context", str(model_dir), "--out", str(tmp_path / "ext"), "--factor", "2", "--method", "yarn",
              "--data", text, "--steps", "3", "seq_len=96", "eval_every=3")  # fmt: skip
    assert "128 tokens" in out
    assert json.loads((tmp_path / "ext" / "config.json").read_text())["rope_scaling"] == "yarn"
    out = run("probe", "passkey", str(tmp_path / "ext"), "--lengths", "100,128", "--trials", "1")
    assert (tmp_path / "ext" / "passkey.png").is_file() and "| 128 |" in out
    out = run(
        "probe", "ppl-by-length", str(tmp_path / "ext"), "--data", text, "--lengths", "32,128"
    )
    assert (tmp_path / "ext" / "ppl_by_length.png").is_file()


def test_probe_lengths_past_the_context_are_flagged(tiny_llama, monkeypatch, capsys):
    from cli_helpers import run_cli

    model_dir, _, _ = tiny_llama  # max_seq_len 64
    text = str(model_dir / "text.txt")
    code, out, err = run_cli(monkeypatch, capsys, "probe", "ppl-by-length", model_dir, "--data",
                             text, "--lengths", "32,128", "--out", model_dir / "p")  # fmt: skip
    assert code == 0, err
    assert "warning: length(s) 128 are past the 64 tokens" in err
    code, out, err = run_cli(monkeypatch, capsys, "probe", "ppl-by-length", model_dir, "--data",
                             text, "--lengths", "32,64", "--out", model_dir / "p")  # fmt: skip
    assert code == 0 and "warning" not in err
