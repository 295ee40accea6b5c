"""Zero- and few-shot text classification by prompting, without training.

For each example x the prompt is K demonstrations (each a filled template: its text in `{text}`,
the first word of its label in the slot) joined by `separator`, then the template around x:

    "Review: loved it. It was great.\\n\\nReview: dull. It was terrible.\\n\\nReview: {x} It was [MASK]."

The label words are scored at the slot (`lmforge.prompting.scoring`: cloze for masked LMs,
continuation likelihood for causal LMs), p(y | x) = softmax_y S(y), optionally calibrated
against content-free inputs put in the same prompt, and the prediction is argmax_y.

A prompt longer than the model allows loses demonstrations (the first ones) and then the end of
x's text until it fits; `PromptResult.truncated` counts the examples this happened to.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError, DataError
from lmforge.evaluate.metrics import accuracy, macro_f1
from lmforge.models import Transformer, load_model
from lmforge.prompting.examples import Example, draw_demonstrations, has_labels, read_examples
from lmforge.prompting.scoring import LabelScorer, Mode, Prompt, calibrate, content_free_probs
from lmforge.prompting.template import Template, Verbalizer
from lmforge.tokenizer import Tokenizer
from lmforge.utils.device import resolve_device
from lmforge.utils.fs import atomic_write_text

#: Zhao et al.'s content-free inputs.
CONTENT_FREE: tuple[str, ...] = ("N/A", "", "[MASK]")
PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"


@dataclass
class Prediction:
    """One classified example.

    Attributes:
        index: row of the example in the data.
        text: its text.
        label: its gold label (None without labels).
        prediction: argmax_y of `probs`.
        probs: label -> probability (calibrated when calibration is on).
        demonstrations: rows of the pool shown as demonstrations, in prompt order.
    """

    index: int
    text: str
    label: str | None
    prediction: str
    probs: dict[str, float]
    demonstrations: list[int] = field(default_factory=list)


@dataclass
class PromptResult:
    """Predictions and, when the data has labels, accuracy and macro-F1."""

    predictions: list[Prediction]
    labels: list[str]
    mode: Mode
    shots: int
    calibrated: bool
    accuracy: float | None = None
    macro_f1: float | None = None
    truncated: int = 0
    out_dir: Path | None = None

    def metrics(self) -> dict:
        return {
            "n": len(self.predictions),
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "mode": self.mode,
            "shots": self.shots,
            "calibrated": self.calibrated,
            "labels": self.labels,
            "truncated": self.truncated,
        }


def _check_labels(examples: Sequence[Example], verbalizer: Verbalizer, what: str) -> None:
    unknown = sorted({e.label for e in examples if e.label is not None} - set(verbalizer.words))
    if unknown:
        raise DataError(
            f"label '{unknown[0]}' in the {what} is not in the verbalizer (labels: "
            f"{', '.join(verbalizer.labels)}); add {unknown[0]}=word to the verbalizer."
        )


def _cut(tokenizer: Tokenizer, text: str, n_tokens: int) -> str:
    """The longest prefix of `text` with at most `n_tokens` tokens (cut at a token's end)."""
    if n_tokens <= 0:
        return ""
    offsets = tokenizer.backend.encode(text, add_special_tokens=False).offsets
    return text if len(offsets) <= n_tokens else text[: offsets[n_tokens - 1][1]]


class _Builder:
    """Turns (query text, demonstrations) into prompts that fit the model."""

    def __init__(self, scorer: LabelScorer, template: Template, verbalizer: Verbalizer, sep: str):
        self.scorer, self.template, self.verbalizer, self.sep = scorer, template, verbalizer, sep

    def prompt(self, text: str, demos: Sequence[Example]) -> Prompt:
        shown = [self.template.fill(d.text, self.verbalizer.words[d.label][0]) for d in demos]  # type: ignore[index]
        before, after = self.template.render(text)
        return "".join(s + self.sep for s in shown) + before, after

    def fit(self, text: str, demos: list[Example]) -> tuple[str, list[Example], bool]:
        """Drop leading demonstrations, then cut `text`, until the prompt fits."""
        limit, cut = self.scorer.limit, False
        while demos and self.scorer.length(self.prompt(text, demos)) > limit:
            demos, cut = demos[1:], True
        for _ in range(8):
            over = self.scorer.length(self.prompt(text, demos)) - limit
            if over <= 0:
                return text, demos, cut
            n = len(self.scorer.tokenizer.encode(text))
            if n == 0:
                break
            text, cut = _cut(self.scorer.tokenizer, text, n - over), True
        raise ConfigError(
            f"the template alone needs more than the model's limit of {limit} tokens; shorten it."
        )


def classify(
    model: Transformer,
    tokenizer: Tokenizer,
    examples: Sequence[Example],
    template: str | Template,
    verbalizer: Verbalizer | Sequence[str],
    *,
    shots: int = 0,
    pool: Sequence[Example] | None = None,
    seed: int = 0,
    calibrated: bool = False,
    content_free: Sequence[str] = CONTENT_FREE,
    separator: str = "\n\n",
    batch_size: int = 8,
    progress: bool = False,
) -> PromptResult:
    """Classify `examples` by prompting `model` (see the module docstring).

    Args:
        model, tokenizer: a masked LM (cloze scoring) or a causal LM (likelihood scoring).
        examples: texts, with labels for scoring accuracy.
        template: text with `{text}` and the slot (the mask token or `[MASK]`).
        verbalizer: a `Verbalizer` or entries like `"positive=great,good"`.
        shots: demonstrations per prompt (K).
        pool: labelled examples to draw demonstrations from (default: `examples`, never the
            query itself).
        seed: seeds the demonstration draws.
        calibrated: apply contextual calibration with `content_free` inputs.
        separator: text between demonstrations and the query.
        batch_size: prompts per forward pass.
        progress: show a progress bar (with ETA) over the forward passes.
    """
    if shots < 0:
        raise ConfigError(f"shots must be at least 0, got {shots}.")
    if not examples:
        raise DataError("there are no examples to classify; pass at least one.")
    if calibrated and not content_free:
        raise ConfigError("calibration needs at least one content-free input such as 'N/A'.")
    verbalizer = verbalizer if isinstance(verbalizer, Verbalizer) else Verbalizer.parse(verbalizer)
    scorer = LabelScorer(model, tokenizer, verbalizer, batch_size, progress)
    if not isinstance(template, Template):
        template = Template.parse(template, tokenizer.roles.get("mask"), scorer.mode == "cloze")
    pool_is_data = pool is None
    pool = examples if pool is None else pool
    _check_labels(examples, verbalizer, "data")
    _check_labels(pool, verbalizer, "demonstration pool")
    if shots and not any(e.label is not None for e in pool):
        raise DataError("demonstrations need labelled examples; pass a labelled --pool file.")

    builder = _Builder(scorer, template, verbalizer, separator)
    prompts: list[Prompt] = []
    drawn: list[list[int]] = []
    truncated = 0
    cf_texts = list(content_free) if calibrated else []
    for i, ex in enumerate(examples):
        rows = draw_demonstrations(pool, shots, seed, i, ex.text, pool_is_data)
        text, demos, cut = builder.fit(ex.text, [pool[j] for j in rows])
        rows = rows[len(rows) - len(demos) :]
        truncated += cut
        drawn.append(rows)
        prompts.append(builder.prompt(text, demos))
        prompts += [builder.prompt(cf, demos) for cf in cf_texts]

    probs = scorer.probs(prompts).view(len(examples), 1 + len(cf_texts), -1)  # (N, 1 + C, L)
    p = probs[:, 0]
    if calibrated:
        p = calibrate(p, content_free_probs(probs[:, 1:]))
    labels = verbalizer.labels
    best = p.argmax(-1).tolist()
    predictions = [
        Prediction(
            index=i,
            text=ex.text,
            label=ex.label,
            prediction=labels[best[i]],
            probs={y: float(v) for y, v in zip(labels, p[i].tolist(), strict=True)},
            demonstrations=drawn[i],
        )
        for i, ex in enumerate(examples)
    ]
    result = PromptResult(predictions, labels, scorer.mode, shots, calibrated, truncated=truncated)
    if has_labels(examples):
        gold = [e.label for e in examples]
        guess = [q.prediction for q in predictions]
        result.accuracy = accuracy(gold, guess)
        result.macro_f1 = macro_f1(gold, guess, labels=labels)
    return result


def prompt_classify(
    model_dir: str | Path,
    data: str | Path,
    template: str,
    verbalizer: Sequence[str],
    *,
    shots: int = 0,
    pool: str | Path | None = None,
    seed: int = 0,
    calibrated: bool = False,
    out: str | Path | None = None,
    text_field: str = "text",
    label_field: str = "label",
    separator: str = "\n\n",
    batch_size: int = 8,
    device: str = "cpu",
    transform: Callable[[str], Any] | None = None,
    progress: bool = True,
) -> PromptResult:
    """`classify` on a model dir and a data file; writes `predictions.jsonl` and `metrics.json`
    into `out` when given.

    Args:
        model_dir: an lmforge model dir with its tokenizer.
        data: a .jsonl/.csv/.tsv file with a text field and, for accuracy, a label field.
        pool: a labelled file to draw demonstrations from (default: `data`).
        out: a directory for the outputs (None = write nothing).
        transform: a prompt transform (`lmforge.knowledge`: KG facts, retrieved passages)
            applied to each text before it goes into the template.
        Other arguments: see `classify`.
    """
    examples = read_examples(data, text_field, label_field)
    if transform is not None:
        examples = [replace(e, text=transform(e.text).prompt) for e in examples]
    pool_examples = read_examples(pool, text_field, label_field) if pool is not None else None
    if pool_examples is not None and not has_labels(pool_examples):
        raise DataError(f"the pool file {pool} has no '{label_field}' labels; label every row.")
    torch_device = resolve_device(device)
    model = load_model(model_dir, device=torch_device)
    tokenizer = Tokenizer.load(model_dir)
    result = classify(
        model,
        tokenizer,
        examples,
        template,
        verbalizer,
        shots=shots,
        pool=pool_examples,
        seed=seed,
        calibrated=calibrated,
        separator=separator,
        batch_size=batch_size,
        progress=progress,
    )
    if out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        lines = (json.dumps(asdict(p), ensure_ascii=False) for p in result.predictions)
        atomic_write_text(out_dir / PREDICTIONS, "\n".join(lines) + "\n")
        metrics = {**result.metrics(), "template": template, "verbalizer": list(verbalizer),
                   "seed": seed, "data": str(data), "pool": str(pool) if pool else None}  # fmt: skip
        atomic_write_text(out_dir / METRICS, json.dumps(metrics, indent=2) + "\n")
        result.out_dir = out_dir
    return result
