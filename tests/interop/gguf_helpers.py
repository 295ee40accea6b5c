"""Test-side GGUF writing: a Hugging Face Llama -> GGUF file (llama.cpp's conventions), K-quant
encoders, plain-python reference decoders and a reference SentencePiece encoder.

The `gguf` package writes the file and quantizes Q8_0/Q4_0/Q4_1/BF16; it cannot quantize Q4_K
or Q6_K, so those blocks are built here by a simple (not optimal) reference encoding:

- Q4_K: per sub-block of 32, min m = max(0, -min x), scale s = (max x + m) / 15; the super-block
  keeps d = max s / 63 and dmin = max m / 63 (f16) and 6-bit sc = round(s / d), mn = round(m / dmin);
  q = clip(round((x + dmin mn) / (d sc)), 0, 15).
- Q6_K: per sub-block of 16, s = max|x| / 31; d = max|s| / 127 (f16), int8 sc = round(s / d);
  q = clip(round(x / (d sc)), -32, 31) + 32.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import torch

QT = gguf.GGMLQuantizationType
CONTROL, BYTE, UNKNOWN, NORMAL = 3, 6, 2, 1
SPACE = "\u2581"


# ------------------------------------------------------------------ K-quant reference encoders
def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype("<f2").reshape(-1, 1).view(np.uint8)


def encode_q4_k(x: np.ndarray) -> np.ndarray:
    """(rows, cols) float -> (rows, cols / 256 * 144) uint8 Q4_K blocks."""
    rows = x.shape[0]
    sub = x.astype(np.float32).reshape(-1, 8, 32)
    n = sub.shape[0]
    mins = -np.minimum(sub.min(-1), 0)  # (n, 8) >= 0
    scales = (sub.max(-1) + mins) / 15
    d = (scales.max(-1) / 63).astype(np.float16)
    dmin = (mins.max(-1) / 63).astype(np.float16)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.nan_to_num(np.clip(np.round(scales / d[:, None].astype(np.float32)), 0, 63))
        mn = np.nan_to_num(np.clip(np.round(mins / dmin[:, None].astype(np.float32)), 0, 63))
        step = (d[:, None].astype(np.float32) * sc)[..., None]
        offset = (dmin[:, None].astype(np.float32) * mn)[..., None]
        q = np.nan_to_num(np.clip(np.round((sub + offset) / step), 0, 15))
    sc, mn, q = sc.astype(np.uint8), mn.astype(np.uint8), q.astype(np.uint8)
    packed = np.zeros((n, 12), np.uint8)
    packed[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)
    q = q.reshape(n, 4, 2, 32)  # chunk c: sub-blocks 2c (low nibble) and 2c+1 (high nibble)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, 128)
    blocks = np.concatenate([_f16_bytes(d), _f16_bytes(dmin), packed, qs], axis=1)
    return blocks.reshape(rows, -1)


def encode_q6_k(x: np.ndarray) -> np.ndarray:
    """(rows, cols) float -> (rows, cols / 256 * 210) uint8 Q6_K blocks."""
    rows = x.shape[0]
    sub = x.astype(np.float32).reshape(-1, 16, 16)
    n = sub.shape[0]
    s = np.abs(sub).max(-1) / 31
    d = (s.max(-1) / 127).astype(np.float16)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.nan_to_num(np.clip(np.round(s / d[:, None].astype(np.float32)), -128, 127))
        step = (d[:, None].astype(np.float32) * sc)[..., None]
        q = np.nan_to_num(np.clip(np.round(sub / step), -32, 31)) + 32
    q = q.astype(np.uint8).reshape(n, 2, 4, 32)  # (half, q1..q4, l)
    ql = np.stack([(q[:, :, 0] & 15) | ((q[:, :, 2] & 15) << 4),
                   (q[:, :, 1] & 15) | ((q[:, :, 3] & 15) << 4)], axis=2)  # fmt: skip
    qh = (
        (q[:, :, 0] >> 4)
        | ((q[:, :, 1] >> 4) << 2)
        | ((q[:, :, 2] >> 4) << 4)
        | ((q[:, :, 3] >> 4) << 6)
    )
    blocks = np.concatenate(
        [ql.reshape(n, 128), qh.reshape(n, 64), sc.astype(np.int8).view(np.uint8), _f16_bytes(d)],
        axis=1,
    )
    return blocks.reshape(rows, -1)


def quantize(x: np.ndarray, qtype: QT) -> np.ndarray:
    if qtype == QT.Q4_K:
        return encode_q4_k(x)
    if qtype == QT.Q6_K:
        return encode_q6_k(x)
    return gguf.quants.quantize(x.astype(np.float32), qtype)


# ------------------------------------------------------------------ plain-python decoders
def _half(b: bytes) -> float:
    return struct.unpack("<e", b)[0]


def ref_q4_k_block(b: bytes) -> list[float]:
    """One Q4_K block decoded byte by byte, straight from the layout description."""
    d, dmin, scales, qs = _half(b[0:2]), _half(b[2:4]), b[4:16], b[16:144]
    out = []
    for j in range(8):
        if j < 4:
            sc, m = scales[j] & 63, scales[j + 4] & 63
        else:
            sc = (scales[j + 4] & 15) | ((scales[j - 4] >> 6) << 4)
            m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4)
        chunk = qs[32 * (j // 2) : 32 * (j // 2) + 32]
        for byte in chunk:
            q = byte & 15 if j % 2 == 0 else byte >> 4
            out.append(d * sc * q - dmin * m)
    return out


def ref_q6_k_block(b: bytes) -> list[float]:
    ql, qh = b[0:128], b[128:192]
    scales = struct.unpack("<16b", b[192:208])
    d = _half(b[208:210])
    out = [0.0] * 256
    for half in range(2):
        for l in range(32):  # noqa: E741
            low_a, low_b, high = ql[64 * half + l], ql[64 * half + 32 + l], qh[32 * half + l]
            qs = (
                (low_a & 15) | ((high & 3) << 4),
                (low_b & 15) | (((high >> 2) & 3) << 4),
                (low_a >> 4) | (((high >> 4) & 3) << 4),
                (low_b >> 4) | (((high >> 6) & 3) << 4),
            )
            for k, q in enumerate(qs):
                v = 128 * half + 32 * k + l
                out[v] = d * scales[v // 16] * (q - 32)
    return out


# ------------------------------------------------------------------ SentencePiece reference
def spm_reference_encode(text: str, tokens: list[str], scores: list[float], types: list[int]):
    """llama.cpp's SentencePiece BPE: join the adjacent pair whose join is the highest-scoring
    vocabulary piece (leftmost on ties) until none is; unknown pieces become byte tokens."""
    vocab = {t: i for i, t in enumerate(tokens) if types[i] == NORMAL}
    byte_ids = {tokens[i]: i for i in range(len(tokens)) if types[i] == BYTE}
    syms = list(SPACE + text.replace(" ", SPACE))
    while True:
        best = None
        for i in range(len(syms) - 1):
            joined = syms[i] + syms[i + 1]
            if joined in vocab and (best is None or scores[vocab[joined]] > best[0]):
                best = (scores[vocab[joined]], i)
        if best is None:
            break
        i = best[1]
        syms[i : i + 2] = [syms[i] + syms[i + 1]]
    ids = []
    for s in syms:
        if s in vocab:
            ids.append(vocab[s])
        else:
            ids.extend(byte_ids[f"<0x{b:02X}>"] for b in s.encode("utf-8"))
    return ids


# ------------------------------------------------------------------ Llama -> GGUF
def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp converter's q/k row order: per head, row s * d/2 + i goes to 2i + s."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def bpe_vocab(tok) -> tuple[list[str], list[str], list[int]]:
    """(tokens, "left right" merges, token types) of an lmforge byte-level BPE tokenizer."""
    model = json.loads(tok.backend.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    tokens = [tok.id_to_token(i) for i in range(tok.vocab_size)]
    types = [CONTROL if i in tok.special_ids else NORMAL for i in range(tok.vocab_size)]
    return tokens, merges, types


def gguf_names(n_layer: int, tied: bool) -> dict[str, str]:
    """Hugging Face Llama name -> GGUF name."""
    out = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
    }
    if not tied:
        out["lm_head.weight"] = "output.weight"
    parts = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }  # fmt: skip
    for i in range(n_layer):
        for theirs, ours in parts.items():
            out[f"model.layers.{i}.{theirs}.weight"] = f"blk.{i}.{ours}.weight"
    return out


def write_llama_gguf(
    hf,
    path: Path,
    qtype: QT,
    vocab: tuple[list[str], list[str], list[int]],
    *,
    arch: str = "llama",
    alignment: int | None = None,
    rope_freqs: np.ndarray | None = None,
    rope_scaling: tuple[str, float] | None = None,
    extra_tensors: dict[str, np.ndarray] | None = None,
    extra_meta: dict[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Write `hf` (a LlamaForCausalLM) as llama.cpp would; 2-D weights stored as `qtype`, norms
    as F32. Returns GGUF name -> the values as stored (decoded by `gguf.quants.dequantize`)."""
    c = hf.config
    tied = bool(c.tie_word_embeddings)
    w = gguf.GGUFWriter(str(path), arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    w.add_vocab_size(c.vocab_size)
    for key, value in (extra_meta or {}).items():
        w.add_uint32(key, value)
    if rope_scaling is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType(rope_scaling[0]))
        w.add_rope_scaling_factor(rope_scaling[1])
    tokens, merges, types = vocab
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_pad_token_id(2)
    w.add_add_bos_token(True)
    stored: dict[str, np.ndarray] = {}
    state = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
    tensors = {
        ours: state[theirs] for theirs, ours in gguf_names(c.num_hidden_layers, tied).items()
    }
    for name in list(tensors):
        if ".attn_q." in name:
            tensors[name] = permute(tensors[name], c.num_attention_heads)
        elif ".attn_k." in name:
            tensors[name] = permute(tensors[name], c.num_key_value_heads)
    if rope_freqs is not None:
        tensors["rope_freqs.weight"] = rope_freqs.astype(np.float32)
    tensors.update(extra_tensors or {})
    for name, x in tensors.items():
        kind = qtype if x.ndim == 2 else QT.F32
        if kind == QT.F32:
            data = x.astype(np.float32)
            w.add_tensor(name, data)
        elif kind == QT.F16:
            data = x.astype(np.float16)
            w.add_tensor(name, data)
        else:
            data = quantize(x, kind)
            w.add_tensor(name, data, raw_dtype=kind)
        stored[name] = gguf.quants.dequantize(data.view(np.uint8), kind).reshape(x.shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def load_stored(hf, stored: dict[str, np.ndarray]):
    """A copy of `hf` holding the values the GGUF file stores (q/k rows un-permuted)."""
    import copy

    c = hf.config
    ref = copy.deepcopy(hf)
    names = gguf_names(c.num_hidden_layers, bool(c.tie_word_embeddings))
    state = ref.state_dict()
    with torch.no_grad():
        for theirs, ours in names.items():
            x = stored[ours]
            if ".attn_q." in ours or ".attn_k." in ours:
                n = c.num_attention_heads if ".attn_q." in ours else c.num_key_value_heads
                half = x.shape[0] // n // 2
                x = x.reshape(n, half, 2, -1).swapaxes(1, 2).reshape(x.shape)
            state[theirs].copy_(torch.from_numpy(np.ascontiguousarray(x)))
    return ref.eval()
