"""`lmforge convert | embed | fill-mask` through typer's CliRunner on an app with `register()`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from lmforge.cli.interop import register
from lmforge.errors import ConfigError
from lmforge.models import load_model
from lmforge.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

app = typer.Typer(pretty_exceptions_enable=False)
register(app)
runner = CliRunner()


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """(Hugging Face BertForMaskedLM, its dir with a WordPiece tokenizer, the converted dir)."""
    from lmforge.data import default_corpus
    from lmforge.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("cli_interop")
    tok = train_tokenizer(default_corpus()[:10], vocab_size=300, kind="wordpiece", lowercase=True)
    cfg = transformers.BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tok.pad_id,
    )
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(cfg).eval()
    hf.save_pretrained(root / "hf")
    tok.save(root / "hf")
    result = runner.invoke(
        app, ["convert", "--from-hf", str(root / "hf"), "--out", str(root / "lm")]
    )
    assert result.exit_code == 0, result.output
    assert "imported Hugging Face model" in result.output and "encoder" in result.output
    return hf, root / "hf", root / "lm"


@torch.no_grad()
def test_convert_from_hf_and_back_gives_the_same_logits(bert, tmp_path):
    hf, _, lm = bert
    result = runner.invoke(app, ["convert", "--to-hf", str(lm), "--out", str(tmp_path / "back")])
    assert result.exit_code == 0, result.output
    back = transformers.BertForMaskedLM.from_pretrained(tmp_path / "back").eval()
    x = torch.randint(0, hf.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(back(input_ids=x).logits, hf(input_ids=x).logits, atol=1e-5, rtol=0)
    assert (tmp_path / "back" / "tokenizer.json").is_file()


def test_convert_needs_exactly_one_source(bert, tmp_path):
    _, hf_dir, lm = bert
    for args in ([], ["--from-hf", str(hf_dir), "--to-hf", str(lm)]):
        result = runner.invoke(app, ["convert", *args, "--out", str(tmp_path / "x")])
        assert result.exit_code != 0
        assert isinstance(result.exception, ConfigError)
        assert "pass exactly one of --from-hf DIR, --to-hf DIR, --from-gguf FILE or " in str(
            result.exception
        )
    assert not (tmp_path / "x").exists()


def test_convert_from_gguf(tmp_path):
    gguf = pytest.importorskip("gguf")
    d, n_head, ff, vocab = 64, 4, 96, 262
    pieces = ["<unk>", "<s>", "</s>", "\u2581", "a", "\u2581a"]
    tokens = [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [6] * 256 + [2, 3, 3, 1, 1, 1]
    w = gguf.GGUFWriter(str(tmp_path / "tiny.gguf"), "llama")
    for add, value in ((w.add_block_count, 1), (w.add_context_length, 32),
                       (w.add_embedding_length, d), (w.add_feed_forward_length, ff),
                       (w.add_head_count, n_head), (w.add_head_count_kv, 2)):  # fmt: skip
        add(value)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores([0.0] * vocab)
    w.add_unk_token_id(256)
    w.add_bos_token_id(257)
    w.add_eos_token_id(258)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (vocab, d), "output_norm.weight": (d,),
              "blk.0.attn_norm.weight": (d,), "blk.0.ffn_norm.weight": (d,),
              "blk.0.attn_q.weight": (d, d), "blk.0.attn_k.weight": (d // 2, d),
              "blk.0.attn_v.weight": (d // 2, d), "blk.0.attn_output.weight": (d, d),
              "blk.0.ffn_gate.weight": (ff, d), "blk.0.ffn_up.weight": (ff, d),
              "blk.0.ffn_down.weight": (d, ff)}  # fmt: skip
    for name, shape in shapes.items():
        w.add_tensor(name, rng.normal(0, 0.02, shape).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "lm"
    result = runner.invoke(
        app, ["convert", "--from-gguf", str(tmp_path / "tiny.gguf"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "imported GGUF file" in result.output
    model = load_model(out)
    assert model.cfg.tie_embeddings and model.cfg.n_kv_head == 2 and model.cfg.bos_id == 257
    tok = Tokenizer.load(out)
    assert tok.encode("a", add_special_tokens=True) == [257, 261]
    assert model(torch.tensor([[257, 261]])).logits.shape == (1, 2, vocab)


def test_embed_prints_vectors_cosines_and_json(bert):
    _, _, lm = bert
    one = runner.invoke(app, ["embed", str(lm), "--text", "hello world"])
    assert one.exit_code == 0, one.output
    vector = [float(v) for v in one.output.split()]
    assert len(vector) == 32 and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)
    two = runner.invoke(app, ["embed", str(lm), "--text", "a cat", "--text", "a dog"])
    assert two.exit_code == 0, two.output
    assert "cosine similarity of 2 texts (32-dim embeddings)" in two.output
    assert "1.0000" in two.output.splitlines()[1]
    data = json.loads(
        runner.invoke(
            app, ["embed", str(lm), "--text", "a cat", "--text", "a dog", "--json"]
        ).output
    )
    assert data["dim"] == 32 and data["texts"] == ["a cat", "a dog"]
    assert data["cosine"][0][0] == pytest.approx(1.0, abs=1e-5)
    cos = float(np.dot(data["embeddings"][0], data["embeddings"][1]))
    assert cos == pytest.approx(data["cosine"][0][1], abs=1e-5)


def test_fill_mask_lists_top_k(bert):
    _, _, lm = bert
    result = runner.invoke(
        app, ["fill-mask", str(lm), "--text", "the [MASK] is here", "--top-k", "3"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["1.", "2.", "3."]
    probs = [float(line.split()[-1]) for line in lines]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    data = json.loads(
        runner.invoke(app, ["fill-mask", str(lm), "--text", "[MASK] and [MASK]", "--json"]).output
    )
    assert len(data) == 2 and len(data[0]) == 5 and set(data[0][0]) == {"token", "prob"}
