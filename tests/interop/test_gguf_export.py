"""`lmforge convert --to-gguf`: Llama and GPT-2 families, read back by the `gguf` package and by
lmforge's own GGUF import."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lmforge.cli import app
from lmforge.compress import quantize_model
from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError, ConfigError
from lmforge.interop import import_gguf
from lmforge.interop.gguf import permute_rope
from lmforge.interop.gguf_export import export_gguf
from lmforge.models import Transformer, load_model, save_model
from lmforge.tokenizer import Tokenizer, train_tokenizer

LINES = [
    f"Line {i}: the quick brown fox jumps over the lazy dog, {i % 7} times." for i in range(80)
]
TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"


def _model_dir(root, preset: str, **kw):
    out = root / preset
    tok = train_tokenizer(LINES, vocab_size=300)
    tok.chat_template = TEMPLATE
    tok.save(out)
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset, vocab_size=320, bos_id=tok.bos_id, **kw)
    save_model(Transformer(cfg), out)
    return out


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_export")
    return {
        "llama": _model_dir(root, "llama-tiny", tie_embeddings=True),
        "llama-untied": _model_dir(
            root, "llama-tiny", tie_embeddings=False, rope_theta=1e5, bias=True
        ),
        "gpt2": _model_dir(root, "gpt-tiny"),
    }


@pytest.mark.parametrize("which", ["llama", "llama-untied"])
def test_llama_round_trip_through_gguf_import(dirs, tmp_path, which):
    src = dirs[which]
    ids = torch.randint(0, 320, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = load_model(src)(ids).logits
    for kind, tol in (("f32", 0.0), ("f16", 2e-3), ("q8_0", 2e-2), ("q4_0", 0.25)):
        f = export_gguf(src, tmp_path / f"{kind}.gguf", kind)
        back = import_gguf(f, tmp_path / f"back-{kind}")
        with torch.no_grad():
            got = load_model(back)(ids).logits
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert err <= tol + 1e-7, (kind, err)
        if kind == "f32":
            torch.testing.assert_close(got, want, atol=0, rtol=0)
    # the tokenizer and its chat template travel in the file
    tok, back_tok = Tokenizer.load(src), Tokenizer.load(tmp_path / "back-f32")
    text = "the lazy dog jumps, 3 times!"
    assert back_tok.encode(text) == tok.encode(text)
    assert back_tok.chat_template == TEMPLATE
    assert back_tok.bos_id == tok.bos_id


def test_gguf_reader_sees_llama_metadata_and_quantized_blocks(dirs, tmp_path):
    f = export_gguf(dirs["llama-untied"], tmp_path / "m.gguf", "q8_0")
    r = gguf.GGUFReader(f)
    meta = {k: v for k, v in r.fields.items()}
    assert bytes(meta["general.architecture"].parts[-1]).decode() == "llama"
    assert int(meta["llama.block_count"].parts[-1][0]) == 2
    assert float(meta["llama.rope.freq_base"].parts[-1][0]) == 1e5
    assert int(meta["llama.attention.head_count_kv"].parts[-1][0]) == 2
    tensors = {t.name: t for t in r.tensors}
    q = tensors["blk.0.attn_q.weight"]
    assert q.tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    # Q8_0: w = d q, d = max|w| / 127 per block of 32 (stored as f16, which adds up to
    # 127 * 2^-11 d); the RoPE rows in llama.cpp's order
    w = load_model(dirs["llama-untied"]).decoder.layers[0].attn.q_proj.weight.detach()
    want = permute_rope(w, 4).numpy()
    got = gguf.quants.dequantize(q.data, q.tensor_type).reshape(want.shape)
    blocks = np.abs(want.reshape(-1, 32)).max(1, keepdims=True) / 127
    assert (np.abs(got - want).reshape(-1, 32) <= blocks * (0.5 + 127 * 2**-11)).all()


def test_gpt2_export_fuses_qkv(dirs, tmp_path):
    f = export_gguf(dirs["gpt2"], tmp_path / "g.gguf", "f32")
    r = gguf.GGUFReader(f)
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == "gpt2"
    tensors = {t.name: np.asarray(t.data) for t in r.tensors}
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    block = load_model(dirs["gpt2"]).decoder.layers[1]
    qkv = torch.cat([block.attn.q_proj.weight, block.attn.k_proj.weight, block.attn.v_proj.weight])
    np.testing.assert_array_equal(tensors["blk.1.attn_qkv.weight"], qkv.detach().numpy())
    np.testing.assert_array_equal(
        tensors["blk.1.ffn_down.bias"], block.mlp.down_proj.bias.detach().numpy()
    )
    tokens = [bytes(r.fields["tokenizer.ggml.tokens"].parts[i]).decode() for i in
              r.fields["tokenizer.ggml.tokens"].data]  # fmt: skip
    assert len(tokens) == 320 and tokens[-1] == "[PAD319]"  # padded to the embedding
    assert bytes(r.fields["tokenizer.ggml.pre"].parts[-1]).decode() == "gpt-2"


def test_gpt2_round_trip_through_gguf_import(dirs, tmp_path):
    """GPT-2 files come back through lmforge's own import: the same config, logits, tokenizer."""
    src = dirs["gpt2"]
    ids = torch.randint(0, 320, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = load_model(src)(ids).logits
    for kind, tol in (("f32", 0.0), ("q8_0", 2e-2)):
        back = import_gguf(export_gguf(src, tmp_path / f"{kind}.gguf", kind), tmp_path / kind)
        with torch.no_grad():
            got = load_model(back)(ids).logits
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert err <= tol + 1e-7, (kind, err)
    before, after = ModelConfig.from_dir(src).to_dict(), ModelConfig.from_dir(back).to_dict()
    assert after.pop("norm_eps") == pytest.approx(before.pop("norm_eps"), rel=1e-6)  # stored f32
    tok = Tokenizer.load(src)
    # special ids come from the tokenizer the file carries
    assert (after.pop("eos_id"), after.pop("pad_id")) == (tok.eos_id, tok.pad_id)
    del before["eos_id"], before["pad_id"]
    assert after == before
    text = "the lazy dog jumps, 3 times!"
    assert Tokenizer.load(back).encode(text) == tok.encode(text)


def test_gpt2_output_copy_of_the_embedding_imports_tied(dirs, tmp_path, monkeypatch):
    """llama.cpp's GPT-2 converter writes `output.weight` = `token_embd.weight`."""
    import lmforge.interop.gguf_export as ge

    tensors = ge._tensors

    def with_copy(cfg, state):
        out = tensors(cfg, state)
        return {**out, "output.weight": out["token_embd.weight"]}

    monkeypatch.setattr(ge, "_tensors", with_copy)
    f = export_gguf(dirs["gpt2"], tmp_path / "copy.gguf", "f32")
    assert "output.weight" in {t.name for t in gguf.GGUFReader(f).tensors}
    back = import_gguf(f, tmp_path / "back")
    assert ModelConfig.from_dir(back).tie_embeddings

    def with_other(cfg, state):
        out = tensors(cfg, state)
        return {**out, "output.weight": out["token_embd.weight"] + 1}

    monkeypatch.setattr(ge, "_tensors", with_other)
    f = export_gguf(dirs["gpt2"], tmp_path / "other.gguf", "f32")
    with pytest.raises(CheckpointError, match="output.weight differs from token_embd"):
        import_gguf(f, tmp_path / "back2")


def test_export_errors_and_cli(dirs, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.gguf"
    result = runner.invoke(
        app, ["convert", "--to-gguf", str(dirs["gpt2"]), "--out", str(out), "--type", "q4_0"]
    )
    assert result.exit_code == 0, result.output
    assert "exported" in result.output and out.stat().st_size > 0
    with pytest.raises(ConfigError, match="unknown GGUF type"):
        export_gguf(dirs["gpt2"], tmp_path / "x.gguf", "q5_k")
    bert = tmp_path / "bert"
    save_model(Transformer(ModelConfig.from_preset("bert-tiny")), bert)
    with pytest.raises(CheckpointError, match="Llama-family"):
        export_gguf(bert, tmp_path / "x.gguf")
    quantized = tmp_path / "int8"
    save_model(quantize_model(load_model(dirs["llama"]), "int8"), quantized)
    with pytest.raises(CheckpointError, match="export the floating-point model"):
        export_gguf(quantized, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
