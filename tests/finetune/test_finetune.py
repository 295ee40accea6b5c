"""`finetune` end to end on tiny models: every task, every method, distillation, errors."""

from __future__ import annotations

import json

import pytest
import torch
from ft_helpers import FAST, pair_rows, sft_rows, tagged_rows, write_csv, write_jsonl
from safetensors.torch import load_file

from lmforge.data.task_batches import TruncationWarning
from lmforge.errors import ConfigError, DataError
from lmforge.peft import is_adapter_dir
from lmforge.recipes.finetune import FinetuneConfig, finetune
from lmforge.recipes.finetuned import load_finetuned, read_task_info, score_records
from lmforge.tokenizer import Tokenizer


def records(out_dir) -> list[dict]:
    lines = (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def best_eval(out_dir, metrics) -> dict:
    return next(
        r for r in records(out_dir) if r.get("step") == metrics["best_step"] and "eval_loss" in r
    )


def test_full_classifier_learns_and_writes_its_run(bert_classifier):
    r, out = bert_classifier, bert_classifier.out_dir
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert m["labels"] == ["neg", "pos"] and m["task"] == "classify" and m["method"] == "full"
    for split in ("valid", "test"):
        assert m[split]["accuracy"] >= 0.9 and m[split]["macro_f1"] >= 0.9, m[split]
        assert set(m[split]["per_class"]) == {"neg", "pos"}
        assert sum(map(sum, m[split]["confusion_matrix"])) == m[split]["n"] == 24
        assert {"precision", "recall", "f1", "support"} <= set(m[split]["per_class"]["pos"])
    assert m["select_metric"] == "eval_macro_f1" and m["best_score"] == r.train.best_score
    assert best_eval(out, m)["eval_macro_f1"] == m["best_score"]
    assert m["best_score"] == max(r["eval_macro_f1"] for r in records(out) if "eval_loss" in r)
    assert read_task_info(out)["labels"] == ["neg", "pos"]
    for name in ("model.safetensors", "config.json", "tokenizer.json", "test-report.md",
                 "test-confusion.png", "metrics.jsonl", "loss.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert "| pos |" in (out / "test-report.md").read_text(encoding="utf-8")
    assert not is_adapter_dir(out)


def test_lora_classifier_learns_and_exports_adapter_and_merged(
    gpt_pretrained, classify_files, tmp_path
):
    fc = FinetuneConfig(task="classify", method="lora", epochs=6, lora_targets=["*_proj"])
    r = finetune(gpt_pretrained, classify_files["train"], tmp_path / "lora", fc,
                 valid=classify_files["valid"], overrides={**FAST, "lr": 1e-2},
                 progress=False)  # fmt: skip
    out = r.out_dir
    assert r.metrics["valid"]["accuracy"] >= 0.9 and r.metrics["valid"]["macro_f1"] >= 0.9
    assert is_adapter_dir(out) and (out / "merged" / "model.safetensors").is_file()
    assert r.trainable.startswith("trainable") and "(100.00%)" not in r.trainable
    # the dir keeps the frozen base; the adapter carries LoRA and the new head
    base = load_file(str(gpt_pretrained / "model.safetensors"))
    kept = load_file(str(out / "model.safetensors"))
    key = "decoder.layers.0.attn.q_proj.weight"
    assert torch.equal(base[key], kept[key])
    # adapter model and merged model give the same scores
    tok, info = Tokenizer.load(out), read_task_info(out)
    rows = [{"text": t, "text_pair": None, "label": lab}
            for t, lab in (("the film was good", "pos"), ("an awful plot", "neg"))]  # fmt: skip
    a = score_records(load_finetuned(out), tok, info, rows)
    b = score_records(load_finetuned(out / "merged"), tok, info, rows)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)


CASES = [
    ("classify", "bert", "last-n"),
    ("classify", "gpt", "prompt-tuning"),
    ("classify", "bert", "prefix-tuning"),
    ("tokens", "bert", "full"),
    ("tokens", "gpt", "lora"),
    ("sft", "gpt", "full"),
    ("sft", "gpt", "lora"),
    ("sft", "gpt", "prefix-tuning"),
    ("seq2seq", "t5", "full"),
    ("seq2seq", "t5", "lora"),
    ("seq2seq", "t5", "prompt-tuning"),
]


def task_files(task, root) -> dict:
    make = {"classify": None, "tokens": tagged_rows, "sft": sft_rows, "seq2seq": pair_rows}[task]
    from ft_helpers import classify_rows

    make = make or classify_rows
    return {"train": write_jsonl(root / "train.jsonl", make(64, 0)),
            "valid": write_csv(root / "valid.csv", make(16, 1))}  # fmt: skip


@pytest.mark.parametrize(("task", "base", "method"), CASES)
def test_every_task_and_method_trains_and_reloads(bases, tmp_path, task, base, method):
    files = task_files(task, tmp_path)
    lr = {"full": 3e-3, "last-n": 3e-3, "lora": 1e-2}.get(method, 3e-2)
    fc = FinetuneConfig(task=task, method=method, epochs=4, n_tokens=4, last_n=1,
                        lora_targets=["*_proj"])  # fmt: skip
    overrides = {**FAST, "lr": lr, "log_every": 1, "eval_every": 8}
    r = finetune(bases[base], files["train"], tmp_path / "out", fc, valid=files["valid"],
                 overrides=overrides, progress=False)  # fmt: skip
    losses = [rec["loss"] for rec in records(r.out_dir)]
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert is_adapter_dir(r.out_dir) == (method in ("lora", "prompt-tuning", "prefix-tuning"))
    # the exported best model (reloaded, adapter applied) scores what the loop measured
    assert r.metrics["valid"]["loss"] == pytest.approx(best_eval(r.out_dir, r.metrics)["eval_loss"],
                                                       rel=1e-4)  # fmt: skip
    if task == "tokens":
        assert {"entity_f1", "entity_precision", "entity_recall", "per_type"} <= set(
            r.metrics["valid"]
        )
    if task in ("sft", "seq2seq"):
        assert r.metrics["select_metric"] == "eval_loss" and "ppl" in r.metrics["valid"]
        # greedy outputs of the best model scored against the references (generation metrics)
        valid = r.metrics["valid"]
        assert {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match", "f1"} <= set(valid)
        assert valid["n"] == 16 and 0 <= valid["chrf"] <= 100 and len(valid["samples"]) == 5
        assert "| chrf |" in (r.out_dir / "valid-report.md").read_text()


def test_distillation_from_a_teacher(
    bases, bert_classifier, classify_files, gpt_pretrained, tmp_path
):
    fc = FinetuneConfig(task="classify", epochs=1, teacher=str(bert_classifier.out_dir),
                        distill_alpha=0.7, distill_temperature=2.0)  # fmt: skip
    r = finetune(bases["bert"], classify_files["train"], tmp_path / "kd", fc,
                 valid=classify_files["valid"], overrides={**FAST, "log_every": 1},
                 progress=False)  # fmt: skip
    rec = records(r.out_dir)[0]
    assert rec["loss"] == pytest.approx(0.3 * rec["ce"] + 0.7 * rec["kd"], rel=1e-4)
    # language-model distillation (SFT) from a causal LM with the same tokenizer
    files = task_files("sft", tmp_path)
    fc = FinetuneConfig(task="sft", epochs=1, teacher=str(gpt_pretrained))
    r = finetune(bases["gpt"], files["train"], tmp_path / "kd-lm", fc, valid=files["valid"],
                 overrides={**FAST, "log_every": 1}, progress=False)  # fmt: skip
    assert "kd" in records(r.out_dir)[0]
    with pytest.raises(ConfigError, match="another tokenizer"):
        fc = FinetuneConfig(task="classify", epochs=1, teacher=str(bert_classifier.out_dir))
        finetune(bases["gpt"], classify_files["train"], tmp_path / "x", fc,
                 valid=classify_files["valid"], overrides=dict(FAST), progress=False)  # fmt: skip


def test_user_errors(bases, classify_files, tmp_path):
    def run(base="bert", task="classify", valid=classify_files["valid"], **over):
        finetune(bases[base], classify_files["train"], tmp_path / "err", FinetuneConfig(task=task),
                 valid=valid, overrides={**FAST, "max_steps": 1, **over}, progress=False)  # fmt: skip

    bad = write_csv(tmp_path / "v.csv", [{"text": "so so", "label": "neutral"}])
    with pytest.raises(DataError, match="label 'neutral'.*never had.*training labels: neg, pos"):
        run(valid=bad)
    with pytest.raises(ConfigError, match="needs an encoder-decoder model"):
        run(base="gpt", task="seq2seq")
    with pytest.raises(ConfigError, match="needs an encoder or decoder model"):
        run(base="t5")
    with pytest.raises(ConfigError, match="longer than the model's max_seq_len=128"):
        run(seq_len=512)
    with pytest.raises(ConfigError, match="cannot change in a fine-tune"):
        run(n_layer=3)
    with pytest.raises(ConfigError, match="unknown method 'loRA'"):
        FinetuneConfig(method="loRA")
    one = write_csv(
        tmp_path / "one.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}]
    )
    with pytest.raises(DataError, match="single label 'x'"):
        finetune(bases["bert"], one, tmp_path / "e", FinetuneConfig(), overrides=dict(FAST))


def test_truncation_is_counted_and_a_missing_valid_is_held_out(bases, classify_files, tmp_path):
    with pytest.warns(TruncationWarning) as caught:
        r = finetune(bases["bert"], classify_files["train"], tmp_path / "cut", FinetuneConfig(),
                     overrides={**FAST, "max_steps": 2, "seq_len": 6}, progress=False)  # fmt: skip
    lines = [str(w.message) for w in caught]
    assert len(lines) == 2  # one line per split, each with its count
    assert lines[0].endswith(
        "of 86 training examples were longer than 6 tokens and were truncated."
    )
    assert lines[1].startswith("10 of 10 validation examples")
    assert r.metrics["train_examples"] == 86 and r.metrics["valid"]["n"] == 10  # 10% held out
