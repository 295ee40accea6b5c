"""The four views behind `lmforge inspect`: each writes `<view>.html` (standalone), `<view>.png`
and `<view>.json` into an output folder, from a loaded model, its tokenizer and token ids."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.inspect.attention import (
    attention_patterns,
    attention_rollout,
    check_indices,
    default_stack,
)
from lmforge.inspect.hooks import InspectError
from lmforge.inspect.html import write_page
from lmforge.inspect.lens import direct_logit_attribution, logit_lens
from lmforge.inspect.patching import activation_patching
from lmforge.inspect.plots import plot_attention_grid, plot_heatmap, plot_saliency
from lmforge.inspect.saliency import ScoreFn, saliency
from lmforge.tokenizer import Tokenizer
from lmforge.utils.fs import atomic_write_text


def token_labels(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    """A readable label per token: its own text, with spaces, newlines and tabs shown as '␣', '⏎'
    and '⇥' (its vocabulary piece when it decodes to nothing)."""
    labels = []
    for i in ids:
        text = tokenizer.decode([int(i)], skip_special_tokens=False)
        if not text:
            text = tokenizer.id_to_token(int(i)) or f"<{int(i)}>"
        labels.append(text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥"))
    return labels


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return path


def _tensor(ids: Sequence[int], model: nn.Module) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.tensor([list(ids)], dtype=torch.long, device=device)


def attention_view(
    model: nn.Module,
    tokenizer: Tokenizer,
    ids: Sequence[int],
    out_dir: str | Path,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    rollout: bool = True,
    token_type_ids: Sequence[int] | None = None,
) -> list[Path]:
    """Head view + model view (HTML), the layer x head grid (PNG), the weights (JSON); with
    `rollout`, the attention rollout over all layers as well."""
    out = Path(out_dir)
    x = _tensor(ids, model)
    kw: dict[str, Any] = {}
    if token_type_ids is not None:
        kw["token_type_ids"] = _tensor(token_type_ids, model)
    if model.cfg.arch == "encoder-decoder":
        stack = "encoder"
    else:
        stack = default_stack(model)
    n_layer = len(getattr(model, stack).layers)
    layers = check_indices("layer", layers, n_layer)
    heads = check_indices("head", heads, model.cfg.n_head)
    pats = attention_patterns(model, x, layers=layers, heads=heads, stack=stack, **kw)
    tokens = token_labels(tokenizer, ids)
    data: dict[str, Any] = {
        "tokens": tokens,
        "key_tokens": tokens,
        "heads": heads,
        "patterns": {str(ly): p[0].cpu().numpy().round(4).tolist() for ly, p in pats.items()},
    }
    if rollout:
        full = attention_patterns(model, x, stack=stack, **kw)
        roll = attention_rollout([full[i] for i in range(n_layer)])
        data["rollout"] = roll[0].cpu().numpy().round(4).tolist()
    title = f"Attention: {len(layers)} layer(s) x {len(heads)} head(s), {len(tokens)} tokens"
    notes = [
        "Head view: lines join each query token (left) to the keys it attends to (right); hover "
        "a token to see only its lines. Model view: every selected layer and head; click one.",
        "Weights are recomputed from each layer's queries and keys, so they exist for any "
        "attention backend.",
    ]
    paths = [
        write_page(out / "attention.html", "attention", title, data, notes),
        plot_attention_grid(
            {ly: p[0].cpu().numpy() for ly, p in pats.items()},
            heads,
            tokens,
            tokens,
            out / "attention.png",
            title,
        ),
        _write_json(out / "attention.json", {"stack": stack, "layers": layers, **data}),
    ]
    return paths


def lens_view(
    model: nn.Module,
    tokenizer: Tokenizer,
    ids: Sequence[int],
    out_dir: str | Path,
    *,
    k: int = 5,
    label_names: Sequence[str] | None = None,
    token_type_ids: Sequence[int] | None = None,
) -> list[Path]:
    """Logit lens table + heatmap (layer x position: the top token and its probability); for a
    pre-norm LM also the direct logit attribution of the final prediction per head and MLP."""
    out = Path(out_dir)
    x = _tensor(ids, model)
    kw = {"token_type_ids": _tensor(token_type_ids, model)} if token_type_ids else {}
    lens = logit_lens(model, x, **kw)
    lens_logits, names = lens.logits, lens.layer_names
    probs = torch.softmax(lens_logits[:, 0].float(), dim=-1)  # (L+1, T, V) or (L+1, C)
    tokens = token_labels(tokenizer, ids)
    rows = [f"after {n}" if n != "embed" else "embeddings" for n in names]
    grids, data = [], {"tokens": tokens, "layers": names}
    if probs.dim() == 2:  # a pooled classifier head: one distribution per layer
        classes = list(label_names) if label_names else [str(c) for c in range(probs.size(-1))]
        values = probs.cpu().numpy()
        data["class_probs"] = values.round(5).tolist()
        data["classes"] = classes
        grids.append({"title": "Classifier head read at every layer (probabilities)",
                      "rows": rows, "columns": classes, "values": values.tolist()})  # fmt: skip
        png = plot_heatmap(values, rows, classes, out / "lens.png",
                           title="logit lens on the classifier head", xlabel="class",
                           labels=[[f"{v:.2f}" for v in row] for row in values.tolist()],
                           ylabel="layer", colorbar="probability")  # fmt: skip
    else:
        top = probs.topk(min(k, probs.size(-1)), dim=-1)
        top_ids, top_p = top.indices.cpu(), top.values.cpu()
        labels = [[token_labels(tokenizer, [int(t)])[0] for t in row[:, 0]] for row in top_ids]
        tips = [
            [
                ", ".join(
                    f"{token_labels(tokenizer, [int(t)])[0]} {float(p):.3f}"
                    for t, p in zip(top_ids[ly, i], top_p[ly, i], strict=True)
                )
                for i in range(len(tokens))
            ]
            for ly in range(len(names))
        ]
        values = top_p[:, :, 0].numpy()
        data["top"] = [
            [
                [
                    [int(t), round(float(p), 5)]
                    for t, p in zip(top_ids[ly, i], top_p[ly, i], strict=True)
                ]
                for i in range(len(tokens))
            ]
            for ly in range(len(names))
        ]
        grids.append({"title": "Logit lens: top token at each layer (colour: its probability)",
                      "note": "Columns are input positions; each cell is the prediction for "
                      "the NEXT token (causal LM) or for that position (masked LM), read with "
                      "the model's own final norm and head. Hover a cell for the top 5.",
                      "rows": rows, "columns": tokens, "values": values.tolist(),
                      "labels": labels, "tips": tips})  # fmt: skip
        png = plot_heatmap(values, rows, tokens, out / "lens.png",
                           title="logit lens: top-1 token and its probability",
                           xlabel="input position", ylabel="layer", labels=labels,
                           colorbar="probability of the top token")  # fmt: skip
        cfg = model.cfg
        if "lm" in cfg.heads and cfg.norm_placement == "pre" and cfg.arch == "decoder":
            final = int(top_ids[-1, -1, 0])
            attr = direct_logit_attribution(model, x, final)
            grid = attr.per_head(cfg.n_layer, cfg.n_head)
            index = {n: i for i, n in enumerate(attr.names)}
            mlp = torch.tensor(
                [float(attr.values[index[f"L{ly} mlp"]]) for ly in range(cfg.n_layer)]
            )
            table = torch.cat([grid, mlp[:, None]], dim=1)
            cols = [f"H{h}" for h in range(cfg.n_head)] + ["MLP"]
            lrows = [f"layer {ly}" for ly in range(cfg.n_layer)]
            target = labels[-1][-1]
            data["dla"] = {"token": final, "token_text": target, "total": attr.total,
                           "parts": dict(zip(attr.names, attr.values.tolist(), strict=True))}  # fmt: skip
            grids.append({"title": f"Direct logit attribution of '{target}' at the last position",
                          "note": f"Each head's and MLP's direct share of the logit "
                          f"({attr.total:.3f} in all, embeddings "
                          f"{float(attr.values[index['embed']]):.3f}); red lowers it.",
                          "rows": lrows, "columns": cols, "values": table.tolist(),
                          "signed": True})  # fmt: skip
            plot_heatmap(table.numpy(), lrows, cols, out / "dla.png",
                         title=f"direct logit attribution of '{target}'", signed=True,
                         labels=[[f"{v:.2f}" for v in r] for r in table.tolist()],
                         colorbar="logit share")  # fmt: skip
    title = f"Logit lens over {len(names) - 1} layers"
    return [
        write_page(out / "lens.html", "grid", title, {"grids": grids}),
        png,
        _write_json(out / "lens.json", data),
    ]


def patch_view(
    model: nn.Module,
    tokenizer: Tokenizer,
    clean: Sequence[int],
    corrupted: Sequence[int],
    answer: int,
    wrong: int | None,
    out_dir: str | Path,
    *,
    site: str = "resid_pre",
    answer_text: str = "",
    wrong_text: str = "",
) -> list[Path]:
    """Activation patching of `site` per layer x position and of attn.z per layer x head."""
    out = Path(out_dir)
    c, d = _tensor(clean, model), _tensor(corrupted, model)
    res = activation_patching(model, c, d, answer, wrong, site=site)
    per_head = activation_patching(model, c, d, answer, wrong, site="attn.z")
    ct, dt = token_labels(tokenizer, clean), token_labels(tokenizer, corrupted)
    columns = [a if a == b else f"{a}→{b}" for a, b in zip(dt, ct, strict=True)]
    rows = [f"layer {ly}" for ly in range(res.scores.size(0))]
    metric = f"logit({answer_text or answer})" + (
        f" - logit({wrong_text or wrong})" if wrong is not None else ""
    )
    note = (
        f"Metric {metric} at the last position: clean {res.clean:.3f}, corrupted "
        f"{res.corrupted:.3f}. A cell is (patched - corrupted) / (clean - corrupted): 1 = "
        "this activation from the clean run restores the clean answer."
    )
    grids = [
        {"title": f"Patching {site} per layer and position", "note": note, "rows": rows,
         "columns": columns, "values": res.scores.tolist(), "signed": True},
        {"title": "Patching each head's output (attn.z, all positions)", "rows": rows,
         "columns": [f"H{h}" for h in range(per_head.scores.size(1))],
         "values": per_head.scores.tolist(), "signed": True},
    ]  # fmt: skip
    png = plot_heatmap(res.scores.numpy(), rows, columns, out / "patch.png",
                       title=f"activation patching of {site}: {metric}", signed=True,
                       xlabel="position (corrupted→clean token)", ylabel="layer",
                       colorbar="restored share")  # fmt: skip
    plot_heatmap(per_head.scores.numpy(), rows, grids[1]["columns"], out / "patch-heads.png",
                 title=f"activation patching per head: {metric}", signed=True,
                 labels=[[f"{v:.2f}" for v in r] for r in per_head.scores.tolist()],
                 colorbar="restored share")  # fmt: skip
    data = {
        "site": site, "metric": metric, "clean": res.clean, "corrupted": res.corrupted,
        "clean_tokens": ct, "corrupted_tokens": dt, "scores": res.scores.tolist(),
        "head_scores": per_head.scores.tolist(),
    }  # fmt: skip
    return [
        write_page(out / "patch.html", "grid", "Activation patching", {"grids": grids}),
        png,
        _write_json(out / "patch.json", data),
    ]


def saliency_examples(
    model: nn.Module,
    tokenizer: Tokenizer,
    examples: Sequence[dict[str, Any]],
    *,
    steps: int = 64,
) -> list[dict[str, Any]]:
    """Integrated gradients (and gradient x input) of each example, JSON-ready.

    Each example: {"ids", "score" (a ScoreFn), "title", optional "token_type_ids", "note"}.
    """
    done = []
    for ex in examples:
        x = _tensor(ex["ids"], model)
        kw = {}
        if ex.get("token_type_ids") is not None:
            kw["token_type_ids"] = _tensor(ex["token_type_ids"], model)
        score: ScoreFn = ex["score"]
        ig = saliency(model, x, score, steps=steps, **kw)
        gx = saliency(model, x, score, method="grad_x_input", **kw)
        done.append({
            "title": ex["title"],
            "note": (ex.get("note", "") + f" Integrated gradients ({steps} steps): f(x) = "
                     f"{ig.f_input:.3f}, f(baseline) = {ig.f_baseline:.3f}, sum of attributions "
                     f"= {float(ig.scores.sum()):.3f} (gap {ig.delta:+.4f}).").strip(),
            "tokens": token_labels(tokenizer, ex["ids"]),
            "scores": [round(float(v), 5) for v in ig.scores],
            "grad_x_input": [round(float(v), 5) for v in gx.scores],
            "f_input": ig.f_input, "f_baseline": ig.f_baseline, "delta": ig.delta,
        })  # fmt: skip
    return done


def saliency_view(
    model: nn.Module,
    tokenizer: Tokenizer,
    examples: Sequence[dict[str, Any]],
    out_dir: str | Path,
    *,
    steps: int = 64,
    stem: str = "saliency",
) -> list[Path]:
    """Highlighted text (HTML: green raises the score, red lowers it), a bar chart of the first
    example (PNG) and every attribution (JSON)."""
    if not examples:
        raise InspectError("saliency needs at least one text to explain.")
    out = Path(out_dir)
    done = saliency_examples(model, tokenizer, examples, steps=steps)
    title = "Saliency: integrated gradients per input token"
    notes = [
        "Attribution of the score to each token's embedding, integrated from a zero baseline; "
        "green raises the score, red lowers it. Hover a token for its value."
    ]
    return [
        write_page(out / f"{stem}.html", "saliency", title, {"examples": done}, notes),
        plot_saliency(done[0]["tokens"], done[0]["scores"], out / f"{stem}.png", done[0]["title"]),
        _write_json(out / f"{stem}.json", {"examples": done}),
    ]
