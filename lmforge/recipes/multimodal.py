"""Image-and-text fine-tuning: a pretrained text model gains an image encoder and a fusion.

    text model dir --(ModelConfig + image fields: patch size, positions, fusion)--> FusionModel
        (its text core loads the pretrained weights; the image encoder and fusion start fresh)
    images (table of PNG paths or .npz; lmforge.data.images) --> batches of pixels + tokens
    task:   image-classify   class of an image, asked with a text prompt        (accuracy)
            image-text       two-tower retrieval with the contrastive loss       (image->text R@1)
            caption          greedy captions from a decoder                      (exact match)
    fit(...) (the one training loop) -> the best model by a validation metric -> metrics.json,
    <split>-report.md; the out dir is a model dir that `load_model` rebuilds (config.json has
    the image fields) and `--resume` continues like any other run.

`finetune_multimodal()` is what `lmforge finetune --task image-classify|image-text|caption` calls.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file

from lmforge.config import ModelConfig
from lmforge.config.train import TrainConfig, make_train_config, split_values
from lmforge.data.images import ImageRecord, collate_images, image_features, read_images
from lmforge.data.task_batches import TaskBatches
from lmforge.data.tasks import label_names
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.evaluate.metrics import classification_report
from lmforge.models.fusion import FusionModel
from lmforge.models.io import WEIGHTS, is_model_dir, load_model
from lmforge.objectives.multimodal import FusionObjective
from lmforge.recipes.finetuned import write_task_info
from lmforge.tokenizer import Tokenizer
from lmforge.train import TrainResult, fit
from lmforge.utils.fs import atomic_write_text

TASKS = {"image-classify": "classify", "image-text": "retrieve", "caption": "caption"}
FUSIONS = ("early", "late", "cross", "prefix")


@dataclass
class MultimodalConfig:
    """Options of an image-and-text fine-tune.

    Attributes:
        task: "image-classify", "image-text" or "caption".
        fusion: "early", "late", "cross" or "prefix" (see `lmforge.models.fusion`).
        fusion_combine: late fusion's "concat", "sum" or "gated".
        patch_size, image_pos, n_image_layer, n_fusion_layer, image_channels: the image side.
        prompt: the text given with each image (classify: the question; caption: the words the
            caption follows).
        epochs: passes over the training images (sets max_steps unless given).
        temperature: tau of the contrastive loss (image-text).
        max_new_tokens: longest generated caption.
    """

    task: str = "image-classify"
    fusion: str = "late"
    fusion_combine: str = "concat"
    patch_size: int = 2
    image_pos: str = "learned"
    n_image_layer: int = 2
    n_fusion_layer: int = 1
    image_channels: int = 1
    prompt: str | None = None
    epochs: float = 3.0
    temperature: float = 0.07
    max_new_tokens: int = 16

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"unknown image task '{self.task}'; use {', '.join(TASKS)}.")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"unknown fusion '{self.fusion}'; use {', '.join(FUSIONS)}.")
        if self.prompt is None:
            self.prompt = "What digit is shown?" if self.task == "image-classify" else "Image:"


@dataclass
class MultimodalResult:
    out_dir: Path
    train: TrainResult
    metrics: dict[str, Any]
    model_config: ModelConfig
    train_config: TrainConfig


def model_config(base: ModelConfig, mc: MultimodalConfig, image: ImageRecord, n_labels: int):
    """The text model's config with the image side and the task's head."""
    task = TASKS[mc.task]
    heads = {"classify": ("classify",), "retrieve": (), "caption": ("lm",)}[task]
    return base.replace(
        heads=heads,
        num_labels=max(n_labels, 2),
        image_size=int(image.pixels.shape[-1]),
        image_channels=int(image.pixels.shape[0]),
        patch_size=mc.patch_size,
        image_pos=mc.image_pos,
        n_image_layer=mc.n_image_layer,
        n_fusion_layer=mc.n_fusion_layer,
        fusion=mc.fusion,
        fusion_combine=mc.fusion_combine,
    )


def load_text_core(model: FusionModel, model_dir: Path) -> None:
    """Load a text model dir's weights into the fusion model's core. Its heads carry over only
    for captioning (the LM head); anything else the core lacks is an error."""
    path = model_dir / WEIGHTS
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read weights {path} ({e}); the file is damaged.") from None
    core = model.core
    expected = core.state_dict()
    state = {k: v for k, v in state.items() if k in expected}
    for k, v in state.items():
        if expected[k].shape != v.shape:
            raise CheckpointError(f"tensor '{k}' of {path} has shape {tuple(v.shape)}, the "
                                  f"model expects {tuple(expected[k].shape)}.")  # fmt: skip
    core.load_state_dict(state, strict=False)
    tied = {n for n, _ in core.named_parameters(remove_duplicate=False)} - {
        n for n, _ in core.named_parameters()
    }
    missing = [k for k in expected if k not in state and k not in tied]
    if missing:
        raise CheckpointError(
            f"the weights in {path} lack '{missing[0]}' (and {len(missing) - 1} more) that the "
            "text model needs; the model dir is damaged or does not match its config.json."
        )


def _check_texts(records: list[ImageRecord], task: str, split: str, path: Path) -> None:
    column = "label" if task == "classify" else "text"
    if any((r.label if task == "classify" else r.text) in (None, "") for r in records):
        raise DataError(f"every row of the {split} file {path} needs a '{column}' for this task.")


def _train_config(mc: MultimodalConfig, values: dict[str, Any], n_train: int, task: str):
    batch = int(values.get("batch_size", 32))
    per_epoch = max(1, math.ceil(n_train / batch))
    steps = int(values.get("max_steps", max(1, math.ceil(mc.epochs * per_epoch))))
    select = {"classify": ("eval_accuracy", "max")}.get(task, ("eval_loss", "min"))
    defaults = {
        "batch_size": batch,
        "lr": 5e-4,
        "min_lr": 0.0,
        "schedule": "linear",
        "weight_decay": 0.01,
        "warmup_steps": round(0.06 * steps),
        "max_steps": steps,
        "eval_every": per_epoch,
        "eval_batches": 1000,
        "log_every": max(1, min(10, per_epoch)),
        "keep_last": 1,
        "select_metric": select[0],
        "select_mode": select[1],
    }
    return make_train_config({**defaults, **values})


def finetune_multimodal(
    model_dir: str | Path,
    train: str | Path,
    out_dir: str | Path,
    config: MultimodalConfig | None = None,
    *,
    valid: str | Path,
    test: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> MultimodalResult:
    """Fine-tune a text model dir with images (see the module docstring).

    Args:
        model_dir: a pretrained lmforge text model dir (an encoder such as MiniLM, or a decoder
            for captioning).
        train, valid, test: image tables (.csv/.tsv/.jsonl/.json with image, label, text) or
            .npz files.
        out_dir: the run dir (best model, metrics.json, report, checkpoints).
        config: task, fusion and the image options.
        overrides: TrainConfig fields (lr, batch_size, max_steps, ...).
        resume: continue from the newest checkpoint in out_dir/checkpoints.
    """
    mc = config or MultimodalConfig()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not is_model_dir(model_dir):
        raise CheckpointError(
            f"{model_dir} is not an lmforge model dir (config.json + model.safetensors); pass a "
            "text model made by `lmforge pretrain` or `lmforge convert`."
        )
    task = TASKS[mc.task]
    train_values, model_values = split_values(overrides or {})
    if model_values:
        raise ConfigError(f"model key '{next(iter(model_values))}' cannot be overridden here.")
    base = ModelConfig.from_dir(model_dir)
    if task == "caption" and base.arch != "decoder":
        raise ConfigError(
            f"captioning needs a decoder (a causal LM) as its text model, but the base is "
            f"{'an' if base.arch[0] == 'e' else 'a'} {base.arch}; pass a GPT/Llama model dir."
        )
    tok = Tokenizer.load(model_dir)
    if task == "caption" and tok.eos_id is None:
        raise ConfigError(f"the tokenizer of {model_dir} has no EOS token to end captions.")

    splits = {"training": Path(train), "validation": Path(valid)}
    if test is not None:
        splits["test"] = Path(test)
    records = {s: read_images(p, s, mc.image_channels) for s, p in splits.items()}
    for s, p in splits.items():
        _check_texts(records[s], task, s, p)
    shape = tuple(records["training"][0].pixels.shape)
    for s, rs in records.items():
        if tuple(rs[0].pixels.shape) != shape:
            raise DataError(f"the {s} images are {tuple(rs[0].pixels.shape)[1:]}, the training "
                            f"images {shape[1:]}; use one size.")  # fmt: skip
    names = label_names([r.label for r in records["training"]]) if task == "classify" else []
    label_ids = {n: i for i, n in enumerate(names)}
    for s, rs in records.items():
        unknown = {r.label for r in rs} - set(label_ids) if task == "classify" else set()
        if unknown:
            raise DataError(f"the {s} split has label(s) {sorted(unknown)[:3]} that the "
                            "training split lacks.")  # fmt: skip
    texts = sorted({r.text for rs in records.values() for r in rs}) if task == "retrieve" else []
    text_ids = {t: i for i, t in enumerate(texts)}

    cfg = model_config(base, mc, records["training"][0], len(names))
    feats = {
        s: image_features(task, rs, tok, label_ids, mc.prompt, text_ids)
        for s, rs in records.items()
    }
    tcfg = _train_config(mc, train_values, len(feats["training"]), task)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    model = FusionModel(cfg)
    load_text_core(model, model_dir)
    pad = tok.pad_id if tok.pad_id is not None else 0

    def collate(features):
        return collate_images(features, pad)

    info = {"task": mc.task, "labels": names, "texts": texts, "base_model": str(model_dir),
            "multimodal": asdict(mc)}  # fmt: skip

    def save_extra(d: Path) -> None:
        tok.save(d)
        write_task_info(d, info)

    data = TaskBatches(feats["training"], collate, tcfg.batch_size, seed=tcfg.seed)
    held = TaskBatches(feats["validation"], collate, tcfg.batch_size, name="validation")
    began = time.perf_counter()
    result = fit(model, FusionObjective(task, mc.temperature), data, held.sequential, tcfg,
                 out_dir, resume=resume, save_extra=save_extra, progress=progress)  # fmt: skip
    result.raise_if_interrupted()
    seconds = time.perf_counter() - began

    best = load_model(out_dir)
    metrics: dict[str, Any] = {
        "task": mc.task,
        "fusion": mc.fusion,
        "parameters": best.num_parameters(),
        "train_seconds": round(seconds, 1),
        "steps": result.steps,
        "config": asdict(mc),
    }
    for s in ("validation", "test"):
        if s in records:
            metrics[s] = score_images(best, tok, records[s], mc, names, texts)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_image_report(metrics, out_dir)
    return MultimodalResult(out_dir, result, metrics, cfg, tcfg)


@torch.no_grad()
def score_images(
    model: FusionModel,
    tok: Tokenizer,
    records: list[ImageRecord],
    mc: MultimodalConfig,
    names: list[str],
    texts: list[str],
    batch_size: int = 64,
) -> dict[str, Any]:
    """Held-out scores: classify -> accuracy/F1 report; image-text -> recall@1 both ways over
    the distinct texts; caption -> exact match of the greedy caption with the reference."""
    model.eval()
    task = TASKS[mc.task]
    pixels = torch.stack([r.pixels for r in records])
    if task == "classify":
        prompt = tok.encode(mc.prompt, add_special_tokens=True)
        preds = []
        for at in range(0, len(records), batch_size):
            pv = pixels[at : at + batch_size]
            ids = torch.tensor([prompt] * pv.size(0))
            preds += model(ids, pixel_values=pv).logits.argmax(-1).tolist()
        report = classification_report([r.label for r in records], [names[p] for p in preds],
                                        names)  # fmt: skip
        return report
    if task == "retrieve":
        pad = tok.pad_id if tok.pad_id is not None else 0
        feats = [{"input_ids": tok.encode(t, add_special_tokens=True), "pixels": pixels[0]}
                 for t in texts]  # fmt: skip
        batch = collate_images(feats, pad)
        text_emb = model.embed_text(batch["input_ids"], batch["attention_mask"])  # (K, p)
        image_emb = torch.cat([model.embed_image(pv) for pv in pixels.split(batch_size)])
        sim = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T  # (N, K)
        truth = torch.tensor([texts.index(r.text) for r in records])
        i2t = float((sim.argmax(-1) == truth).float().mean())
        # text -> image: the nearest image of each text belongs to that text
        t2i = float((truth[sim.argmax(0)] == torch.arange(len(texts))).float().mean())
        return {"n": len(records), "image_to_text_recall1": i2t, "text_to_image_recall1": t2i}
    prompt = tok.encode(mc.prompt, add_special_tokens=True)
    hits, samples = 0, []
    for at in range(0, len(records), batch_size):
        chunk = records[at : at + batch_size]
        outs = model.caption(pixels[at : at + len(chunk)], prompt, tok.eos_id, mc.max_new_tokens)
        for r, ids in zip(chunk, outs, strict=True):
            said = tok.decode(ids).strip()
            hits += said.lower() == r.text.strip().lower()
            if len(samples) < 8:
                samples.append({"reference": r.text, "caption": said})
    return {"n": len(records), "caption_exact_match": hits / len(records), "samples": samples}


def write_image_report(metrics: dict[str, Any], out_dir: Path) -> Path:
    """`report.md`: the task, fusion, size, time and the held-out scores."""
    lines = [f"# {out_dir.name}: {metrics['task']} with {metrics['fusion']} fusion", "",
             f"- parameters: {metrics['parameters']:,}",
             f"- training: {metrics['steps']} steps in {metrics['train_seconds']} s", ""]  # fmt: skip
    keys = ("accuracy", "macro_f1", "image_to_text_recall1", "text_to_image_recall1",
            "caption_exact_match")  # fmt: skip
    for split in ("validation", "test"):
        if split in metrics:
            scores = metrics[split]
            shown = ", ".join(f"{k} {scores[k]:.4f}" for k in keys if k in scores)
            lines.append(f"- {split} ({scores['n']} images): {shown}")
            for s in scores.get("samples", [])[:4]:
                lines.append(f"  - '{s['caption']}' (reference '{s['reference']}')")
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
