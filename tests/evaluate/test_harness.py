"""The task harness: lm-eval YAML tasks over local JSONL; its log-likelihoods for random-weight
Hugging Face GPT-2 and Llama models (converted with `import_hf`) equal a direct computation
with transformers; few-shot contexts, rolling perplexity, generation and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.errors import ConfigError  # noqa: E402
from lmforge.evaluate.harness import (  # noqa: E402
    LM,
    available_tasks,
    context_of,
    evaluate_model,
    load_task,
    run_task,
)
from lmforge.interop import import_hf  # noqa: E402
from lmforge.models import load_model  # noqa: E402
from lmforge.tokenizer import train_tokenizer  # noqa: E402

transformers.logging.set_verbosity_error()
TEXTS = [
    "the cat sat on the mat and the dog sat on the rug",
    "paris is the capital of france and rome is the capital of italy",
    "one two three four five six seven eight nine ten",
] * 20


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300, kind="bpe")


def hf_model(family: str, vocab: int):
    torch.manual_seed(0)
    if family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2,
                                      n_head=4)  # fmt: skip
        return transformers.GPT2LMHeadModel(cfg).eval()
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def write_task(root, name, body: dict, rows: list[dict]):
    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = root / f"{name}.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"task": name, "dataset_path": data.name, **body}))
    return path


ROWS = [
    {"q": "the cat sat on the", "a": "mat", "choices": ["mat", "rug", "capital"], "label": 0},
    {"q": "paris is the capital of", "a": "france", "choices": ["italy", "france"], "label": 1},
    {"q": "one two three", "a": "four five", "choices": ["four", "ten", "dog sat"], "label": 0},
]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_loglikelihoods_equal_transformers(tok, tmp_path, family):
    ref = hf_model(family, tok.vocab_size)
    ref.save_pretrained(tmp_path / "hf")
    model = load_model(import_hf(tmp_path / "hf", tmp_path / "ours"))
    lm = LM(model, tok, batch_size=2)  # batches of mixed lengths: padding is exercised
    spec = load_task(write_task(tmp_path, "mc", {"output_type": "multiple_choice",
                                                 "doc_to_text": "{{q}}", "doc_to_choice": "choices",
                                                 "doc_to_target": "label"}, ROWS))  # fmt: skip
    requests = [lm.pair(context_of(spec, r, []), " " + c) for r in ROWS for c in r["choices"]]
    requests.append(([tok.eos_id] + tok.encode("one two " * 12), tok.encode(" three four")))
    ours = lm.score(requests)
    for (ctx, cont), (ll, greedy) in zip(requests, ours, strict=True):
        full = torch.tensor([(ctx + cont)[-33:]])
        with torch.no_grad():
            logp = torch.log_softmax(ref(input_ids=full[:, :-1]).logits.float(), -1)[0]
        target = full[0, -len(cont) :]
        rows = logp[-len(cont) :]
        want = float(rows.gather(-1, target[:, None]).sum())
        assert ll == pytest.approx(want, abs=1e-4)
        assert greedy == bool((rows.argmax(-1) == target).all())
    # the task's accuracy is argmax over those numbers
    result = run_task(lm, spec)
    lls = [ll for ll, _ in ours[:-1]]
    picks, at = [], 0
    for r in ROWS:
        k = len(r["choices"])
        picks.append(max(range(k), key=lambda i, at=at: lls[at + i]) == r["label"])
        at += k
    assert result["acc"] == pytest.approx(sum(picks) / 3) and result["n"] == 3


def test_rolling_perplexity_equals_one_pass_when_the_text_fits(tok, tmp_path):
    ref = hf_model("gpt2", tok.vocab_size)
    ref.save_pretrained(tmp_path / "hf")
    model = load_model(import_hf(tmp_path / "hf", tmp_path / "ours"))
    text = "the cat sat on the mat"
    ids = [tok.bos_id] + tok.encode(text)  # BOS starts a document when the tokenizer has one
    with torch.no_grad():
        logp = torch.log_softmax(ref(input_ids=torch.tensor([ids[:-1]])).logits, -1)[0]
    want = float(logp.gather(-1, torch.tensor(ids[1:])[:, None]).sum())
    assert LM(model, tok).rolling(text) == pytest.approx(want, abs=1e-4)
    # a text longer than the 32-token window is scored token by token exactly once
    long_text = " ".join(TEXTS[:4])
    n = len(tok.encode(long_text))
    assert n > 32
    windows = []
    lm = LM(model, tok)
    lm.score = lambda reqs: windows.extend(reqs) or [(0.0, True)] * len(reqs)  # type: ignore
    lm.rolling(long_text)
    assert sum(len(c) for _, c in windows) == n and all(len(a + c) <= 33 for a, c in windows)
    spec = load_task(write_task(tmp_path, "ppl", {"output_type": "loglikelihood_rolling",
                                                  "doc_to_target": "q"}, ROWS))  # fmt: skip
    result = run_task(LM(model, tok), spec)
    assert result["bits_per_byte"] == pytest.approx(
        math.log(result["byte_perplexity"]) / math.log(2)
    )


def test_fewshot_context_generation_and_the_cli(tok, tmp_path):
    from typer.testing import CliRunner

    from lmforge.cli import app

    ref = hf_model("gpt2", tok.vocab_size)
    ref.save_pretrained(tmp_path / "hf")
    model_dir = import_hf(tmp_path / "hf", tmp_path / "ours")
    tok.save(model_dir)
    gen = write_task(tmp_path, "gen", {"output_type": "generate_until", "doc_to_text": "{{q}}",
                                       "doc_to_target": "a", "num_fewshot": 2,
                                       "fewshot_delimiter": "\n", "generation_kwargs":
                                       {"until": ["\n"], "max_gen_toks": 4},
                                       "metric_list": [{"metric": "exact_match"},
                                                       {"metric": "chrf"}]}, ROWS)  # fmt: skip
    spec = load_task(gen)
    shots = [ROWS[1], ROWS[2]]
    assert context_of(spec, ROWS[0], shots) == (
        "paris is the capital of france\none two three four five\nthe cat sat on the"
    )
    report = evaluate_model(model_dir, [str(gen)], tmp_path / "out")
    res = report["results"]["gen"]
    assert {"exact_match", "exact_match_stderr", "chrf", "samples"} <= set(res)
    assert (tmp_path / "out" / "results.md").read_text().startswith("| task | metric |")
    result = CliRunner().invoke(app, ["eval", str(model_dir), "--tasks", f"{gen}",
                                      "--out", str(tmp_path / "cli"), "--limit", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cli" / "results.json").read_text())["results"]["gen"]["n"] == 2


def test_shipped_tasks_load_and_bad_input(tmp_path):
    names = available_tasks()
    assert {"vader_sentiment", "word_analogy_choice", "embedded_corpus_ppl"} <= set(names)
    for name in names:
        spec = load_task(name)
        from lmforge.evaluate.harness import load_split

        docs = load_split(spec, spec.test_split)
        assert docs, name
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        load_task("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: x\ndataset_path: x.jsonl\noutput_type: multiple_choice\n")
    with pytest.raises(ConfigError, match="no doc_to_choice"):
        load_task(bad)
    bad.write_text("task: x\ndataset_path: x.jsonl\noutput_type: loglikelihood\n"
                   "metric_list: [{metric: bleu}]\n")  # fmt: skip
    with pytest.raises(ConfigError, match="metric 'bleu'"):
        load_task(bad)
