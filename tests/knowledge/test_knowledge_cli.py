"""`lmforge knowledge verbalize`, `lmforge index build/search`, and `--retrieve` / `--kg` on
generate, chat and serve (sources cited), on tiny random models."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

from kn_helpers import FACTS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import run_cli  # noqa: E402

from lmforge.generate import GenerationConfig  # noqa: E402
from lmforge.models import load_model  # noqa: E402
from lmforge.recipes.chat import ChatSession  # noqa: E402
from lmforge.recipes.knowledge import load_kg, load_retriever  # noqa: E402
from lmforge.serve import BackgroundServer, build_app  # noqa: E402
from lmforge.tokenizer import Tokenizer  # noqa: E402

TRIPLES = "head\trelation\ttail\nFrance\tcapital\tParis\nJapan\tcapital\tTokyo\n"


def _index(tmp_path, monkeypatch, capsys, bert_dir) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "facts.jsonl").write_text("".join(json.dumps({"text": f}) + "\n" for f in FACTS))
    code, out, err = run_cli(monkeypatch, capsys, "index", "build", "--model", bert_dir,
                             "--data", docs, "--out", tmp_path / "idx", "--chunk-words", "50")  # fmt: skip
    assert code == 0, err
    assert out.strip() == f"indexed 3 chunks (64 dims) in {tmp_path / 'idx'}"
    return tmp_path / "idx"


def test_verbalize_then_index_then_search(tmp_path, monkeypatch, capsys, bert_dir):
    (tmp_path / "t.tsv").write_text(TRIPLES)
    (tmp_path / "tm.json").write_text(json.dumps({"capital": "The capital of {head} is {tail}."}))
    code, out, _ = run_cli(monkeypatch, capsys, "knowledge", "verbalize", tmp_path / "t.tsv",
                           "--templates", tmp_path / "tm.json", "--out", tmp_path / "v.jsonl")  # fmt: skip
    assert code == 0 and "wrote 2 documents" in out
    rows = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert rows == [{"text": "The capital of France is Paris."},
                    {"text": "The capital of Japan is Tokyo."}]  # fmt: skip

    idx = _index(tmp_path, monkeypatch, capsys, bert_dir)
    code, out, _ = run_cli(monkeypatch, capsys, "index", "search", idx, FACTS[1], "--top-k", "2",
                           "--json")  # fmt: skip
    result = json.loads(out)
    assert code == 0 and len(result["hits"]) == 2
    assert result["hits"][0]["text"] == FACTS[1]  # a text is nearest to itself
    assert result["hits"][0]["score"] >= result["hits"][1]["score"]


def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys, bert_dir, gpt_dir):
    code, _, err = run_cli(monkeypatch, capsys, "index", "search", tmp_path, "q")
    assert code == 2 and "is not an index dir" in err and "Traceback" not in err
    code, _, err = run_cli(monkeypatch, capsys, "index", "build", "--model", bert_dir, "--data",
                           tmp_path / "none", "--out", tmp_path / "i")  # fmt: skip
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(monkeypatch, capsys, "generate", gpt_dir, "--retrieve", tmp_path,
                           "--kg", tmp_path / "t.tsv")  # fmt: skip
    assert code == 2 and "not both" in err


def test_generate_with_retrieval_and_kg_cites_sources(tmp_path, monkeypatch, capsys, bert_dir,
                                                      gpt_dir):  # fmt: skip
    idx = _index(tmp_path, monkeypatch, capsys, bert_dir)
    args = ("generate", gpt_dir, "--prompt", "Capital of Japan?", "--max-new-tokens", "3",
            "--temperature", "0")  # fmt: skip
    code, out, err = run_cli(monkeypatch, capsys, *args, "--retrieve", idx, "--retrieve-k", "2")
    assert code == 0, err
    assert out.startswith("Capital of Japan?")
    last = out.strip().splitlines()[-1]
    assert last.startswith("Sources: [1] ") and "; [2] " in last and "facts.jsonl:" in last

    (tmp_path / "t.tsv").write_text(TRIPLES)
    code, out, err = run_cli(monkeypatch, capsys, *args, "--kg", tmp_path / "t.tsv")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "Sources: [1] kg:Japan (1.00)"


def test_chat_and_serve_apply_the_transform(tmp_path, gpt_dir):
    (tmp_path / "t.tsv").write_text(TRIPLES)
    transform = load_kg(tmp_path / "t.tsv")
    model, tok = load_model(gpt_dir), Tokenizer.load(gpt_dir)
    gen = GenerationConfig(max_new_tokens=2, temperature=0.0)
    session = ChatSession(model, tok, gen, transform=transform)
    "".join(session.reply("Where is France?"))
    assert session.turns[0]["content"].startswith("Context:\n[1] France capital Paris.")
    assert [s.origin for s in session.sources] == ["kg:France"]

    app = build_app(gpt_dir, device="cpu", transform=transform)
    with BackgroundServer(app) as server:
        body = {"model": gpt_dir.name, "prompt": "Tell me about Japan.", "max_tokens": 2}
        request = urllib.request.Request(f"{server.url}/v1/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})  # fmt: skip
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
    assert answer["sources"] == [{"index": 1, "origin": "kg:Japan", "score": 1.0,
                                  "text": "Japan capital Tokyo."}]  # fmt: skip
    assert answer["usage"]["prompt_tokens"] > len(tok.encode("Tell me about Japan.")) + 5


def test_retriever_refuses_an_index_whose_model_is_gone(tmp_path, monkeypatch, capsys, bert_dir):
    idx = _index(tmp_path, monkeypatch, capsys, bert_dir)
    info = json.loads((idx / "index.json").read_text())
    (idx / "index.json").write_text(json.dumps({**info, "model": str(tmp_path / "gone")}))
    import pytest

    from lmforge.errors import DataError

    with pytest.raises(DataError, match="is not there any more"):
        load_retriever(idx)


def test_prompt_classification_with_kg_facts(tmp_path, monkeypatch, capsys, gpt_dir):
    (tmp_path / "t.tsv").write_text(TRIPLES)
    (tmp_path / "tm.json").write_text(json.dumps({"capital": "The capital of {head} is {tail}."}))
    data = tmp_path / "q.jsonl"
    data.write_text('{"text": "Is Paris the capital of France?", "label": "yes"}\n'
                    '{"text": "Is Lima the capital of Japan?", "label": "no"}\n')  # fmt: skip
    args = ["prompt", gpt_dir, "--template", "{text} =>", "--verbalizer", "yes=capital",
            "--verbalizer", "no=city", "--data", data, "--out", tmp_path / "o"]  # fmt: skip
    code, out, err = run_cli(monkeypatch, capsys, *args, "--kg", tmp_path / "t.tsv",
                             "--kg-templates", tmp_path / "tm.json")  # fmt: skip
    assert code == 0, err
    rows = [json.loads(r) for r in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["text"] == ("Context:\n[1] The capital of France is Paris.\n\n"
                               "Is Paris the capital of France?")  # fmt: skip
    assert rows[1]["text"].startswith("Context:\n[1] The capital of Japan is Tokyo.\n\n")
    code, _, err = run_cli(monkeypatch, capsys, *args, "--kg-templates", tmp_path / "tm.json")
    assert code == 2 and "goes with --kg" in err
