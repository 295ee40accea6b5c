"""Compression meets PEFT: a LoRA-fine-tuned dir as input of `prune` / `compress` (the adapter is
merged first), and prefix tuning on a structurally pruned model (per-block head counts)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lmforge.compress.structured import shrink, structured_prune
from lmforge.config import ModelConfig
from lmforge.models import Transformer, load_model
from lmforge.peft import apply_prefix_tuning, lora_modules, merge_lora
from lmforge.peft.adapter import is_adapter_dir
from lmforge.peft.prompt import real_kv
from lmforge.recipes.finetuned import load_finetuned, read_task_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import run_cli  # noqa: E402

IDS = torch.tensor([[2, 5, 9, 11, 3], [2, 7, 8, 3, 0]])


@pytest.fixture(scope="module")
def lora_classifier(toy_classifier, tmp_path_factory) -> Path:
    """bert-tiny fine-tuned with LoRA on the toy task: an adapter dir (base + adapter files)."""
    from ft_helpers import FAST, make_base, one_thread

    from lmforge.recipes.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("compress_lora")
    with one_thread():
        base = make_base(root, "bert-tiny", "wordpiece")
        finetune(base, toy_classifier["train"], root / "lora",
                 FinetuneConfig(task="classify", method="lora", epochs=2),
                 valid=toy_classifier["valid"], overrides=FAST, progress=False)  # fmt: skip
    return root / "lora"


@torch.no_grad()
def test_prune_a_lora_finetuned_dir_merges_the_adapter_first(lora_classifier, tmp_path,
                                                             monkeypatch, capsys):  # fmt: skip
    assert is_adapter_dir(lora_classifier)
    adapted = load_finetuned(lora_classifier)
    assert lora_modules(adapted)
    merged = merge_lora(adapted)
    # the adapter changed the model: ignoring it would be seen below
    bare = load_model(lora_classifier).eval()
    assert not torch.allclose(bare(IDS).logits, merged(IDS).logits, atol=1e-4)
    out = tmp_path / "pruned"
    code, text, err = run_cli(monkeypatch, capsys, "prune", lora_classifier, "--out", out,
                              "--ffn-fraction", "0.5", "--head-fraction", "0.5")  # fmt: skip
    assert code == 0, err
    assert not is_adapter_dir(out)  # a plain model dir: LoRA folded into the pruned weights
    pruned = load_finetuned(out)
    assert not lora_modules(pruned)
    want = structured_prune(merged, 0.5, 0.5).eval()
    torch.testing.assert_close(pruned(IDS).logits, want(IDS).logits, atol=1e-5, rtol=1e-5)
    assert read_task_info(out)["labels"] == ["neg", "pos"]


def test_compress_a_lora_finetuned_dir(lora_classifier, toy_classifier, tmp_path,
                                       monkeypatch, capsys):  # fmt: skip
    out = tmp_path / "c"
    code, text, err = run_cli(
        monkeypatch, capsys, "compress", lora_classifier, "--out", out,
        "--train", toy_classifier["train"], "--test", toy_classifier["test"],
        "--ffn-fraction", "0.5", "--head-fraction", "0.5", "--max-steps", "3",
        "--batch-size", "16", "--threads", "1", "--quantize", "dynamic-int8",
    )  # fmt: skip
    assert code == 0, err
    assert "distilled:" in text and "quantized (dynamic-int8):" in text
    final = load_model(out / "quantized")
    base = load_model(lora_classifier).cfg
    assert final.cfg.layer_d_ff == [base.d_ff // 2] * base.n_layer
    code, text, err = run_cli(monkeypatch, capsys, "evaluate", out / "quantized", "--data",
                              toy_classifier["test"])  # fmt: skip
    assert code == 0 and "accuracy" in text, err


def _uneven_llama() -> Transformer:
    """llama-tiny (4 query heads, 2 key/value heads) without positions, its second block pruned
    to one key/value group and the first block kept whole."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("llama-tiny", dropout=0.0, attn_dropout=0.0, pos="none")
    model = Transformer(cfg).eval()
    pruned = shrink(model, kv_groups=[torch.tensor([0, 1]), torch.tensor([1])])
    assert pruned.cfg.layer_kv_heads == [2, 1]
    return pruned.eval()


@torch.no_grad()
def test_prefix_tuning_on_a_pruned_model_sees_its_prefix_as_context():
    """With per-block key/value head counts, a prefix holding the keys and values of tokens p
    still equals p as context (Li & Liang's real-word initialisation), block by block."""
    model = _uneven_llama()
    p = torch.tensor([7, 8, 9, 10, 11])
    x = torch.randint(3, model.cfg.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    want = model(torch.cat([p.expand(2, p.numel()), x], dim=1)).logits[:, p.numel() :]
    kv = real_kv(model, ["decoder"], p)["decoder"]  # (L, 2, max heads, n, hd), zero-padded
    assert kv.shape[2] == 2 and not kv[1, :, 1:].any()
    apply_prefix_tuning(model, p.numel(), init="random")
    model.decoder.prefix.kv.copy_(kv)
    pairs = model.decoder.prefix(2)
    assert [k.shape[1] for k, _ in pairs] == [2, 1]
    torch.testing.assert_close(model(x).logits, want, atol=1e-5, rtol=1e-5)


def test_finetune_prefix_tuning_on_a_pruned_dir(toy_lm, tmp_path, monkeypatch, capsys):
    from ft_helpers import sft_rows, write_jsonl

    from lmforge.models import save_model
    from lmforge.tokenizer import Tokenizer

    base = load_model(toy_lm["model"])
    pruned = tmp_path / "pruned"  # block 0 keeps both key/value groups, block 1 one
    save_model(shrink(base, kv_groups=[torch.tensor([0, 1]), torch.tensor([0])]), pruned)
    Tokenizer.load(toy_lm["model"]).save(pruned)
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(16))
    out = tmp_path / "prefix"
    code, _, err = run_cli(monkeypatch, capsys, "finetune", pruned, "--train", data, "--task",
                           "sft", "--method", "prefix-tuning", "--out", out, "max_steps=2",
                           "batch_size=8", "eval_every=2")  # fmt: skip
    assert code == 0, err
    model = load_finetuned(out)
    assert [k.shape[1] for k, _ in model.decoder.prefix(1)] == [2, 1]
    code, text, err = run_cli(monkeypatch, capsys, "generate", out, "--prompt", "the film",
                              "--max-new-tokens", "3")  # fmt: skip
    assert code == 0, err
