"""`lmforge <verb>`: each verb is a thin call of a library function.

Errors a user can fix (`LmforgeError`) are printed as one line and exit with code 2; no traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from lmforge.cli.checks import unexpected
from lmforge.cli.compress import register as register_compress
from lmforge.cli.data import data_app
from lmforge.cli.eval import register as register_eval
from lmforge.cli.finetune import register as register_finetune
from lmforge.cli.genopts import GenOptions, generation_options
from lmforge.cli.inspect import register as register_inspect
from lmforge.cli.interop import register as register_interop
from lmforge.cli.knowledge import KgOpt, KgTemplatesOpt, RetrieveKOpt, RetrieveOpt, prompt_transform
from lmforge.cli.knowledge import register as register_knowledge
from lmforge.cli.longctx import register as register_longctx
from lmforge.cli.prompt import register as register_prompt
from lmforge.cli.quantize import register as register_quantize
from lmforge.cli.report import register as register_report
from lmforge.cli.serve import register as register_serve
from lmforge.config.train import train_keys_help
from lmforge.errors import LmforgeError, RunInterrupted

app = typer.Typer(
    name="lmforge",
    help="Build, train, fine-tune, generate with and serve Transformer language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tokenizer_app = typer.Typer(help="Train tokenizers.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(data_app, name="data")
register_longctx(app)
register_interop(app)
register_finetune(app)
register_prompt(app)
register_serve(app)
register_compress(app)
register_quantize(app)
register_eval(app)
register_knowledge(app)
register_inspect(app)
register_report(app)

StrategyOpt = Annotated[
    str | None,
    typer.Option(
        help="none, ddp (DistributedDataParallel) or fsdp (FSDP2); run under torchrun for "
        "several processes."
    ),
]
DataOpt = Annotated[
    list[Path] | None,
    typer.Option("--data", help="A .txt/.md/.jsonl file or folder; repeat for more."),
]


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/quickstart"),
    max_steps: Annotated[int, typer.Option(help="Training steps.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: Annotated[
        bool, typer.Option(help="Write into a non-empty --out, or start over an earlier run.")
    ] = False,
) -> None:
    """Train a BPE tokenizer and a small GPT on the embedded corpus, then generate (no download)."""
    from lmforge.recipes.quickstart import quickstart as run

    run(out, max_steps=max_steps, seed=seed, overwrite=overwrite)


@app.command(epilog=train_keys_help())
def pretrain(
    out: Annotated[Path, typer.Option(help="Run directory (model, checkpoints, metrics).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides of any train or model field.")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="Model preset (see `lmforge presets`); default by objective."),
    ] = None,
    objective: Annotated[
        str,
        typer.Option(
            help="causal-lm (gpt-mini), mlm-nsp (BERT masked LM + next sentence; bert-mini) or "
            "seq2seq (JSONL source/target pairs, else T5 span corruption; t5-mini)."
        ),
    ] = "causal-lm",
    data: DataOpt = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML/JSON run config.")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="Use this tokenizer dir.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    strategy: StrategyOpt = None,
    init: Annotated[
        Path | None,
        typer.Option(help="Continue pretraining this model dir (its weights and tokenizer)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Write into a non-empty --out, or start over an earlier run.")
    ] = False,
) -> None:
    """Pretrain a model from scratch on an objective (default data: the embedded corpus, or a
    token-shard folder made by `lmforge data prepare`)."""
    from lmforge.config.train import parse_overrides
    from lmforge.recipes.pretrain import pretrain as run

    values = parse_overrides(overrides or [])
    if max_steps is not None:
        values["max_steps"] = max_steps
    if strategy is not None:
        values["strategy"] = strategy
    r = run(
        data,
        out,
        preset=preset,
        objective=objective,
        config_file=config,
        overrides=values,
        tokenizer_dir=tokenizer,
        resume=resume,
        init_from=init,
        overwrite=overwrite,
    )
    ppl = f"{r.eval_ppl:.2f}" if r.eval_ppl is not None else "n/a"
    trained = f"trained {r.n_params / 1e6:.2f}M parameters for {r.train.steps} steps"
    if r.unigram_ppl is not None:
        held_out = f"held-out perplexity {ppl} (unigram baseline {r.unigram_ppl:.1f})"
    else:
        shown = ("eval_loss", "eval_mlm_acc", "eval_nsp_acc", "eval_token_acc")
        numbers = ", ".join(
            f"{k[5:]} {r.eval_metrics[k]:.3f}" for k in shown if k in r.eval_metrics
        )
        held_out = f"held-out {numbers or 'n/a'}"
    if os.environ.get("RANK", "0") == "0":  # one line, not one per torchrun process
        typer.echo(f"{trained}; {held_out}; model in {r.out_dir}")


@tokenizer_app.command("train")
def tokenizer_train(
    out: Annotated[Path, typer.Option(help="Output directory.")],
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size.")] = 8192,
    data: DataOpt = None,
    kind: Annotated[str, typer.Option(help="bpe (byte-level) or wordpiece.")] = "bpe",
    overwrite: Annotated[
        bool, typer.Option(help="Write into a non-empty --out that is not this verb's output.")
    ] = False,
) -> None:
    """Train a tokenizer (default data: the embedded corpus) and save tokenizer.json."""
    from lmforge.data import default_corpus, read_documents
    from lmforge.errors import ConfigError
    from lmforge.tokenizer import train_tokenizer
    from lmforge.utils.fs import prepare_out_dir

    prepare_out_dir(out, "tokenizer", inputs=data or [], overwrite=overwrite)
    if kind not in ("bpe", "wordpiece"):
        raise ConfigError(f"unknown tokenizer kind '{kind}'; choose bpe or wordpiece.")
    docs = read_documents(data) if data else default_corpus()
    tok = train_tokenizer(docs, vocab_size=vocab_size, kind=kind)
    tok.save(out)
    typer.echo(f"trained a {kind} tokenizer with {tok.vocab_size} tokens; saved to {out}")


@app.command()
@generation_options()
def generate(
    model_dir: Annotated[Path, typer.Argument(help="A checkpoint directory.")],
    gen: GenOptions,
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = "",
    num_return_sequences: Annotated[int, typer.Option(help="Samples per prompt.")] = 1,
    chat: Annotated[
        bool, typer.Option(help="Send the prompt as a user message under the chat template.")
    ] = False,
    stats: Annotated[
        bool, typer.Option(help="Print tokens/s and the time to first token (to stderr).")
    ] = False,
    retrieve: RetrieveOpt = None,
    retrieve_k: RetrieveKOpt = 3,
    kg: KgOpt = None,
    kg_templates: KgTemplatesOpt = None,
) -> None:
    """Continue a prompt with a trained model (optionally with retrieved passages or KG facts)."""
    from lmforge.cli.notices import warning_lines
    from lmforge.knowledge import Augmented, cite
    from lmforge.recipes.generate import EmptyOutputWarning, generate_from_dir

    transform = prompt_transform(retrieve, retrieve_k, kg, kg_templates)
    augmented = transform(prompt) if transform else Augmented(prompt, [])
    with warning_lines(EmptyOutputWarning):  # an empty output says why, in one line
        result = generate_from_dir(
            model_dir,
            augmented.prompt,
            **gen.settings,
            num_return_sequences=num_return_sequences,
            compile=gen.compile,
            draft=gen.draft,
            draft_k=gen.draft_k,
            chat=chat,
            return_stats=True,
        )
    texts = result.texts
    for i, text in enumerate(texts):
        if len(texts) > 1:
            typer.echo(f"--- sample {i + 1}")
        typer.echo(text if chat else prompt + text)
    if transform:
        typer.echo(cite(augmented.sources))
    if result.acceptance is not None:
        typer.echo(f"draft acceptance rate: {result.acceptance:.1%}", err=True)
    if stats:
        typer.echo(result.stats.summary(), err=True)


@app.command()
def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="A checkpoint directory.")],
    data: DataOpt = None,
    batch_size: Annotated[int, typer.Option(help="Windows (or examples) per batch.")] = 8,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "--report-dir",
            help="Where the report (JSON + Markdown) goes (default: the model's run dir).",
        ),
    ] = None,
    explain: Annotated[
        int, typer.Option(help="Classifier errors explained by saliency in the report (0: none).")
    ] = 5,
) -> None:
    """Perplexity of a causal LM on text; a fine-tuned model's scores on a labelled file."""
    from lmforge.errors import DataError
    from lmforge.recipes.finetuned import read_task_info

    if not data:
        raise DataError("evaluate needs --data PATH (a .txt/.jsonl file or folder).")
    if read_task_info(model_dir) is not None:
        from lmforge.cli.finetune import summary, truncation_lines
        from lmforge.recipes.finetuned import evaluate_finetuned

        if len(data) != 1:
            raise DataError(
                "a fine-tuned model is evaluated on one labelled file; pass one --data."
            )
        with truncation_lines():
            scores, paths = evaluate_finetuned(
                model_dir, data[0], report_dir=report_dir, batch_size=batch_size, explain=explain
            )
        typer.echo(summary(scores))
        typer.echo(f"report: {', '.join(str(p) for p in paths)}")
        return
    from lmforge.evaluate import perplexity
    from lmforge.evaluate.perplexity import write_perplexity_report

    r = perplexity(model_dir, data, batch_size=batch_size)
    paths = write_perplexity_report(r, model_dir, data, report_dir)
    typer.echo(
        f"perplexity {r.perplexity:.3f} (loss {r.loss:.4f} nats/token over {r.tokens} tokens)"
    )
    typer.echo(f"report: {', '.join(str(p) for p in paths)}")


@app.command()
def presets(
    name: Annotated[str | None, typer.Argument(help="Show one preset in full.")] = None,
) -> None:
    """List model presets, or show every field of one."""
    import json

    from lmforge.config import PRESETS, ModelConfig

    if name is not None:
        typer.echo(json.dumps(ModelConfig.from_preset(name).to_dict(), indent=2))
        return
    for key in PRESETS:
        cfg = ModelConfig.from_preset(key)
        typer.echo(
            f"{key:18s} {cfg.arch:16s} layers={cfg.n_layer:<3d} d_model={cfg.d_model:<5d} "
            f"heads={cfg.n_head}/{cfg.n_kv_head} pos={cfg.pos} norm={cfg.norm} mlp={cfg.mlp}"
        )


def main() -> None:
    """Console entry point: run the app, print user errors as one line, exit non-zero."""
    try:
        app()
    except RunInterrupted as e:
        typer.echo(str(e), err=True)
        sys.exit(128 + int(e.signum))
    except LmforgeError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except MemoryError:
        typer.echo("error: out of memory; use a smaller model, batch or input.", err=True)
        sys.exit(1)
    except Exception as e:  # a bug, not a user error: still one line, no traceback
        unexpected(e)
