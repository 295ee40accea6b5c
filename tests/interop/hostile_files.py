"""Crafted model files that lie about their sizes or types, and a runner that loads each one and
reports what happened, how long it took and the process's peak memory.

    python tests/interop/hostile_files.py DIR    # one JSON line per case

Run as its own process (by `test_hostile_files.py` and by hand) so that the peak resident
memory it reports belongs to these loads alone.
"""

from __future__ import annotations

import json
import resource
import struct
import sys
import time
from pathlib import Path

U32, I32, F32, BOOL, STR, ARR, U64 = 4, 5, 6, 7, 8, 9, 10


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _value(vtype: int, value) -> bytes:
    if vtype == STR:
        return _s(value)
    if vtype == ARR:
        item_type, items = value
        return struct.pack("<IQ", item_type, len(items)) + b"".join(
            _value(item_type, v) for v in items
        )
    return struct.pack({U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q"}[vtype], value)


def gguf_bytes(
    kv: dict[str, tuple[int, object]],
    tensors: list[tuple[str, list[int], int, int]] = (),
    n_tensors: int | None = None,
    n_kv: int | None = None,
    tail: bytes = b"",
) -> bytes:
    """A GGUF v3 file: metadata `kv` (key -> (type, value)), tensor infos (name, dims, ggml
    type, offset); counts may be overridden to lie."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors,
                                len(kv) if n_kv is None else n_kv)  # fmt: skip
    for key, (vtype, value) in kv.items():
        out += _s(key) + struct.pack("<I", vtype) + _value(vtype, value)
    for name, dims, ggml_type, offset in tensors:
        out += (
            _s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        )
        out += struct.pack("<IQ", ggml_type, offset)
    return out + tail


SPECIALS = ["<unk>", "<s>", "</s>"]


def llama_meta(**changes) -> dict[str, tuple[int, object]]:
    meta = {
        "general.architecture": (STR, "llama"),
        "llama.block_count": (U32, 2),
        "llama.context_length": (U32, 64),
        "llama.embedding_length": (U32, 64),
        "llama.feed_forward_length": (U32, 128),
        "llama.attention.head_count": (U32, 4),
        "llama.rope.freq_base": (F32, 10000.0),
        "tokenizer.ggml.model": (STR, "llama"),
        "tokenizer.ggml.tokens": (ARR, (STR, [*SPECIALS, "\u2581", "a", "b", "ab"])),
        "tokenizer.ggml.scores": (ARR, (F32, [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0])),
        "tokenizer.ggml.token_type": (ARR, (I32, [2, 3, 3, 1, 1, 1, 1])),
        "tokenizer.ggml.bos_token_id": (U32, 1),
    }
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


def _gguf_cases(d: Path) -> dict[str, tuple[str, Path]]:
    """name -> ("import" | "tokenizer", path)."""
    nested: tuple = (U32, [1])
    for _ in range(200):
        nested = (ARR, [nested])
    files = {
        "gguf_blocks_1e9": ("import", gguf_bytes(llama_meta(**{"llama.block_count": (U32, 10**9)}))),
        "gguf_tensors_1e9": ("import", gguf_bytes(llama_meta(), n_tensors=10**9)),
        "gguf_kv_2e19": ("import", gguf_bytes(llama_meta(), n_kv=2**64 - 1)),
        "gguf_dims_overflow": ("import", gguf_bytes(llama_meta(), [("token_embd.weight", [2**40, 2**40], 0, 0)])),
        "gguf_n_dims_1e9": ("import", gguf_bytes(llama_meta(), [("x", [1, 1], 0, 0)]).replace(
            struct.pack("<I", 2) + struct.pack("<Q", 1) * 2, struct.pack("<I", 10**9) + struct.pack("<Q", 1) * 2)),
        "gguf_nested_arrays": ("import", gguf_bytes(llama_meta(**{"x.nested": (ARR, nested)}))),
        "gguf_string_2e60": ("import", gguf_bytes(llama_meta())[:24] + struct.pack("<Q", 2**60) + b"abc"),
        "gguf_alignment_str": ("import", gguf_bytes(llama_meta(**{"general.alignment": (STR, "32")}))),
        "gguf_alignment_3": ("import", gguf_bytes(llama_meta(**{"general.alignment": (U32, 3)}))),
        "gguf_alignment_0": ("import", gguf_bytes(llama_meta(**{"general.alignment": (U32, 0)}))),
        "gguf_head_count_str": ("import", gguf_bytes(llama_meta(**{"llama.attention.head_count": (STR, "4")}))),
        "gguf_head_count_0": ("import", gguf_bytes(llama_meta(**{"llama.attention.head_count": (U32, 0)}))),
        "gguf_head_count_strs": ("import", gguf_bytes(llama_meta(**{"llama.attention.head_count": (ARR, (STR, ["4", "4"]))}))),
        "gguf_rope_base_str": ("import", gguf_bytes(llama_meta(**{"llama.rope.freq_base": (STR, "1e4")}))),
        "gguf_rope_base_nan": ("import", gguf_bytes(llama_meta(**{"llama.rope.freq_base": (F32, float("nan"))}))),
        "gguf_norm_eps_inf": ("import", gguf_bytes(llama_meta(**{"llama.attention.layer_norm_rms_epsilon": (F32, float("inf"))}))),
        "gguf_bos_id_str": ("tokenizer", gguf_bytes(llama_meta(**{"tokenizer.ggml.bos_token_id": (STR, "1")}))),
        "gguf_bos_id_array": ("tokenizer", gguf_bytes(llama_meta(**{"tokenizer.ggml.bos_token_id": (ARR, (U32, [1, 2]))}))),
        "gguf_tokens_ints": ("tokenizer", gguf_bytes(llama_meta(**{"tokenizer.ggml.tokens": (ARR, (U32, [1, 2, 3, 4, 5, 6, 7]))}))),
        "gguf_duplicate_tokens": ("tokenizer", gguf_bytes(llama_meta(**{"tokenizer.ggml.tokens": (ARR, (STR, [*SPECIALS, "\u2581", "a", "b", "a"]))}))),
        "gguf_unknown_merge": ("tokenizer", gguf_bytes(llama_meta(**{
            "tokenizer.ggml.model": (STR, "gpt2"), "tokenizer.ggml.merges": (ARR, (STR, ["a zz"]))}))),
        "gguf_scores_nan": ("tokenizer", gguf_bytes(llama_meta(**{"tokenizer.ggml.scores": (ARR, (F32, [float("nan")] * 7))}))),
        "gguf_token_2m_chars": ("tokenizer-ok", gguf_bytes(llama_meta(**{
            "tokenizer.ggml.tokens": (ARR, (STR, [*SPECIALS, "\u2581", "a", "b", "a" * 2_000_000])),
        }))),
    }  # fmt: skip
    out = {}
    for name, (kind, data) in files.items():
        path = d / f"{name}.gguf"
        path.write_bytes(data)
        out[name] = (kind, path)
    return out


def _model_dir_cases(d: Path) -> dict[str, tuple[str, Path]]:
    import torch

    from lmforge.config import ModelConfig
    from lmforge.models import Transformer, save_model

    torch.manual_seed(0)
    good = d / "good"
    save_model(
        Transformer(ModelConfig.from_preset("gpt-tiny", vocab_size=64, max_seq_len=32)), good
    )
    config = json.loads((good / "config.json").read_text())
    weights = (good / "model.safetensors").read_bytes()
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 4 * 10**18]}}
    )
    cases = {
        "config_list": b"[]",
        "config_null": b"null",
        "config_latin1": '{"n_layer": 2, "x": "é"}'.encode("latin-1"),
        "config_deep": b"[" * 100_000 + b"]" * 100_000,
        "config_n_layer_1e9": json.dumps({**config, "n_layer": 10**9}).encode(),
        "config_norm_eps_nan": json.dumps({**config, "norm_eps": float("nan")}).encode(),
        "config_1000_wide_layers": json.dumps({**config, "n_layer": 1000, "d_model": 4096, "n_head": 32, "head_dim": None, "d_ff": None}).encode(),
        "weights_claim_1e18_values": None,
        "weights_nan": None,
    }  # fmt: skip
    out = {}
    for name, raw in cases.items():
        target = d / name
        target.mkdir()
        (target / "config.json").write_bytes(
            raw if raw is not None else json.dumps(config).encode()
        )
        (target / "model.safetensors").write_bytes(weights)
        out[name] = ("load", target)
    (d / "weights_claim_1e18_values" / "model.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header.encode() + b"\0" * len(weights)
    )  # as large as the real weights, so only the header's own claim is wrong
    from safetensors.torch import load_file, save_file

    state = load_file(str(good / "model.safetensors"))
    name = sorted(state)[3]
    state[name][0] = float("nan")
    save_file(state, str(d / "weights_nan" / "model.safetensors"))
    return out


def run(kind: str, path: Path, scratch: Path) -> None:
    if kind == "import":
        from lmforge.interop.gguf import import_gguf

        import_gguf(path, scratch / (path.stem + "_out"))
    elif kind.startswith("tokenizer"):
        from lmforge.interop.gguf_file import read_gguf
        from lmforge.interop.gguf_vocab import tokenizer_from_gguf

        tokenizer_from_gguf(read_gguf(path).metadata)
    else:
        from lmforge.models import load_model

        load_model(path)


def main(directory: str) -> None:
    from lmforge.errors import LmforgeError

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[str, Path]] = {**_gguf_cases(d), **_model_dir_cases(d)}
    for name, (kind, path) in cases.items():
        start = time.perf_counter()
        try:
            run(kind, path, d)
            error, outcome = None, "loaded"
        except LmforgeError as e:
            error, outcome = str(e), type(e).__name__
        except Exception as e:  # what the test reports as a defect
            error, outcome = f"{type(e).__name__}: {e}", "traceback"
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        record = dict(
            case=name,
            expect="loaded" if kind.endswith("-ok") else "error",
            outcome=outcome,
            error=error,
            seconds=round(time.perf_counter() - start, 3),
            peak_rss_mb=round(peak, 1),
        )
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
