"""`lmforge finetune`: fine-tune a model dir on labelled CSV/JSONL data (one call of
`lmforge.recipes.finetune.finetune`). `register(app)` adds the verb to the main app."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer


def _floats(text: str | None) -> str | list[float] | None:
    from lmforge.errors import ConfigError

    if text is None or text == "balanced":
        return text
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"--class-weights must be 'balanced' or comma-separated numbers such as 1,3, "
            f"got '{text}'."
        ) from None


def finetune(
    model_dir: Annotated[Path, typer.Argument(help="A pretrained (or converted) model dir.")],
    task: Annotated[
        str,
        typer.Option(
            help="classify, tokens (BIO tags), sft, seq2seq, qa (SQuAD), choice, embed (pairs); "
            "with images: image-classify, image-text (retrieval) or caption."
        ),
    ],
    train: Annotated[Path, typer.Option(help="Training file (.csv, .tsv, .jsonl or .json).")],
    out: Annotated[Path, typer.Option(help="Output dir (best model, metrics, reports).")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="key=value train settings (lr, batch_size, max_steps, ...)."),
    ] = None,
    valid: Annotated[
        Path | None, typer.Option(help="Validation file (default: 10% of --train held out).")
    ] = None,
    test: Annotated[Path | None, typer.Option(help="Test file scored with the best model.")] = None,
    method: Annotated[
        str, typer.Option(help="full, last-n, lora, prompt-tuning or prefix-tuning.")
    ] = "full",
    epochs: Annotated[float, typer.Option(help="Passes over the training data.")] = 3.0,
    max_len: Annotated[
        int | None, typer.Option(help="Longest example in tokens (default: the model's).")
    ] = None,
    last_n: Annotated[int, typer.Option(help="Blocks trained by --method last-n.")] = 2,
    lora_r: Annotated[int, typer.Option(help="LoRA rank r.")] = 8,
    lora_alpha: Annotated[float, typer.Option(help="LoRA scale numerator alpha.")] = 16.0,
    lora_dropout: Annotated[float, typer.Option(help="Dropout on the LoRA input.")] = 0.0,
    lora_targets: Annotated[
        str, typer.Option(help="Comma-separated linear-layer patterns LoRA adapts.")
    ] = "q_proj,v_proj",
    n_tokens: Annotated[int, typer.Option(help="Virtual tokens / prefix length.")] = 20,
    class_weights: Annotated[
        str | None, typer.Option(help="'balanced' or one comma-separated weight per label.")
    ] = None,
    teacher: Annotated[Path | None, typer.Option(help="A model dir to distil from.")] = None,
    distill_alpha: Annotated[float, typer.Option(help="Weight a of the KL term.")] = 0.5,
    distill_temperature: Annotated[float, typer.Option(help="Temperature T.")] = 2.0,
    select_metric: Annotated[
        str | None,
        typer.Option(help="Validation metric for the best model (macro_f1, accuracy, loss...)."),
    ] = None,
    patience: Annotated[
        int | None, typer.Option(help="Stop after this many evaluations without improvement.")
    ] = None,
    dropout: Annotated[float | None, typer.Option(help="Model dropout while training.")] = None,
    doc_stride: Annotated[
        int, typer.Option(help="qa: context tokens shared by consecutive windows.")
    ] = 128,
    max_answer_len: Annotated[
        int, typer.Option(help="qa: the longest predicted answer in tokens.")
    ] = 30,
    augment: Annotated[
        int, typer.Option(help="classify: augmented copies per training example (EDA).")
    ] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    strategy: Annotated[
        str | None,
        typer.Option(help="none, ddp or fsdp; run under torchrun for several processes."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Write into a non-empty --out that is not this verb's output.")
    ] = False,
    fusion: Annotated[
        str,
        typer.Option(help="Image tasks: early, late, cross or prefix fusion of image and text."),
    ] = "late",
    fusion_combine: Annotated[
        str, typer.Option(help="Image tasks, late fusion: concat, sum or gated.")
    ] = "concat",
    patch_size: Annotated[int, typer.Option(help="Image tasks: side of a square patch.")] = 2,
    image_pos: Annotated[
        str, typer.Option(help="Image tasks: learned or sincos2d patch positions.")
    ] = "learned",
    image_layers: Annotated[int, typer.Option(help="Image tasks: image encoder blocks.")] = 2,
    prompt: Annotated[
        str | None, typer.Option(help="Image tasks: the text given with every image.")
    ] = None,
) -> None:
    """Fine-tune a model on labelled data: classification, BIO tagging, SFT, seq2seq,
    extractive QA, multiple choice or sentence embeddings (query/positive pairs); with images:
    image classification, image-text retrieval and captioning."""
    from lmforge.utils.fs import prepare_out_dir

    def claim_out() -> None:  # the shared --out check, once the options are known to be valid
        prepare_out_dir(out, "finetune", inputs=[model_dir, train, valid, test],
                        overwrite=overwrite, resume=resume)  # fmt: skip

    if task == "embed":  # lmforge.recipes.finetune_embed
        from lmforge.cli.knowledge import finetune_embed
        from lmforge.errors import ConfigError

        if method != "full" or augment or teacher:
            raise ConfigError("--task embed trains the whole model; drop --method, --augment "
                              "and --teacher.")  # fmt: skip
        claim_out()
        return finetune_embed(model_dir, train, out, valid, test, epochs, max_len, overrides)
    from lmforge.recipes.multimodal import TASKS as IMAGE_TASKS

    if task in IMAGE_TASKS:
        claim_out()
        _finetune_images(model_dir, task, train, out, overrides, valid, test, epochs, resume,
                         fusion, fusion_combine, patch_size, image_pos, image_layers, prompt)  # fmt: skip
        return
    from lmforge.config.train import parse_overrides
    from lmforge.recipes.finetune import FinetuneConfig
    from lmforge.recipes.finetune import finetune as run

    fc = FinetuneConfig(
        task=task,
        method=method,
        epochs=epochs,
        max_len=max_len,
        last_n=last_n,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        lora_targets=[t.strip() for t in lora_targets.split(",") if t.strip()],
        n_tokens=n_tokens,
        class_weights=_floats(class_weights),
        teacher=str(teacher) if teacher is not None else None,
        distill_alpha=distill_alpha,
        distill_temperature=distill_temperature,
        select_metric=select_metric,
        patience=patience,
        dropout=dropout,
        doc_stride=doc_stride,
        max_answer_len=max_answer_len,
        augment=augment,
    )

    values = parse_overrides(overrides or [])
    if strategy is not None:
        values["strategy"] = strategy
    claim_out()
    with truncation_lines():
        r = run(model_dir, train, out, fc, valid=valid, test=test,
                overrides=values, resume=resume)  # fmt: skip
    typer.echo(r.trainable)
    for split in ("valid", "test"):
        if split in r.metrics:
            typer.echo(f"{split}: {summary(r.metrics[split])}")
    report = "test" if "test" in r.metrics else "valid"
    typer.echo(f"{r.train.steps} steps; model in {r.out_dir} (metrics.json, {report}-report.md)")


def _finetune_images(model_dir, task, train, out, overrides, valid, test, epochs, resume,
                     fusion, fusion_combine, patch_size, image_pos, image_layers, prompt) -> None:  # fmt: skip
    from lmforge.config.train import parse_overrides
    from lmforge.errors import ConfigError
    from lmforge.recipes.multimodal import MultimodalConfig, finetune_multimodal

    if valid is None:
        raise ConfigError(f"--task {task} needs --valid (a held-out image table or .npz).")
    mc = MultimodalConfig(task=task, fusion=fusion, fusion_combine=fusion_combine,
                          patch_size=patch_size, image_pos=image_pos, n_image_layer=image_layers,
                          prompt=prompt, epochs=epochs)  # fmt: skip
    r = finetune_multimodal(model_dir, train, out, mc, valid=valid, test=test,
                            overrides=parse_overrides(overrides or []), resume=resume)  # fmt: skip
    typer.echo(f"{r.metrics['parameters']:,} parameters, {r.train.steps} steps in "
               f"{r.metrics['train_seconds']} s")  # fmt: skip
    keys = ("accuracy", "macro_f1", "image_to_text_recall1", "text_to_image_recall1",
            "caption_exact_match")  # fmt: skip
    for split in ("validation", "test"):
        if split in r.metrics:
            s = r.metrics[split]
            typer.echo(f"{split}: " + ", ".join(f"{k} {s[k]:.4f}" for k in keys if k in s))
    typer.echo(f"model in {r.out_dir} (metrics.json, report.md)")


@contextlib.contextmanager
def truncation_lines() -> Iterator[None]:
    """Show each truncation warning as one plain line on stderr ("warning: 12 of 800 ...")."""
    from lmforge.data.task_batches import TruncationWarning

    original = warnings.showwarning

    def show(message, category, *args, **kwargs) -> None:
        if issubclass(category, TruncationWarning):
            typer.echo(f"warning: {message}", err=True)
        else:
            original(message, category, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("always", TruncationWarning)
        warnings.showwarning = show
        yield


def summary(scores: dict) -> str:
    """The headline numbers of a score dict, as 'accuracy 0.912, macro_f1 0.904, loss 0.25'."""
    keys = ("accuracy", "macro_f1", "entity_f1", "entity_precision", "entity_recall",
            "token_acc", "ppl", "loss", "exact_match", "f1", "bleu", "chrf", "rougeL")  # fmt: skip
    return ", ".join(f"{k} {scores[k]:.4f}" for k in keys if k in scores)


def register(app: typer.Typer) -> None:
    from lmforge.config.train import train_keys_help

    app.command("finetune", epilog=train_keys_help())(finetune)
