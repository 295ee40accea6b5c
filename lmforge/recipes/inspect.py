"""`lmforge inspect attention|lens|patch|saliency`: load a model dir, encode the text the way the
model was trained to read it, and write the view (HTML + PNG + JSON) into an output folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lmforge.data.task_batches import encode_classify
from lmforge.errors import ConfigError
from lmforge.inspect import views
from lmforge.inspect.saliency import class_score, token_score
from lmforge.models import Transformer
from lmforge.tokenizer import Tokenizer


def load(model_dir: str | Path, device: str = "cpu") -> tuple[Transformer, Tokenizer, dict | None]:
    """The model (adapter applied), its tokenizer and its task.json (None for a plain model)."""
    from lmforge.recipes.finetuned import load_finetuned, read_task_info

    info = read_task_info(model_dir)
    return load_finetuned(model_dir, device), Tokenizer.load(model_dir), info


def encode_text(
    model: Transformer, tokenizer: Tokenizer, info: dict | None, text: str
) -> tuple[list[int], list[int] | None]:
    """(ids, token types or None): a fine-tuned classifier's own encoding ([CLS] text [SEP]
    within its max_len); a masked LM's with its special tokens; a causal LM's plain ids."""
    if not text.strip():
        raise ConfigError("the text is empty; pass the words to inspect with --text.")
    if info is not None and info.get("task") == "classify":
        labels = list(info["labels"])
        record = {"text": text, "text_pair": None, "label": labels[0]}
        feats, _ = encode_classify(tokenizer, [record], {labels[0]: 0}, int(info["max_len"]))
        return feats[0]["input_ids"], feats[0]["token_type_ids"]
    if model.cfg.arch == "encoder":
        ids = tokenizer.encode(text, add_special_tokens=True)
    else:
        ids = tokenizer.encode(text)
    limit = model.cfg.max_seq_len
    if model.cfg.pos in ("learned", "sinusoidal") and len(ids) > limit:
        raise ConfigError(
            f"the text is {len(ids)} tokens but the model reads at most {limit}; shorten it."
        )
    return ids, None


def _out(out: str | Path) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file; give a folder for the views.")
    path.mkdir(parents=True, exist_ok=True)
    return path


def inspect_attention(
    model_dir: str | Path,
    text: str,
    out: str | Path,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    rollout: bool = True,
    device: str = "cpu",
) -> list[Path]:
    """Attention head view, model view and rollout of one text."""
    model, tokenizer, info = load(model_dir, device)
    ids, types = encode_text(model, tokenizer, info, text)
    return views.attention_view(model, tokenizer, ids, _out(out), layers=layers, heads=heads,
                                rollout=rollout, token_type_ids=types)  # fmt: skip


def inspect_lens(
    model_dir: str | Path, text: str, out: str | Path, *, k: int = 5, device: str = "cpu"
) -> list[Path]:
    """Logit lens (and, for a pre-norm LM, direct logit attribution) of one text."""
    model, tokenizer, info = load(model_dir, device)
    ids, types = encode_text(model, tokenizer, info, text)
    names = list(info["labels"]) if info and info.get("task") == "classify" else None
    return views.lens_view(model, tokenizer, ids, _out(out), k=k, label_names=names,
                           token_type_ids=types)  # fmt: skip


def _one_token(tokenizer: Tokenizer, word: str) -> int:
    ids = tokenizer.encode(word)
    if len(ids) != 1 or ids[0] == tokenizer.unk_id:
        raise ConfigError(
            f"'{word}' is {len(ids)} tokens for this tokenizer (or unknown); name a target that "
            "is one token, e.g. with its leading space for a GPT tokenizer."
        )
    return ids[0]


def _target(info: dict | None, tokenizer: Tokenizer, name: str) -> int:
    """A class id (fine-tuned classifier: by label name) or a token id (LM)."""
    if info is not None and info.get("task") == "classify":
        labels = [str(x) for x in info["labels"]]
        if name not in labels:
            raise ConfigError(f"'{name}' is not one of this classifier's labels {labels}.")
        return labels.index(name)
    return _one_token(tokenizer, name)


def inspect_patch(
    model_dir: str | Path,
    text: str,
    corrupted: str,
    answer: str,
    out: str | Path,
    *,
    wrong: str | None = None,
    site: str = "resid_pre",
    device: str = "cpu",
) -> list[Path]:
    """Activation patching from `corrupted` back to `text`, scored by logit(answer) -
    logit(wrong) at the last position (answers are label names for a fine-tuned classifier)."""
    model, tokenizer, info = load(model_dir, device)
    clean, _ = encode_text(model, tokenizer, info, text)
    bad, _ = encode_text(model, tokenizer, info, corrupted)
    a = _target(info, tokenizer, answer)
    w = _target(info, tokenizer, wrong) if wrong else None
    return views.patch_view(model, tokenizer, clean, bad, a, w, _out(out), site=site,
                            answer_text=answer, wrong_text=wrong or "")  # fmt: skip


def inspect_saliency(
    model_dir: str | Path,
    texts: Sequence[str],
    out: str | Path,
    *,
    label: str | None = None,
    template: str | None = None,
    verbalizer: Sequence[str] | None = None,
    steps: int = 64,
    device: str = "cpu",
) -> list[Path]:
    """Integrated gradients per token for a fine-tuned classifier (class logit of `label`, by
    default the predicted class) or for a prompt with a verbalizer (log sum_w P(w) at the slot
    of `label`'s words, by default the best-scoring label)."""
    model, tokenizer, info = load(model_dir, device)
    examples: list[dict[str, Any]] = []
    classify = info is not None and info.get("task") == "classify"
    if not classify and (template is None or not verbalizer):
        raise ConfigError(
            "saliency explains a fine-tuned classifier (a `lmforge finetune --task classify` "
            "dir) or a prompt: pass --template and --verbalizer for this model."
        )
    for text in texts:
        if classify:
            ids, types = encode_text(model, tokenizer, info, text)
            labels = [str(x) for x in info["labels"]]
            with torch.no_grad():
                x = torch.tensor([ids], device=next(model.parameters()).device)
                kw = {"token_type_ids": torch.tensor([types], device=x.device)}
                probs = torch.softmax(model(x, **kw).logits.float(), -1)[0]
            target = labels.index(label) if label in labels else int(probs.argmax())
            if label is not None and label not in labels:
                raise ConfigError(f"'{label}' is not one of this classifier's labels {labels}.")
            title = (f"{labels[target]} (p = {float(probs[target]):.3f}, predicted "
                     f"{labels[int(probs.argmax())]})")  # fmt: skip
            examples.append({"ids": ids, "token_type_ids": types,
                             "score": class_score(target), "title": title})  # fmt: skip
        else:
            examples.append(
                _verbalizer_example(model, tokenizer, text, template, verbalizer, label)
            )
    return views.saliency_view(model, tokenizer, examples, _out(out), steps=steps)


def _verbalizer_example(
    model: Transformer,
    tokenizer: Tokenizer,
    text: str,
    template: str,
    verbalizer: Sequence[str],
    label: str | None,
) -> dict[str, Any]:
    """A prompt's ids and the score log sum_{w in V(label)} P(slot = w) (first piece of w)."""
    from lmforge.prompting.scoring import LabelScorer, scoring_mode
    from lmforge.prompting.template import Template, Verbalizer

    verb = Verbalizer.parse(verbalizer)
    mode = scoring_mode(model)
    mask_token = tokenizer.id_to_token(tokenizer.mask_id) if tokenizer.mask_id is not None else None
    tmpl = Template.parse(template, mask_token, require_slot=mode == "cloze")
    scorer = LabelScorer(model, tokenizer, verb)
    before, after = tmpl.render(text)
    space = before[-1:].isspace()
    ctx = scorer.front + tokenizer.encode(before.rstrip() if space else before)
    if mode == "cloze":
        ids = ctx + [tokenizer.mask_id] + tokenizer.encode(after) + scorer.back
        position = len(ctx)
    else:
        ids, position = ctx, -1
    words = {y: [scorer.word_ids(w, space, y)[0] for w in ws] for y, ws in verb.words.items()}
    with torch.no_grad():
        x = torch.tensor([ids], device=next(model.parameters()).device)
        logits = model(x).logits
    scores = {y: float(token_score(w, position)(logits)[0]) for y, w in words.items()}
    best = max(scores, key=scores.get)
    if label is not None and label not in words:
        raise ConfigError(f"'{label}' is not a verbalizer label; use one of {list(words)}.")
    chosen = label or best
    return {
        "ids": ids,
        "score": token_score(words[chosen], position),
        "title": f"{chosen}: log P = {scores[chosen]:.3f} (best label {best})",
        "note": f"Score: log of the summed probability of {', '.join(verb.words[chosen])} at the slot.",
    }


@torch.no_grad()
def _class_probs(
    model: Transformer, features: list[dict[str, Any]], batch: int = 32
) -> torch.Tensor:
    """(N, C) class probabilities of encoded classify features, run one length at a time."""
    device = next(model.parameters()).device
    out = torch.zeros(len(features), model.cfg.num_labels)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        n = max(len(features[i]["input_ids"]) for i in chunk)
        ids = torch.zeros(len(chunk), n, dtype=torch.long)
        types = torch.zeros(len(chunk), n, dtype=torch.long)
        mask = torch.zeros(len(chunk), n, dtype=torch.long)
        for row, i in enumerate(chunk):
            f = features[i]
            k = len(f["input_ids"])
            ids[row, :k] = torch.tensor(f["input_ids"])
            types[row, :k] = torch.tensor(f["token_type_ids"])
            mask[row, :k] = 1
        logits = model(ids.to(device), mask.to(device), types.to(device)).logits.float()
        out[chunk] = torch.softmax(logits, -1).cpu()
    return out


def explain_worst_errors(
    model: Transformer,
    tokenizer: Tokenizer,
    info: dict[str, Any],
    records: list[dict[str, Any]],
    out_dir: str | Path,
    stem: str,
    k: int = 5,
    steps: int = 64,
) -> tuple[str, list[Path]]:
    """Integrated gradients for the k most confident mistakes of a fine-tuned classifier.

    Each explained error shows which tokens pushed the model to the wrong class (the score is
    the wrong class's logit). Returns (a Markdown section for the report, the files written:
    `<stem>-saliency.html`, `.png`, `.json`); ("", []) when there is no mistake.
    """
    labels = [str(x) for x in info["labels"]]
    ids = {name: i for i, name in enumerate(labels)}
    feats, _ = encode_classify(tokenizer, records, ids, int(info["max_len"]))
    probs = _class_probs(model, feats)
    pred = probs.argmax(-1)
    wrong = [i for i in range(len(feats)) if int(pred[i]) != feats[i]["labels"]]
    if not wrong:
        return "", []
    worst = sorted(wrong, key=lambda i: -float(probs[i, pred[i]]))[:k]
    examples = []
    for i in worst:
        p, t = int(pred[i]), feats[i]["labels"]
        examples.append({
            "ids": feats[i]["input_ids"], "token_type_ids": feats[i]["token_type_ids"],
            "score": class_score(p),
            "title": f"true {labels[t]}, predicted {labels[p]} (p = {float(probs[i, p]):.3f})",
        })  # fmt: skip
    paths = views.saliency_view(model, tokenizer, examples, out_dir, steps=steps,
                                stem=f"{stem}-saliency")  # fmt: skip
    lines = [
        "",
        f"## The {len(worst)} most confident errors, explained",
        "",
        f"Integrated gradients ({steps} steps) of the predicted (wrong) class's logit per token; "
        f"open [{paths[0].name}]({paths[0].name}) for the highlighted text.",
        "",
        "| true | predicted | p | tokens pushing hardest towards the prediction |",
        "|---|---|---|---|",
    ]
    import json

    done = json.loads(paths[2].read_text(encoding="utf-8"))["examples"]
    for i, ex in zip(worst, done, strict=True):
        p, t = int(pred[i]), feats[i]["labels"]
        top = sorted(zip(ex["scores"], ex["tokens"], strict=True), reverse=True)[:5]
        shown = ", ".join(f"`{tok}` {s:+.2f}" for s, tok in top)
        lines.append(f"| {labels[t]} | {labels[p]} | {float(probs[i, p]):.3f} | {shown} |")
    lines += ["", f"![saliency of the first error]({paths[1].name})"]
    return "\n".join(lines) + "\n", paths
