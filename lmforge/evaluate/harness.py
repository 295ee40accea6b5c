"""A task evaluation harness reading lm-evaluation-harness's task YAML, over local data.

A task file (the subset of lm-eval's format this harness reads):

    task: vader_sentiment
    dataset_path: ../../../data/real/vader_movies   # a .jsonl file, or a dir of <split>.jsonl;
                                                    # or `json` with dataset_kwargs.data_files;
                                                    # or lmforge:embedded_corpus
    test_split: test            # also validation_split, training_split, fewshot_split
    output_type: multiple_choice  # loglikelihood | multiple_choice | loglikelihood_rolling
                                  # | generate_until
    doc_to_text: "Review: {{text}}\\nSentiment:"   # Jinja template, or a field name
    doc_to_target: "{{label}}"  # template/field: a choice's text or index, or the target text
    doc_to_choice: ["negative", "positive"]       # a list, a field, or a template
    target_delimiter: " "       # between context and continuation (lm-eval's default)
    fewshot_delimiter: "\\n\\n" # between shots
    num_fewshot: 0
    description: ""             # put before the shots
    generation_kwargs: {until: ["\\n"], max_gen_toks: 32}
    metric_list: [{metric: acc}, {metric: acc_norm}]

Requests go through the model's one forward in padded batches (`loglikelihoods`, longest first):

    loglikelihood(ctx, cont) = sum_{t in cont} log P(x_t | x_<t)     with whole = enc(ctx + cont),
        cont tokens = whole[len(enc(ctx)):] (as lm-eval splits them); before the context what
        the tokenizer itself puts before a text (BOS for lmforge's BPE), and EOS when that
        leaves the context empty; the left end is cut to the model's max_seq_len.
    multiple_choice   acc      = 1[argmax_i ll_i = gold]
                      acc_norm = 1[argmax_i ll_i / len(choice_i in bytes) = gold]
    loglikelihood     acc = 1[the continuation is the greedy continuation], perplexity =
                      exp(-mean ll)
    loglikelihood_rolling   every token of a document scored once in windows of max_seq_len
                      (each window with as much preceding context as fits):
                      word_perplexity = exp(-sum ll / words), byte_perplexity =
                      exp(-sum ll / bytes), bits_per_byte = -sum ll / (bytes ln 2)
    generate_until    greedy decoding until a stop string; exact_match and f1 (SQuAD
                      normalisation), bleu, chrf, rouge1/2/L (`lmforge.evaluate.gen_metrics`)

Few-shot: `num_fewshot` documents drawn with random.Random(1234) from the few-shot split (the
training, else validation split, else the test split without the current document), each
rendered as text + target_delimiter + target and joined by fewshot_delimiter, before the
document's own text. Mean metrics also report `<metric>_stderr` = sample std / sqrt(n).
"""

from __future__ import annotations

import ast
import json
import math
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from lmforge.errors import ConfigError, DataError
from lmforge.evaluate import gen_metrics
from lmforge.utils.fs import atomic_write_text

OUTPUT_TYPES = ("loglikelihood", "multiple_choice", "loglikelihood_rolling", "generate_until")
DEFAULT_METRICS = {
    "loglikelihood": ["acc", "perplexity"],
    "multiple_choice": ["acc", "acc_norm"],
    "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
    "generate_until": ["exact_match"],
}
GEN_METRICS = ("exact_match", "f1", "bleu", "chrf", "rouge1", "rouge2", "rougeL")
KNOWN_METRICS = {
    "loglikelihood": {"acc", "perplexity"},
    "multiple_choice": {"acc", "acc_norm"},
    "loglikelihood_rolling": {"word_perplexity", "byte_perplexity", "bits_per_byte"},
    "generate_until": set(GEN_METRICS),
}
FEWSHOT_SEED = 1234


# --------------------------------------------------------------------------- task definitions
@dataclass
class TaskSpec:
    """One task YAML, read and checked (see the module docstring)."""

    name: str
    path: Path
    output_type: str
    dataset_path: str
    data_files: dict[str, str] = field(default_factory=dict)
    test_split: str = "test"
    validation_split: str | None = None
    training_split: str | None = None
    fewshot_split: str | None = None
    doc_to_text: Any = "text"
    doc_to_target: Any = "target"
    doc_to_choice: Any = None
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    num_fewshot: int = 0
    description: str = ""
    until: list[str] = field(default_factory=lambda: ["\n\n"])
    max_gen_toks: int = 32
    metrics: list[str] = field(default_factory=list)


def tasks_dir() -> Path:
    """The task YAMLs that ship with lmforge."""
    return Path(str(resources.files("lmforge.evaluate") / "tasks"))


def available_tasks() -> list[str]:
    """Names of the shipped tasks."""
    return sorted(p.stem for p in tasks_dir().glob("*.yaml"))


def load_task(name_or_path: str | Path) -> TaskSpec:
    """A shipped task by name, or a task YAML file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = tasks_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown task '{name_or_path}'; pass a task YAML file or one of "
            f"{', '.join(available_tasks())}."
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML ({e}).") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a YAML mapping of task settings.")
    output_type = raw.get("output_type", "generate_until")
    if output_type not in OUTPUT_TYPES:
        raise ConfigError(
            f"{path} has output_type '{output_type}'; choose one of {', '.join(OUTPUT_TYPES)}."
        )
    if "dataset_path" not in raw:
        raise ConfigError(f"{path} has no dataset_path; point it at a local .jsonl file or dir.")
    if output_type == "multiple_choice" and raw.get("doc_to_choice") is None:
        raise ConfigError(f"{path} is multiple_choice but has no doc_to_choice; add one.")
    metrics = [m["metric"] if isinstance(m, dict) else m for m in raw.get("metric_list") or []]
    metrics = metrics or DEFAULT_METRICS[output_type]
    unknown = [m for m in metrics if m not in KNOWN_METRICS[output_type]]
    if unknown:
        raise ConfigError(
            f"{path} asks for metric '{unknown[0]}', which {output_type} tasks do not have; "
            f"choose from {', '.join(sorted(KNOWN_METRICS[output_type]))}."
        )
    gen = raw.get("generation_kwargs") or {}
    until = gen.get("until", ["\n\n"])
    kwargs = raw.get("dataset_kwargs") or {}
    return TaskSpec(
        name=str(raw.get("task", path.stem)),
        path=path,
        output_type=output_type,
        dataset_path=str(raw["dataset_path"]),
        data_files=dict(kwargs.get("data_files") or {}),
        test_split=raw.get("test_split") or "test",
        validation_split=raw.get("validation_split"),
        training_split=raw.get("training_split"),
        fewshot_split=raw.get("fewshot_split"),
        doc_to_text=raw.get("doc_to_text", "text"),
        doc_to_target=raw.get("doc_to_target", "target"),
        doc_to_choice=raw.get("doc_to_choice"),
        target_delimiter=raw.get("target_delimiter", " "),
        fewshot_delimiter=raw.get("fewshot_delimiter", "\n\n"),
        num_fewshot=int(raw.get("num_fewshot") or 0),
        description=raw.get("description") or "",
        until=[until] if isinstance(until, str) else list(until),
        max_gen_toks=int(gen.get("max_gen_toks", 32)),
        metrics=metrics,
    )


def _resolve(spec: TaskSpec, where: str) -> Path:
    """A data path as written in the YAML: absolute, or relative to the YAML file, the current
    directory or the lmforge checkout (where the shipped tasks' data/real/ lives)."""
    path = Path(where)
    checkout = Path(__file__).resolve().parents[2]
    for candidate in (path, spec.path.parent / path, Path.cwd() / path, checkout / path):
        if candidate.exists():
            return candidate
    raise DataError(
        f"task {spec.name}: the data {where} is not found (next to {spec.path} or in the "
        "current directory); build or copy it there, or fix dataset_path."
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    from lmforge.data.tasks import read_rows

    return read_rows(path, "evaluation")


def load_split(spec: TaskSpec, split: str) -> list[dict[str, Any]] | None:
    """The documents of one split, or None when the task has no such split."""
    if spec.dataset_path == "lmforge:embedded_corpus":
        from lmforge.data.sources import default_corpus, split_documents

        train, valid = split_documents(default_corpus(), 0.05, seed=0)  # as `pretrain` splits
        docs = {"train": train, "validation": valid, "test": valid}.get(split)
        return None if docs is None else [{"text": d} for d in docs]
    if spec.data_files:
        if split not in spec.data_files:
            return None
        return _read_jsonl(_resolve(spec, spec.data_files[split]))
    path = _resolve(spec, spec.dataset_path)
    if path.is_file():
        return _read_jsonl(path) if split == spec.test_split else None
    file = path / f"{split}.jsonl"
    return _read_jsonl(file) if file.is_file() else None


# --------------------------------------------------------------------------- templates
_JINJA = None


def _env():
    global _JINJA
    if _JINJA is None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        _JINJA = ImmutableSandboxedEnvironment(keep_trailing_newline=True)
    return _JINJA


def apply(template: Any, doc: dict[str, Any]) -> Any:
    """lm-eval's rule: a field name gives doc[field]; a string with Jinja markup is rendered
    with the document's fields; a list is returned as is; anything else is a constant."""
    if isinstance(template, str):
        if template in doc:
            return doc[template]
        if "{{" in template or "{%" in template:
            return _env().from_string(template).render(**doc)
    return template


def choices_of(spec: TaskSpec, doc: dict[str, Any]) -> list[str]:
    value = apply(spec.doc_to_choice, doc)
    if isinstance(value, str):  # a template rendering a Python list literal
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            value = None
    if not isinstance(value, list) or not value:
        raise DataError(f"task {spec.name}: doc_to_choice did not give a list of choices.")
    return [str(c) for c in value]


def gold_index(spec: TaskSpec, doc: dict[str, Any], choices: list[str]) -> int:
    target = apply(spec.doc_to_target, doc)
    if isinstance(target, str) and target in choices:
        return choices.index(target)
    try:
        index = int(target)
    except (TypeError, ValueError):
        index = -1
    if not 0 <= index < len(choices):
        raise DataError(
            f"task {spec.name}: doc_to_target gave {target!r}, neither an index of nor one of the "
            f"choices {choices[:5]}; fix the template."
        )
    return index


def target_text(spec: TaskSpec, doc: dict[str, Any]) -> str:
    """The target as text (for few-shot examples and loglikelihood / generation)."""
    if spec.output_type == "multiple_choice":
        choices = choices_of(spec, doc)
        return choices[gold_index(spec, doc, choices)]
    target = apply(spec.doc_to_target, doc)
    return str(target[0] if isinstance(target, list) else target)


def context_of(spec: TaskSpec, doc: dict[str, Any], shots: list[dict[str, Any]]) -> str:
    parts = [
        str(apply(spec.doc_to_text, s)) + spec.target_delimiter + target_text(spec, s)
        for s in shots
    ]
    prefix = spec.description + "".join(p + spec.fewshot_delimiter for p in parts)
    return prefix + str(apply(spec.doc_to_text, doc))


# --------------------------------------------------------------------------- the model side
class LM:
    """A decoder with an LM head and its tokenizer, scoring requests in padded batches."""

    def __init__(self, model, tokenizer, batch_size: int = 16) -> None:
        if "lm" not in model.cfg.heads or model.cfg.arch != "decoder":
            raise ConfigError(
                f"lmforge eval scores decoder language models with an 'lm' head; this model is "
                f"{'an' if model.cfg.arch[0] == 'e' else 'a'} {model.cfg.arch} with heads "
                f"{list(model.cfg.heads)}; pass a pretrained or converted decoder."
            )
        self.model, self.tok, self.batch_size = model.eval(), tokenizer, batch_size
        self.max_len = model.cfg.max_seq_len
        # what the tokenizer itself puts before a text (lmforge's BPE: BOS; many imported ones
        # nothing); a text with no such start is scored after EOS, as lm-eval does
        probe, plain = tokenizer.encode("a", add_special_tokens=True), tokenizer.encode("a")
        lead = probe[: len(probe) - len(plain)] if probe[len(probe) - len(plain) :] == plain else []
        self.prefix = lead if tokenizer.bos_id is not None and tokenizer.bos_id in lead else []
        eos = tokenizer.eos_id if tokenizer.eos_id is not None else 0
        self.start = self.prefix or [eos]
        self.device = next(model.parameters()).device

    def pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) split as lm-eval splits them: trailing spaces of
        the context move to the continuation, and the continuation's ids are what the whole
        text has past the context's."""
        n_spaces = len(context) - len(context.rstrip(" "))
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.tok.encode(context + continuation)
        ctx = self.tok.encode(context)
        cont = whole[len(ctx) :]
        if whole[: len(ctx)] != ctx:  # a merge across the boundary: encode the parts alone
            cont = self.tok.encode(continuation)
        return (self.prefix + ctx) or self.start, cont

    @torch.no_grad()
    def score(self, requests: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum log P(continuation | context), continuation is the greedy one) per request;
        the inputs are cut on the left to max_seq_len."""
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -sum(map(len, requests[i])))
        pad = self.tok.pad_id if self.tok.pad_id is not None else 0
        for at in range(0, len(order), self.batch_size):
            chunk = order[at : at + self.batch_size]
            rows = []
            for i in chunk:
                ctx, cont = requests[i]
                if not cont:
                    raise DataError("a request has an empty continuation; check doc_to_target.")
                full = (ctx + cont)[-(self.max_len + 1) :]
                rows.append((full[:-1], min(len(cont), len(full) - 1)))
            width = max(len(r) for r, _ in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, (r, _) in enumerate(rows):
                ids[b, : len(r)] = torch.tensor(r)
                mask[b, : len(r)] = 1
            logits = self.model(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
            ).logits
            logp = F.log_softmax(logits.float(), dim=-1)
            for b, (i, (r, n)) in enumerate(zip(chunk, rows, strict=True)):
                cont = torch.tensor(requests[i][1][-n:], device=self.device)
                rows_logp = logp[b, len(r) - n : len(r)]  # (n, V) predicting the continuation
                ll = float(rows_logp.gather(-1, cont[:, None]).sum())
                greedy = bool((rows_logp.argmax(-1) == cont).all())
                out[i] = (ll, greedy)
        return out  # type: ignore[return-value]

    def rolling(self, text: str) -> float:
        """The log-likelihood of every token of `text` (module docstring: windows of
        max_seq_len, each with as much preceding context as fits)."""
        body = self.tok.encode(text)
        if not body:
            return 0.0
        tokens = self.start + body  # the first token is predicted from BOS (else EOS)
        requests = []
        for first in range(1, len(tokens), self.max_len):
            last = min(first + self.max_len, len(tokens))  # predict tokens[first:last]
            lo = max(0, last - 1 - self.max_len)
            requests.append((tokens[lo:first], tokens[first:last]))
        return sum(ll for ll, _ in self.score(requests))

    @torch.no_grad()
    def generate(self, contexts: list[str], until: list[str], max_gen_toks: int) -> list[str]:
        from lmforge.generate import GenerationConfig, generate_outputs

        gen = GenerationConfig(max_new_tokens=max_gen_toks, temperature=0.0, stop=list(until))
        out = []
        for at in range(0, len(contexts), self.batch_size):
            prompts = []
            for c in contexts[at : at + self.batch_size]:
                ids = (self.prefix + self.tok.encode(c)) or self.start
                prompts.append(ids[-max(1, self.max_len - max_gen_toks) :])
            # the text is decoded and cut before the first `until` string by generate itself
            out += [o.text or "" for o in generate_outputs(self.model, prompts, gen, self.tok)]
        return out


# --------------------------------------------------------------------------- running a task
def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _shots(spec: TaskSpec, k: int, docs: list, index: int, pool: list | None) -> list:
    if k <= 0:
        return []
    rng = random.Random(FEWSHOT_SEED + index)
    if pool is not None:
        return rng.sample(pool, min(k, len(pool)))
    others = [d for j, d in enumerate(docs) if j != index]
    return rng.sample(others, min(k, len(others)))


def run_task(
    lm: LM, spec: TaskSpec, *, num_fewshot: int | None = None, limit: int | None = None
) -> dict[str, Any]:
    """Score one task; returns {metric: value, metric_stderr: ..., "n": docs, "num_fewshot"}."""
    docs = load_split(spec, spec.test_split)
    if not docs:
        raise DataError(f"task {spec.name}: the {spec.test_split} split has no documents.")
    docs = docs[:limit] if limit else docs
    k = spec.num_fewshot if num_fewshot is None else num_fewshot
    pool = None
    if k:
        for split in (spec.fewshot_split, spec.training_split, spec.validation_split):
            if split and split != spec.test_split:
                pool = load_split(spec, split)
                if pool:
                    break
    per_doc: dict[str, list[float]] = {m: [] for m in spec.metrics}
    result: dict[str, Any] = {}
    if spec.output_type == "loglikelihood_rolling":
        total_ll = words = nbytes = 0.0
        for doc in docs:
            text = str(apply(spec.doc_to_target, doc))
            total_ll += lm.rolling(text)
            words += len(text.split())
            nbytes += len(text.encode("utf-8"))
        values = {
            "word_perplexity": math.exp(-total_ll / max(words, 1)),
            "byte_perplexity": math.exp(-total_ll / max(nbytes, 1)),
            "bits_per_byte": -total_ll / max(nbytes, 1) / math.log(2),
        }
        result.update({m: values[m] for m in spec.metrics})
    elif spec.output_type == "generate_until":
        contexts = [context_of(spec, d, _shots(spec, k, docs, i, pool)) for i, d in enumerate(docs)]
        preds = [p.strip() for p in lm.generate(contexts, spec.until, spec.max_gen_toks)]
        refs = [target_text(spec, d) for d in docs]
        for m in spec.metrics:
            if m in ("exact_match", "f1"):
                one = (
                    gen_metrics.exact_match_one if m == "exact_match" else gen_metrics.token_f1_one
                )
                per_doc[m] = [100.0 * one(p, r) for p, r in zip(preds, refs, strict=True)]
            else:
                scores = gen_metrics.rouge(preds, refs) if m.startswith("rouge") else None
                result[m] = scores[m] if scores else getattr(gen_metrics, m)(preds, refs)
        result["samples"] = [{"target": r, "prediction": p} for r, p in zip(refs[:3], preds[:3], strict=True)]  # fmt: skip
    else:
        requests, owners = [], []
        for i, doc in enumerate(docs):
            context = context_of(spec, doc, _shots(spec, k, docs, i, pool))
            if spec.output_type == "multiple_choice":
                choices = choices_of(spec, doc)
                conts = choices
            else:
                conts = [target_text(spec, doc)]
            for c in conts:
                requests.append(lm.pair(context, spec.target_delimiter + c))
                owners.append((i, c))
        scored = lm.score(requests)
        by_doc: dict[int, list[tuple[str, float, bool]]] = {}
        for (i, c), (ll, greedy) in zip(owners, scored, strict=True):
            by_doc.setdefault(i, []).append((c, ll, greedy))
        for i, doc in enumerate(docs):
            rows = by_doc[i]
            if spec.output_type == "multiple_choice":
                gold = gold_index(spec, doc, [c for c, _, _ in rows])
                lls = [ll for _, ll, _ in rows]
                norm = [ll / max(1, len(c.encode("utf-8"))) for c, ll, _ in rows]
                if "acc" in per_doc:
                    per_doc["acc"].append(float(max(range(len(lls)), key=lls.__getitem__) == gold))
                if "acc_norm" in per_doc:
                    per_doc["acc_norm"].append(
                        float(max(range(len(norm)), key=norm.__getitem__) == gold)
                    )
            else:
                _, ll, greedy = rows[0]
                if "acc" in per_doc:
                    per_doc["acc"].append(float(greedy))
                if "perplexity" in per_doc:
                    per_doc["perplexity"].append(ll)
        if "perplexity" in per_doc:
            lls = per_doc.pop("perplexity")
            result["perplexity"] = math.exp(-sum(lls) / len(lls))
    for m, values in per_doc.items():
        if values:
            result[m], result[f"{m}_stderr"] = _mean_and_stderr(values)
    return {**result, "n": len(docs), "num_fewshot": k, "output_type": spec.output_type}


def evaluate_model(
    model_dir: str | Path,
    tasks: list[str],
    out_dir: str | Path | None = None,
    *,
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run tasks on a model dir and write `results.json` and `results.md` into out_dir.

    Args:
        model_dir: an lmforge decoder model dir (pretrained, fine-tuned or converted).
        tasks: shipped task names (`available_tasks()`) or task YAML paths.
        num_fewshot: overrides every task's num_fewshot.
        limit: score only the first `limit` documents of each task.
    """
    from lmforge.recipes.finetuned import load_model_and_tokenizer

    specs = [load_task(t) for t in tasks]
    model, tok = load_model_and_tokenizer(model_dir)
    model.to(device)
    lm = LM(model, tok, batch_size)
    results = {s.name: run_task(lm, s, num_fewshot=num_fewshot, limit=limit) for s in specs}
    report = {
        "model": str(model_dir),
        "results": results,
        "config": {
            "num_fewshot": num_fewshot,
            "limit": limit,
            "batch_size": batch_size,
            "tasks": {s.name: str(s.path) for s in specs},
        },  # fmt: skip
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "results.json", json.dumps(report, indent=2) + "\n")
        atomic_write_text(out / "results.md", results_markdown([report]))
    return report


def results_markdown(reports: list[dict[str, Any]]) -> str:
    """One table: a row per (task, metric), a column per model (value ± stderr)."""
    names = [Path(r["model"]).name for r in reports]
    lines = ["| task | metric | n | shots | " + " | ".join(names) + " |",
             "|---|---|---:|---:|" + "---:|" * len(names)]  # fmt: skip
    tasks = list(dict.fromkeys(t for r in reports for t in r["results"]))
    for task in tasks:
        first = next(r["results"][task] for r in reports if task in r["results"])
        metrics = [
            k for k, v in first.items() if isinstance(v, float) and not k.endswith("_stderr")
        ]
        for m in metrics:
            cells = []
            for r in reports:
                res = r["results"].get(task, {})
                value = res.get(m)
                err = res.get(f"{m}_stderr")
                cells.append(
                    "" if value is None else f"{value:.4f}" + (f" ± {err:.4f}" if err else "")
                )
            lines.append(
                f"| {task} | {m} | {first['n']} | {first['num_fewshot']} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines) + "\n"
