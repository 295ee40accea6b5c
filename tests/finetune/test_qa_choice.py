"""Extractive QA (SQuAD format, windows over long contexts) and multiple choice: windowing and
offset mapping round-trip, the span head equals Hugging Face's BertForQuestionAnswering, both
tasks fine-tune, reload and score, and bad input gets one sentence."""

from __future__ import annotations

import json

import pytest
import torch
from ft_helpers import FAST, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st
from qa_helpers import choice_rows, qa_rows

from lmforge.data.qa import best_answers, qa_windows, read_qa_file
from lmforge.data.tasks import read_task_file
from lmforge.errors import ConfigError, DataError
from lmforge.recipes.finetune import FinetuneConfig, finetune
from lmforge.recipes.finetuned import evaluate_finetuned, read_task_info
from lmforge.tokenizer import Tokenizer

WORD = st.text(
    alphabet=st.sampled_from(list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789éüß北京中文,.!?-'")),
    min_size=1,
    max_size=10,
)


@st.composite
def qa_case(draw):
    words = draw(st.lists(WORD, min_size=1, max_size=60))
    gaps = draw(st.lists(st.sampled_from([" ", "  ", "\n"]), min_size=len(words),
                         max_size=len(words)))  # fmt: skip
    i = draw(st.integers(0, len(words) - 1))
    j = draw(st.integers(i, min(len(words) - 1, i + 3)))
    gaps[i:j] = [" "] * (j - i)  # the answer's own words are one space apart
    context, start = "", 0
    for k, (w, gap) in enumerate(zip(words, gaps, strict=True)):
        if k == i:
            start = len(context)
        context += w + (gap if k < len(words) - 1 else "")
    answer = " ".join(words[i : j + 1])
    assert context[start : start + len(answer)] == answer
    question = " ".join(draw(st.lists(WORD, min_size=1, max_size=8)))
    max_len = draw(st.integers(24, 48))
    stride = draw(st.integers(0, 24))
    record = {"id": "x", "question": question, "context": context,
              "answers": {"text": [answer], "answer_start": [start]}}  # fmt: skip
    return record, max_len, stride


@pytest.mark.parametrize("base", ["bert", "gpt"])
def test_windows_and_offsets_round_trip(bases, base):
    tok = Tokenizer.load(bases[base])

    @settings(max_examples=60, deadline=None)
    @given(qa_case())
    def check(case):
        record, max_len, stride = case
        windows = qa_windows(tok, [record], max_len, stride)
        full = tok.backend.encode(record["context"], add_special_tokens=False)
        seen = []
        for w in windows:
            assert len(w.input_ids) <= max_len
            assert len(w.input_ids) == len(w.token_type_ids) == len(w.offsets)
            seen += [o for o in w.offsets if o is not None]
        # every context token is in a window, in order; consecutive windows only overlap
        assert sorted(set(seen)) == sorted(set(map(tuple, full.offsets)))
        answer = record["answers"]["text"][0]
        holding = [w for w in windows if w.start]
        lengths = [sum(o is not None for o in w.offsets) for w in windows]
        a0 = record["answers"]["answer_start"][0]
        span = [t for t, (s, e) in enumerate(full.offsets) if e > a0 and s < a0 + len(answer)]
        # consecutive windows share `overlap` tokens, so any answer of at most overlap + 1
        # tokens lies whole in some window (a longer one may straddle every boundary)
        overlap = min(stride, max(lengths) // 2)
        if span and (len(windows) == 1 or span[-1] - span[0] + 1 <= overlap + 1):
            assert holding, "no window holds an answer that fits in the overlap"
        for w in holding:  # token positions map back to exactly the answer's characters
            text = record["context"][w.offsets[w.start][0] : w.offsets[w.end][1]]
            assert (text if base == "bert" else text.strip()) == answer
            n = len(w.input_ids)
            s_log = [[10.0 if i == w.start else 0.0 for i in range(len(v.input_ids))]
                     for v in windows]  # fmt: skip
            e_log = [[10.0 if i == w.end else 0.0 for i in range(len(v.input_ids))]
                     for v in windows]  # fmt: skip
            s_log = [
                row if v is w else [0.0] * len(row) for row, v in zip(s_log, windows, strict=True)
            ]
            e_log = [
                row if v is w else [0.0] * len(row) for row, v in zip(e_log, windows, strict=True)
            ]
            assert n and best_answers([record], windows, s_log, e_log, max_answer_len=64) == [
                answer
            ]

    check()


def test_qa_head_matches_hf_bert_for_question_answering(tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from lmforge.config import ModelConfig
    from lmforge.interop import import_hf
    from lmforge.models import Transformer
    from lmforge.models.io import load_state_dict

    hf_cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    ref = transformers.BertForQuestionAnswering(hf_cfg).eval()
    hf_dir = tmp_path / "hf"
    ref.bert.save_pretrained(hf_dir)  # the encoder as a BertModel checkpoint
    ours_dir = import_hf(hf_dir, tmp_path / "ours")
    cfg = ModelConfig.from_dir(ours_dir).replace(heads=("qa",))
    model = Transformer(cfg).eval()
    state = load_file(str(ours_dir / "model.safetensors"))
    state = {k: v for k, v in state.items() if not k.startswith("heads.")}
    state["heads.qa_outputs.weight"] = ref.qa_outputs.weight.detach().clone()
    state["heads.qa_outputs.bias"] = ref.qa_outputs.bias.detach().clone()
    load_state_dict(model, state, ours_dir / "model.safetensors", strict=True)
    ids = torch.randint(0, 120, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    types = torch.zeros_like(ids)
    types[:, 8:] = 1
    with torch.no_grad():
        theirs = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    real = mask.bool()  # padding positions are masked out of the loss and of predictions
    torch.testing.assert_close(
        logits[..., 0][real], theirs.start_logits[real], atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(logits[..., 1][real], theirs.end_logits[real], atol=1e-5, rtol=1e-4)


def test_qa_finetunes_with_windows_reloads_and_scores(bases, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", qa_rows(96, 0, unanswerable=0.2))
    valid = write_jsonl(tmp_path / "valid.jsonl", qa_rows(24, 1, unanswerable=0.2))
    fc = FinetuneConfig(task="qa", epochs=3, max_len=32, doc_stride=8)
    r = finetune(bases["bert"], train, tmp_path / "qa", fc, valid=valid,
                 overrides={**FAST, "log_every": 1}, progress=False)  # fmt: skip
    losses = [json.loads(x)["loss"] for x in (r.out_dir / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x and "eval_loss" not in x]  # fmt: skip
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    v = r.metrics["valid"]
    assert v["windows"] > v["n"] == 24  # long contexts were split into several windows
    assert {"exact_match", "f1", "has_answer_f1", "no_answer_f1", "loss", "samples"} <= set(v)
    assert 0.0 <= v["exact_match"] <= v["f1"] <= 100.0
    info = read_task_info(r.out_dir)
    assert info["task"] == "qa" and info["doc_stride"] == 8 and info["unanswerable"]
    scores, paths = evaluate_finetuned(r.out_dir, valid, report_dir=tmp_path / "rep")
    assert scores["f1"] == pytest.approx(v["f1"]) and "| f1 |" in paths[0].read_text()


@pytest.mark.parametrize("base", ["bert", "gpt"])
def test_choice_finetunes_and_scores(bases, tmp_path, base):
    train = write_jsonl(tmp_path / "train.jsonl", choice_rows(96, 0))
    valid = write_jsonl(tmp_path / "valid.jsonl", choice_rows(24, 1))
    fc = FinetuneConfig(task="choice", epochs=3)
    r = finetune(bases[base], train, tmp_path / "c", fc, valid=valid,
                 overrides={**FAST, "log_every": 1}, progress=False)  # fmt: skip
    assert r.metrics["select_metric"] == "eval_accuracy"
    v = r.metrics["valid"]
    assert set(v) == {"accuracy", "loss", "n"} and v["n"] == 24
    losses = [json.loads(x)["loss"] for x in (r.out_dir / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x and "eval_loss" not in x]  # fmt: skip
    assert sum(losses[-3:]) < sum(losses[:3]), losses


def test_choice_loss_is_softmax_over_each_examples_own_options(bases):
    """The batched, padded loss equals a plain per-example log-softmax over its options."""
    from lmforge.config import ModelConfig
    from lmforge.data.choice import choice_collate, encode_choice
    from lmforge.models import Transformer
    from lmforge.objectives.tasks import TaskObjective

    tok = Tokenizer.load(bases["bert"])
    cfg = ModelConfig.from_dir(bases["bert"]).replace(heads=("choice",))
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    rows = choice_rows(6, 3)
    records = [{"prompt": f"{r['context']} {r['question']}", "choices": r["choices"],
                "label": r["choices"].index(r["label"]) if isinstance(r["label"], str)
                else r["label"]} for r in rows]  # fmt: skip
    features, _ = encode_choice(tok, records, 64)
    batch = choice_collate(features, tok.pad_id)
    assert len({len(r["choices"]) for r in records}) > 1  # padding of options is exercised
    with torch.no_grad():
        out = TaskObjective("choice")(model, batch)
        want = []
        for f in features:
            scores = torch.stack([
                model(input_ids=torch.tensor([o["input_ids"]]),
                      token_type_ids=torch.tensor([o["token_type_ids"]])).logits[0, 0]
                for o in f["options"]
            ])  # fmt: skip
            want.append(-torch.log_softmax(scores, 0)[f["labels"]])
    torch.testing.assert_close(out.loss, torch.stack(want).mean(), atol=1e-5, rtol=1e-5)


def test_reading_squad_json_and_bad_input(tmp_path):
    nested = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{
        "context": "Oslo is the capital of Norway.",
        "qas": [{"id": "a", "question": "What is the capital of Norway?",
                 "answers": [{"text": "Oslo", "answer_start": 0}]},
                {"id": "b", "question": "Who?", "answers": [], "is_impossible": True}]}]}]}  # fmt: skip
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(nested))
    records = read_task_file(path, "qa")
    assert [r["answers"]["text"] for r in records] == [["Oslo"], []]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"context": "Oslo is cold.", "question": "q",
                                                "answers": {"text": ["cold"], "answer_start": [3]}}])  # fmt: skip
    with pytest.raises(DataError, match="answer_start 3, but the context there reads"):
        read_qa_file(bad)
    missing = write_jsonl(tmp_path / "m.jsonl", [{"text": "x", "answers": []}])
    with pytest.raises(DataError, match="no text in 'context'"):
        read_qa_file(missing)
    wrong = write_jsonl(tmp_path / "c.jsonl", [{"question": "q", "choices": ["a", "b"],
                                                "label": "c"}])  # fmt: skip
    with pytest.raises(DataError, match="neither an option's index"):
        read_task_file(wrong, "choice")
    with pytest.raises(ConfigError, match="distillation is not available"):
        FinetuneConfig(task="qa", teacher="x")


def test_finetune_cli_qa(bases, tmp_path):
    from typer.testing import CliRunner

    from lmforge.cli import app

    train = write_jsonl(tmp_path / "train.jsonl", qa_rows(32, 0))
    result = CliRunner().invoke(app, ["finetune", str(bases["bert"]), "--task", "qa",
                                      "--train", str(train), "--out", str(tmp_path / "out"),
                                      "--epochs", "1", "--max-len", "32", "--doc-stride", "8",
                                      "batch_size=16", "device=cpu", "precision=fp32"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "valid: loss" in result.output and "exact_match" in result.output
    assert read_task_info(tmp_path / "out")["doc_stride"] == 8
