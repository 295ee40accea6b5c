"""GGUF import: files written here with the `gguf` package from random Hugging Face Llamas.

Every stored tensor is compared exactly with `gguf.quants.dequantize` of the same bytes, the
imported model's logits with the Hugging Face model holding those same values (tight), and with
the original float32 model (exact for F32, loose for the lossy types).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
from gguf_helpers import (  # noqa: E402
    BYTE,
    CONTROL,
    NORMAL,
    QT,
    UNKNOWN,
    bpe_vocab,
    encode_q4_k,
    encode_q6_k,
    load_stored,
    permute,
    ref_q4_k_block,
    ref_q6_k_block,
    spm_reference_encode,
    write_llama_gguf,
)
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402

from lmforge.errors import CheckpointError  # noqa: E402
from lmforge.interop import import_gguf, read_gguf  # noqa: E402
from lmforge.interop.gguf_quants import dequantize  # noqa: E402
from lmforge.interop.gguf_vocab import tokenizer_from_gguf  # noqa: E402
from lmforge.models import load_model  # noqa: E402
from lmforge.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

transformers.logging.set_verbosity_error()
TEXTS = ["Hello world", "  two  spaces\nand a newline", "中文句子 and émojis 🌍", "x = 12345;"]


@pytest.fixture(scope="module")
def bpe():
    from lmforge.data import default_corpus

    return train_tokenizer(default_corpus()[:20], vocab_size=320)


def tiny_llama(vocab: int, seed: int = 0, rope: dict | None = None, **kw) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,  # rows of 256: whole Q4_K / Q6_K super-blocks
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        max_position_embeddings=64,
        rope_parameters={"rope_theta": 10000.0, **(rope or {"rope_type": "default"})},
        **kw,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else 0.05 * noise)
    return model.eval()


def ids(vocab: int, shape=(2, 16)) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(1))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------ dequantizers
def random_blocks(qtype: QT, n: int, seed: int = 0) -> np.ndarray:
    """Random bytes with finite f16 scale fields (at the byte offsets of each layout)."""
    rng = np.random.default_rng(seed)
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    blocks = rng.integers(0, 256, (n, size), dtype=np.uint8)
    fields = {QT.Q8_0: [0], QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q4_K: [0, 2], QT.Q6_K: [208]}
    for at in fields.get(qtype, []):
        blocks[:, at : at + 2] = rng.normal(0, 0.01, (n, 1)).astype("<f2").view(np.uint8)
    if qtype in (QT.F16, QT.BF16):  # keep values finite: clear the top exponent bit
        blocks[:, 1::2] &= 0xBF
    return blocks


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"])
def test_dequantizers_equal_the_gguf_package_on_random_blocks(qtype):
    qt = QT[qtype]
    block_size = gguf.GGML_QUANT_SIZES[qt][0]
    blocks = random_blocks(qt, 64)
    theirs = gguf.quants.dequantize(blocks, qt).reshape(-1)
    ours = dequantize(blocks.reshape(-1), int(qt), 64 * block_size)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_k_quants_equal_a_plain_python_reading_of_the_layout(qtype):
    qt = QT[qtype]
    blocks = random_blocks(qt, 4, seed=3)
    ref = ref_q4_k_block if qt == QT.Q4_K else ref_q6_k_block
    expected = np.array([v for b in blocks for v in ref(b.tobytes())], dtype=np.float64)
    ours = dequantize(blocks.reshape(-1), int(qt), 4 * 256)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("encode", [encode_q4_k, encode_q6_k])
def test_test_side_k_quant_encoders_round_trip(encode):
    x = np.random.default_rng(0).normal(size=(4, 512)).astype(np.float32)
    qt = QT.Q4_K if encode is encode_q4_k else QT.Q6_K
    back = dequantize(encode(x).reshape(-1), int(qt), x.size).reshape(x.shape)
    assert np.abs(back - x).max() < (0.25 if qt == QT.Q4_K else 0.1)  # about half a step


def test_rope_row_permutation_matches_the_converter_and_inverts():
    from lmforge.interop.gguf import permute_rope, unpermute_rope

    w = torch.randn(2 * 8, 5)  # 2 heads of head_dim 8
    moved = permute_rope(w, 2)
    torch.testing.assert_close(moved, torch.from_numpy(permute(w.numpy(), 2)), atol=0, rtol=0)
    assert torch.equal(moved[1], w[4]) and torch.equal(moved[9], w[12])  # row 2i+1 <- d/2 + i
    assert torch.equal(unpermute_rope(moved, 2), w)


# ------------------------------------------------------------------ model import
# relative logit error vs the float32 original: the storage type's own rounding, amplified by a
# random (untrained) network; measured 0, 8e-4, 7e-3, 2e-2, 8e-2 and 0.31-0.33 for 4-bit types
LOOSE = {"F32": 1e-5, "F16": 2e-3, "BF16": 2e-2, "Q8_0": 5e-2, "Q6_K": 0.15, "Q4_0": 0.5,
         "Q4_1": 0.5, "Q4_K": 0.5}  # fmt: skip


@torch.no_grad()
@pytest.mark.parametrize("qtype", list(LOOSE))
def test_import_gives_hugging_face_logits(tmp_path, bpe, qtype):
    hf = tiny_llama(bpe.vocab_size)
    stored = write_llama_gguf(hf, tmp_path / "m.gguf", QT[qtype], bpe_vocab(bpe))
    ours = load_model(import_gguf(tmp_path / "m.gguf", tmp_path / "out"))
    assert ours.cfg.n_kv_head == 2 and not ours.cfg.tie_embeddings
    # every tensor holds exactly what the file stores (q/k rows back in rotate-half order)
    ref = load_stored(hf, stored)
    theirs = ref.state_dict()
    ours_state = ours.state_dict()
    torch.testing.assert_close(
        ours_state["decoder.layers.1.attn.k_proj.weight"],
        theirs["model.layers.1.self_attn.k_proj.weight"],
        atol=0,
        rtol=0,
    )
    torch.testing.assert_close(
        ours_state["embed.tok.weight"], theirs["model.embed_tokens.weight"], atol=0, rtol=0
    )
    x = ids(bpe.vocab_size)
    torch.testing.assert_close(ours(x).logits, ref(x).logits, atol=1e-4, rtol=0)
    assert rel_err(ours(x).logits, hf(x).logits) < LOOSE[qtype]


@torch.no_grad()
def test_tied_head_custom_alignment_and_version_2(tmp_path, bpe):
    hf = tiny_llama(bpe.vocab_size, tie_word_embeddings=True)
    path = tmp_path / "m.gguf"
    write_llama_gguf(hf, path, QT.F32, bpe_vocab(bpe), alignment=64)
    raw = bytearray(path.read_bytes())
    raw[4:8] = struct.pack("<I", 2)  # v2 has the same layout as v3 for little-endian files
    path.write_bytes(bytes(raw))
    f = read_gguf(path)
    assert f.version == 2 and f.alignment == 64 and f.data_start % 64 == 0
    ours = load_model(import_gguf(path, tmp_path / "out"))
    assert ours.cfg.tie_embeddings
    x = ids(bpe.vocab_size)
    torch.testing.assert_close(ours(x).logits, hf(x).logits, atol=1e-4, rtol=0)


LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


ROPES = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "llama3": LLAMA3,
}


@torch.no_grad()
@pytest.mark.parametrize("kind", list(ROPES))
def test_rope_scaling_from_metadata_and_rope_freqs(tmp_path, bpe, kind):
    rope = ROPES[kind]
    hf = tiny_llama(bpe.vocab_size, rope=rope)
    extra: dict = {}
    if kind == "llama3":  # llama.cpp stores the divisors f_i of theta_i as a tensor
        plain, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(hf.config)
        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf.config, "cpu")
        extra["rope_freqs"] = (plain / scaled).numpy()
    else:
        extra["rope_scaling"] = (kind, rope["factor"])
    if "original_max_position_embeddings" in rope:
        original = rope["original_max_position_embeddings"]
        extra["extra_meta"] = {"llama.rope.scaling.original_context_length": original}
    path = tmp_path / "m.gguf"
    write_llama_gguf(hf, path, QT.F32, bpe_vocab(bpe), **extra)
    ours = load_model(import_gguf(path, tmp_path / "out"))
    assert ours.cfg.rope_scaling == kind and ours.cfg.rope_factor == pytest.approx(rope["factor"])
    if kind == "llama3":
        assert ours.cfg.rope_low_freq_factor == pytest.approx(1.0, abs=1e-3)
        assert ours.cfg.rope_high_freq_factor == pytest.approx(4.0, abs=1e-3)
    x = ids(bpe.vocab_size, (1, 60))
    torch.testing.assert_close(ours(x).logits, hf(x).logits, atol=1e-4, rtol=0)


def test_rope_freqs_that_break_llama3s_rule_are_refused():
    from lmforge.interop.gguf import llama3_from_rope_freqs

    factors = np.linspace(1.0, 8.0, 32) ** 2  # a ramp that is not Llama 3's
    with pytest.raises(CheckpointError, match="does not follow Llama 3's RoPE scaling rule"):
        llama3_from_rope_freqs(factors, head_dim=64, theta=10000.0, original=64)


# ------------------------------------------------------------------ tokenizers
def test_gpt2_bpe_tokenizer_encodes_like_the_original(tmp_path, bpe):
    path = tmp_path / "tok.gguf"
    tokens, merges, types = bpe_vocab(bpe)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(True)
    w.add_chat_template("{{ messages }}")
    _finish(w)
    tok = tokenizer_from_gguf(read_gguf(path).metadata, max_length=64)
    tok.save(tmp_path / "saved")
    tok = Tokenizer.load(tmp_path / "saved")
    for text in TEXTS:
        assert tok.encode(text) == bpe.encode(text), text
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("hi", add_special_tokens=True) == [0, *bpe.encode("hi")]
    assert (tok.bos_id, tok.eos_id, tok.model_max_length) == (0, 1, 64)
    assert tok.chat_template == "{{ messages }}"
    assert tok.encode("<|eos|>") == [1]  # control tokens are matched as one special token


def test_llama3_pre_tokenizer_splits_digits_in_threes(bpe):
    tokens, merges, types = bpe_vocab(bpe)
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe",
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges}  # fmt: skip
    tok = tokenizer_from_gguf(meta)
    words = [w for w, _ in tok.backend.pre_tokenizer.pre_tokenize_str("x 12345")]
    assert words == ["x", "Ġ", "123", "45"]


@pytest.fixture(scope="module")
def spm_vocab():
    """A SentencePiece-style vocabulary: <unk> <s> </s>, 256 byte tokens, then pieces learnt by a
    Metaspace BPE (scores: earlier pieces higher)."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers, trainers

    from lmforge.data import default_corpus

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.train_from_iterator(
        default_corpus()[:20], trainers.BpeTrainer(vocab_size=500, show_progress=False)
    )
    vocab = backend.get_vocab()
    pieces = sorted(vocab, key=vocab.get)
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256 + [NORMAL] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    return tokens, scores, types


def test_sentencepiece_tokenizer_matches_highest_score_first_joining(tmp_path, spm_vocab):
    tokens, scores, types = spm_vocab
    path = tmp_path / "spm.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    _finish(w)
    tok = tokenizer_from_gguf(read_gguf(path).metadata)
    texts = [*TEXTS, "The function returns None.", "indentation\tand tabs", "ünïcödé"]
    for text in texts:
        assert tok.encode(text) == spm_reference_encode(text, tokens, scores, types), text
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("Hello", add_special_tokens=True)[0] == 1  # add_bos_token defaults on
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)


# ------------------------------------------------------------------ file format and errors
def _finish(w) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_metadata_of_every_value_type_is_read(tmp_path):
    path = tmp_path / "meta.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    scalars = {
        "u8": (w.add_uint8, 200), "i8": (w.add_int8, -5), "u16": (w.add_uint16, 60000),
        "i16": (w.add_int16, -30000), "u32": (w.add_uint32, 4_000_000_000),
        "i32": (w.add_int32, -2_000_000_000), "f32": (w.add_float32, 1.5),
        "u64": (w.add_uint64, 2**40), "i64": (w.add_int64, -(2**40)), "f64": (w.add_float64, 0.1),
        "bool": (w.add_bool, True), "str": (w.add_string, "héllo 中文"),
    }  # fmt: skip
    for key, (add, value) in scalars.items():
        add(f"t.{key}", value)
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.floats", [0.5, -1.5])
    w.add_array("t.strs", ["a", "", "▁b"])
    w.add_array("t.nested", [[1, 2], [3]])
    _finish(w)
    meta = read_gguf(path).metadata
    assert meta["general.architecture"] == "llama"
    for key, (_, value) in scalars.items():
        assert meta[f"t.{key}"] == value, key
    assert meta["t.ints"].tolist() == [1, 2, 3]
    assert meta["t.floats"].tolist() == [0.5, -1.5]
    assert meta["t.strs"] == ["a", "", "▁b"]
    assert [a.tolist() for a in meta["t.nested"]] == [[1, 2], [3]]


def test_unsupported_architecture_is_named_with_the_supported_list(tmp_path):
    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_block_count(2)
    _finish(w)
    with pytest.raises(CheckpointError, match="GGUF architecture 'mamba' is not supported; "
                       "supported architectures: gpt2, llama"):  # fmt: skip
        import_gguf(path, tmp_path / "out")


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path, bpe):
    hf = tiny_llama(bpe.vocab_size)
    hf.config.intermediate_size = 384  # metadata now disagrees with the ffn weights
    write_llama_gguf(hf, tmp_path / "m.gguf", QT.F16, bpe_vocab(bpe))
    with pytest.raises(CheckpointError, match=r"'blk\.0\.ffn_gate\.weight' has shape \(512, 256\) "
                       r"in the GGUF file but the config implies \(384, 256\)"):  # fmt: skip
        import_gguf(tmp_path / "m.gguf", tmp_path / "out")


def test_unsupported_tensor_type_bad_magic_and_truncation_are_clear(tmp_path):
    path = tmp_path / "q5.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("token_embd.weight", random_blocks(QT.Q5_K, 2), raw_dtype=QT.Q5_K)
    _finish(w)
    f = read_gguf(path)
    assert f.tensors["token_embd.weight"].shape == (2, 256)
    with pytest.raises(CheckpointError, match="'token_embd.weight' is stored as Q5_K.*supported "
                       "types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K"):  # fmt: skip
        f.tensor("token_embd.weight")
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        read_gguf(tmp_path / "x.gguf")
    (tmp_path / "cut.gguf").write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated"):
        read_gguf(tmp_path / "cut.gguf")
