"""Dequantize GGML tensor data (as stored in GGUF files) to float32 with numpy.

A quantized tensor is a run of fixed-size blocks along its fastest (row) dimension; each block
packs `block_size` values into `type_size` bytes. All multi-byte fields are little-endian.
Every decoder below is vectorised over the blocks: (n_blocks, type_size) uint8 -> (n_blocks,
block_size) float32. The layouts, block by block (q = the stored integer, x = the value):

    F32    4 bytes per value.
    F16    IEEE half, 2 bytes per value.
    BF16   the upper 16 bits of a float32: x = float32(u16 << 16).
    Q8_0   32 values, 34 bytes: d (f16) | q[32] (int8).                  x = d * q
    Q4_0   32 values, 18 bytes: d (f16) | qs[16].                         x = d * (q - 8)
           q_j = qs[j] & 0x0F (j < 16),  q_{j+16} = qs[j] >> 4   (low nibbles first half)
    Q4_1   32 values, 20 bytes: d (f16) | m (f16) | qs[16], same nibbles.  x = d * q + m
    Q4_K   256 values (8 sub-blocks of 32), 144 bytes:
           d (f16) | dmin (f16) | scales[12] | qs[128]
           each sub-block j has a 6-bit scale sc_j and a 6-bit min m_j packed in scales[12]:
             j < 4:  sc_j = scales[j] & 63,        m_j = scales[j+4] & 63
             j >= 4: sc_j = (scales[j+4] & 15) | (scales[j-4] >> 6) << 4
                     m_j  = (scales[j+4] >> 4) | (scales[j]   >> 6) << 4
           qs holds 4 chunks of 32 bytes; chunk c gives sub-block 2c its low nibbles and
           sub-block 2c+1 its high nibbles.                    x = d * sc_j * q - dmin * m_j
    Q6_K   256 values (16 sub-blocks of 16), 210 bytes:
           ql[128] (low 4 bits) | qh[64] (high 2 bits) | scales[16] (int8) | d (f16)
           two halves of 128 values; in half h (ql from 64h, qh from 32h), for l < 32:
             q[l]      = (ql[l]    & 15) | ((qh[l] >> 0) & 3) << 4
             q[l + 32] = (ql[l+32] & 15) | ((qh[l] >> 2) & 3) << 4
             q[l + 64] = (ql[l]    >> 4) | ((qh[l] >> 4) & 3) << 4
             q[l + 96] = (ql[l+32] >> 4) | ((qh[l] >> 6) & 3) << 4
           value v of the block uses scale v // 16.            x = d * scales[v // 16] * (q - 32)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lmforge.errors import CheckpointError

F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, BF16 = 0, 1, 2, 3, 8, 12, 14, 30

# every ggml type id -> its name, so an unsupported type is named in errors
GGML_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """(n, 1) float32 from the little-endian half at byte `start` of each block."""
    return blocks[:, start : start + 2].copy().view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, k) packed bytes -> (n, 2k): all low nibbles, then all high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _f32(blocks: np.ndarray) -> np.ndarray:
    return blocks.copy().view("<f4").astype(np.float32)


def _f16_values(blocks: np.ndarray) -> np.ndarray:
    return blocks.copy().view("<f2").astype(np.float32)


def _bf16(blocks: np.ndarray) -> np.ndarray:
    halves = blocks.copy().view("<u2").astype(np.uint32)
    return (halves << 16).view(np.float32)


def _q8_0(blocks: np.ndarray) -> np.ndarray:
    q = blocks[:, 2:].view(np.int8).astype(np.float32)  # (n, 32)
    return _f16(blocks, 0) * q


def _q4_0(blocks: np.ndarray) -> np.ndarray:
    q = _nibbles(blocks[:, 2:]).astype(np.float32) - 8.0  # (n, 32)
    return _f16(blocks, 0) * q


def _q4_1(blocks: np.ndarray) -> np.ndarray:
    q = _nibbles(blocks[:, 4:]).astype(np.float32)  # (n, 32)
    return _f16(blocks, 0) * q + _f16(blocks, 2)


def _k4_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 12) packed bytes -> 6-bit scales (n, 8) and mins (n, 8) of Q4_K's sub-blocks."""
    a, b, c = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = np.concatenate([a & 63, (c & 0x0F) | ((a >> 6) << 4)], axis=1)
    mn = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _q4_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)  # (n, 1)
    sc, mn = _k4_scales(blocks[:, 4:16])  # (n, 8)
    qs = blocks[:, 16:144].reshape(n, 4, 1, 32)  # 4 chunks of 32 bytes
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32)  # (n, sub-block, 32)
    x = (d * sc)[:, :, None] * q.astype(np.float32) - (dmin * mn)[:, :, None]
    return x.reshape(n, 256)


_Q6_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)


def _q6_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    ql = blocks[:, 0:128].reshape(n, 2, 1, 2, 32)  # (n, half, -, ql[l] | ql[l+32], l)
    qh = blocks[:, 128:192].reshape(n, 2, 1, 32)  # (n, half, -, l)
    scales = blocks[:, 192:208].view(np.int8).astype(np.float32)  # (n, 16)
    d = _f16(blocks, 208)  # (n, 1)
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2).reshape(n, 2, 4, 32)  # q1..q4 low bits
    high = (qh >> _Q6_SHIFTS) & 3  # (n, 2, 4, 32) q1..q4 high bits
    q = (low | (high << 4)).astype(np.float32) - 32.0
    x = (d * scales)[:, :, None] * q.reshape(n, 16, 16)  # 16 sub-blocks of 16 values
    return x.reshape(n, 256)


@dataclass(frozen=True)
class QuantType:
    """One GGML storage type: `block_size` values take `type_size` bytes."""

    name: str
    block_size: int
    type_size: int
    decode: Callable[[np.ndarray], np.ndarray]


QUANT_TYPES: dict[int, QuantType] = {
    F32: QuantType("F32", 1, 4, _f32),
    F16: QuantType("F16", 1, 2, _f16_values),
    BF16: QuantType("BF16", 1, 2, _bf16),
    Q8_0: QuantType("Q8_0", 32, 34, _q8_0),
    Q4_0: QuantType("Q4_0", 32, 18, _q4_0),
    Q4_1: QuantType("Q4_1", 32, 20, _q4_1),
    Q4_K: QuantType("Q4_K", 256, 144, _q4_k),
    Q6_K: QuantType("Q6_K", 256, 210, _q6_k),
}


_CHUNK_VALUES = 1 << 22


def type_name(ggml_type: int) -> str:
    return GGML_TYPE_NAMES.get(ggml_type, f"type {ggml_type}")


def quant_type(ggml_type: int, tensor: str = "") -> QuantType:
    """The `QuantType` of a ggml type id, or a CheckpointError naming it and the supported ones."""
    if ggml_type not in QUANT_TYPES:
        where = f"tensor '{tensor}' is stored as " if tensor else "storage type "
        supported = ", ".join(t.name for t in QUANT_TYPES.values())
        raise CheckpointError(
            f"{where}{type_name(ggml_type)}, which lmforge cannot dequantize; supported types: "
            f"{supported} (re-quantize the model to one of them)."
        )
    return QUANT_TYPES[ggml_type]


def n_bytes(ggml_type: int, n_values: int, tensor: str = "") -> int:
    """Bytes that `n_values` values of `ggml_type` occupy."""
    qt = quant_type(ggml_type, tensor)
    return n_values // qt.block_size * qt.type_size


def dequantize(data: np.ndarray, ggml_type: int, n_values: int, tensor: str = "") -> np.ndarray:
    """Decode `n_values` values of `ggml_type` from raw bytes into a flat float32 array.

    Args:
        data: the tensor's bytes (uint8, e.g. a slice of a memory map).
        ggml_type: the ggml storage type id (0 = F32, 1 = F16, 8 = Q8_0, 12 = Q4_K, ...).
        n_values: number of values the bytes hold (a multiple of the type's block size).
        tensor: the tensor's name, for error messages.

    Returns:
        (n_values,) float32.
    """
    qt = quant_type(ggml_type, tensor)
    if n_values % qt.block_size:
        raise CheckpointError(
            f"tensor '{tensor}' has {n_values} values, not a multiple of the {qt.name} block of "
            f"{qt.block_size}; the file is damaged."
        )
    n_blocks = n_values // qt.block_size
    blocks = np.asarray(data, dtype=np.uint8).reshape(n_blocks, qt.type_size)
    out = np.empty((n_blocks, qt.block_size), dtype=np.float32)
    step = max(1, _CHUNK_VALUES // qt.block_size)  # bounds the decoders' temporaries
    for start in range(0, n_blocks, step):
        out[start : start + step] = qt.decode(blocks[start : start + step])
    return out.reshape(n_values)
