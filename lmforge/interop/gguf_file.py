"""Read GGUF files (versions 2 and 3, little-endian): metadata, tensor infos, memory-mapped data.

The layout of a GGUF file, every integer little-endian:

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv x  (key: string, value_type u32, value)
    n_tensors x (name: string, n_dims u32, dims u64[n_dims], ggml_type u32, offset u64)
    padding to `general.alignment` (default 32)
    tensor data; each tensor at data_start + offset

A string is u64 length + UTF-8 bytes; an array is item_type u32 + count u64 + items (arrays may
nest). Dims are listed fastest-varying first, the reverse of a numpy shape: a (rows, cols) matrix
is stored with dims [cols, rows]. Version 1 (u32 counts) and big-endian files are refused.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import CheckpointError
from lmforge.interop.gguf_quants import QUANT_TYPES, dequantize, n_bytes, quant_type

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 8  # arrays of arrays of ... in metadata
MAX_VALUES = 1 << 48  # values of one tensor

# value type id -> (struct format, numpy dtype) of the scalar types
_SCALARS: dict[int, tuple[str, str]] = {
    0: ("<B", "<u1"),
    1: ("<b", "<i1"),
    2: ("<H", "<u2"),
    3: ("<h", "<i2"),
    4: ("<I", "<u4"),
    5: ("<i", "<i4"),
    6: ("<f", "<f4"),
    7: ("<?", "?"),
    10: ("<Q", "<u8"),
    11: ("<q", "<i8"),
    12: ("<d", "<f8"),
}
STRING, ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file.

    Attributes:
        name: the GGUF tensor name (e.g. "blk.0.attn_q.weight").
        shape: the numpy shape (slowest dimension first: the reverse of GGUF's dims).
        ggml_type: storage type id (0 = F32, 1 = F16, 8 = Q8_0, 12 = Q4_K, ...).
        start: absolute byte offset of its data in the file.
        n_bytes: bytes its data occupies (0 for a storage type lmforge cannot decode).
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    start: int
    n_bytes: int

    @property
    def n_values(self) -> int:
        return math.prod(self.shape)


class _Cursor:
    """Sequential little-endian reads from a byte buffer, with a clear error past its end."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise CheckpointError(
                f"{self.path} ends early (needs {n} bytes at offset {self.pos}); the GGUF file is "
                "truncated or damaged, download it again."
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return bytes(self.take(self.scalar("<Q"))).decode("utf-8", errors="replace")

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype][0])
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            if depth >= MAX_NESTING:
                raise CheckpointError(
                    f"{self.path} nests metadata arrays more than {MAX_NESTING} deep at offset "
                    f"{self.pos}; the GGUF file is damaged."
                )
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            if item_type in _SCALARS:  # numeric arrays as numpy, read in one go
                dtype = np.dtype(_SCALARS[item_type][1])
                if count > len(self.buf):
                    self.take(count)  # more items than bytes: report truncation
                return np.frombuffer(self.take(count * dtype.itemsize), dtype=dtype).copy()
            if count * (8 if item_type == STRING else 12) > len(self.buf) - self.pos:
                self.take(count * 8)  # more items than bytes left: report truncation
            return [self.value(item_type, depth + 1) for _ in range(count)]
        raise CheckpointError(
            f"{self.path} holds a metadata value of unknown type {vtype} at offset {self.pos}; "
            "the GGUF file is damaged or newer than this reader."
        )


class GGUFFile:
    """A parsed GGUF file whose tensor data stays memory-mapped until asked for.

    Attributes:
        path: the file.
        version: 2 or 3.
        metadata: key -> value (int, float, bool, str, numpy array for numeric arrays, list for
            string and nested arrays).
        tensors: name -> `TensorInfo`, in file order.
        alignment: `general.alignment` (default 32).
        data_start: absolute offset of the tensor data section.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"GGUF file {self.path} does not exist; pass a .gguf file.")
        size = self.path.stat().st_size
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r") if size else np.zeros(0, "u1")
        cur = _Cursor(memoryview(self._map), self.path)
        head = bytes(self._map[:4])
        if head != MAGIC:
            raise CheckpointError(
                f"{self.path} is not a GGUF file (it starts with {head!r}, not b'GGUF'); "
                "pass a .gguf file such as llama.cpp or Ollama use."
            )
        cur.take(4)
        self.version = cur.scalar("<I")
        if self.version not in (2, 3):
            hint = " (a big-endian file)" if self.version >= 1 << 16 else ""
            raise CheckpointError(
                f"{self.path} is GGUF version {self.version}{hint}, but lmforge reads "
                "little-endian versions 2 and 3; re-convert it with a current llama.cpp."
            )
        n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
        if n_tensors > size or n_kv > size:
            raise CheckpointError(
                f"{self.path} claims {n_tensors} tensors and {n_kv} metadata entries, more than "
                "the file can hold; the GGUF file is damaged."
            )
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            self.metadata[key] = cur.value(cur.scalar("<I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.scalar("<I")
            if n_dims > MAX_DIMS:
                raise CheckpointError(
                    f"tensor '{name}' in {self.path} has {n_dims} dimensions, more than GGUF's "
                    f"{MAX_DIMS}; the GGUF file is damaged."
                )
            dims = [cur.scalar("<Q") for _ in range(n_dims)]
            if math.prod(dims) > MAX_VALUES:
                raise CheckpointError(
                    f"tensor '{name}' in {self.path} claims dims {dims}, more values than any "
                    "file can hold; the GGUF file is damaged."
                )
            infos.append((name, tuple(reversed(dims)), cur.scalar("<I"), cur.scalar("<Q")))
        self.alignment = meta_int(
            self.metadata, "general.alignment", DEFAULT_ALIGNMENT, low=1, high=1 << 16
        )
        if self.alignment & (self.alignment - 1):
            raise CheckpointError(
                f"{self.path} sets general.alignment={self.alignment}, not a power of two; the "
                "GGUF file is damaged."
            )
        self.data_start = -(-cur.pos // self.alignment) * self.alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, ggml_type, offset in infos:
            n_values = math.prod(shape)
            # a type lmforge cannot decode is reported when the tensor is read, not here
            length = n_bytes(ggml_type, n_values, name) if ggml_type in QUANT_TYPES else 0
            start = self.data_start + offset
            if start + length > size:
                raise CheckpointError(
                    f"tensor '{name}' lies past the end of {self.path}; the GGUF file is "
                    "truncated, download it again."
                )
            self.tensors[name] = TensorInfo(name, shape, ggml_type, start, length)

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of one tensor (a read-only view into the memory map)."""
        info = self._info(name)
        return self._map[info.start : info.start + info.n_bytes]

    def tensor(self, name: str) -> np.ndarray:
        """One tensor dequantized to float32, in numpy shape order (slowest dimension first)."""
        info = self._info(name)
        quant = quant_type(info.ggml_type, name)
        if info.shape and info.shape[-1] % quant.block_size:
            raise CheckpointError(
                f"tensor '{name}' has rows of {info.shape[-1]} values, not a multiple of the "
                f"{quant.name} block of {quant.block_size}; the GGUF file is damaged."
            )
        return dequantize(self.raw(name), info.ggml_type, info.n_values, name).reshape(info.shape)

    def _info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise CheckpointError(
                f"{self.path} has no tensor '{name}'; the file does not match its metadata."
            )
        return self.tensors[name]


def _wrong_type(key: str, value: Any, want: str) -> CheckpointError:
    shown = repr(value if not isinstance(value, np.ndarray | list) else value[:4])[:60]
    return CheckpointError(
        f"GGUF metadata '{key}' is {shown} ({type(value).__name__}) but must be {want}; the "
        "file's metadata is damaged."
    )


def meta_int(
    meta: dict[str, Any],
    key: str,
    default: int | None = None,
    low: int | None = None,
    high: int | None = None,
) -> int | None:
    """An integer metadata value (`default` when absent) within [low, high]; a string, array,
    float or bool in its place is one clear error naming the key."""
    value = meta.get(key, default)
    if value is None:
        return None
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(key, value, "an integer")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"in [{low}, {high}]"
        raise CheckpointError(
            f"GGUF metadata '{key}' is {value} but must be {bounds}; the file's metadata is "
            "damaged."
        )
    return value


def meta_float(meta: dict[str, Any], key: str, default: float | None = None) -> float | None:
    """A finite number from metadata (`default` when absent); anything else names the key."""
    value = meta.get(key, default)
    if value is None:
        return None
    if isinstance(value, np.integer | np.floating):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(key, value, "a number")
    if not math.isfinite(value):
        raise _wrong_type(key, value, "a finite number")
    return float(value)


def meta_str(meta: dict[str, Any], key: str, default: str | None = None) -> str | None:
    """A string from metadata (`default` when absent); anything else names the key."""
    value = meta.get(key, default)
    if value is not None and not isinstance(value, str):
        raise _wrong_type(key, value, "a string")
    return value


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file's header, metadata and tensor infos; the data stays memory-mapped."""
    return GGUFFile(path)
