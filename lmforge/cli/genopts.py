"""The generation options of `lmforge generate` and `lmforge chat`, declared once.

`@generation_options(**defaults)` adds every option of `OPTIONS` to a verb (under a
"Generation" heading of its --help) and hands the verb one checked `GenOptions` as its `gen`
argument. Bad values are refused before any model is loaded, with one sentence that names
the flag.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import typer

from lmforge.errors import GenerationError
from lmforge.generate import GenerationConfig

_PANEL = "Generation"


def _option(help: str, **kwargs: Any) -> Any:
    return typer.Option(help=help, rich_help_panel=_PANEL, **kwargs)


#: name -> (type, default, typer option). A verb may change the defaults, not the meaning.
OPTIONS: dict[str, tuple[Any, Any, Any]] = {
    "max_new_tokens": (int, 64, _option("The most new tokens (of each reply, in chat).")),
    "temperature": (float, 0.8, _option("Softmax temperature; 0 = greedy (argmax).")),
    "top_k": (int | None, None, _option("Keep only the k most likely tokens.")),
    "top_p": (float, 1.0, _option("Nucleus sampling: the smallest set with this mass (1 = off).")),
    "min_p": (float, 0.0, _option("Keep tokens with p >= min_p * the top p (0 = off).")),
    "repetition_penalty": (
        float,
        1.0,
        _option(
            "Tokens already in the prompt or output: positive logits / r, negative * r "
            "(1 = off; 1.1-1.3 is usual)."
        ),
    ),
    "presence_penalty": (
        float,
        0.0,
        _option("Subtracted once from each token already generated, in [-2, 2] (0 = off)."),
    ),
    "frequency_penalty": (
        float,
        0.0,
        _option("Subtracted per earlier occurrence of a generated token, in [-2, 2] (0 = off)."),
    ),
    "num_beams": (int, 1, _option("Beam search width (1 = no beams).")),
    "length_penalty": (float, 1.0, _option("Beam score = sum(logprob) / length^this.")),
    "seed": (int | None, None, _option("Random seed (same seed, same text).")),
    "stop": (list[str] | None, None, _option("Stop before this text (repeatable).")),
    "draft": (
        Path | None,
        None,
        _option(
            "A small model dir with the same tokenizer that drafts tokens for this one to "
            "verify (speculative decoding; prints the acceptance rate).",
            exists=True,
            file_okay=False,
        ),
    ),
    "draft_k": (int, 4, _option("Draft tokens per round with --draft.", min=1)),
    "compile": (
        bool,
        False,
        _option(
            "torch.compile the decode step: on CPU about 1.3x faster per token than eager for "
            "a 135M model (more for small ones), after compiling (see --compile-mode); worth "
            "it for long outputs."
        ),
    ),
    "compile_mode": (
        str | None,
        None,
        _option(
            "With --compile: 'regional' (the default: runs of 6 consecutive blocks compiled "
            "once for the whole stack, about 45 s for a 135M model on 2 cores) or 'whole' "
            "(the step as one graph with frozen weights, about 100 s, no faster)."
        ),
    ),
}
_CONFIG_FIELDS = {f.name for f in fields(GenerationConfig)}
_FLAG = re.compile(r"\b(" + "|".join(n for n in OPTIONS if n in _CONFIG_FIELDS) + r")\b")


@dataclass(frozen=True)
class GenOptions:
    """What the generation flags asked for, checked.

    Attributes:
        config: the decoding settings (without the model's own stop strings).
        draft: the draft model dir of speculative decoding, or None.
        draft_k: draft tokens per round.
        compile: False, True (the default mode) or how to compile the decode step ("whole" or
            "regional").
    """

    config: GenerationConfig
    draft: Path | None = None
    draft_k: int = 4
    compile: bool | str = False

    @property
    def settings(self) -> dict[str, Any]:
        """The `GenerationConfig` fields the flags set, as keyword arguments."""
        return {n: getattr(self.config, n) for n in OPTIONS if n in _CONFIG_FIELDS}


def check(values: dict[str, Any]) -> GenOptions:
    """Build `GenOptions` from the flags' values; a bad value raises `GenerationError` with one
    sentence naming its flag (--top-p, not top_p)."""
    settings = {n: v for n, v in values.items() if n in _CONFIG_FIELDS}
    settings["stop"] = settings["stop"] or []
    try:
        config = GenerationConfig(**settings)
    except GenerationError as exc:
        raise GenerationError(
            _FLAG.sub(lambda m: "--" + m[1].replace("_", "-"), str(exc))
        ) from None
    if values["draft"] is not None and (config.num_beams > 1 or config.uses_penalties):
        raise GenerationError(
            "--draft (speculative decoding) goes with --temperature, --top-k, --top-p and --min-p "
            "only; drop --num-beams and the penalties, or drop --draft."
        )
    if config.length_penalty != 1.0 and config.num_beams == 1:
        raise GenerationError(
            "--length-penalty scores beams only; add --num-beams 2 or more, or drop it."
        )
    compile = compile_choice(values["compile"], values["compile_mode"])
    return GenOptions(config, values["draft"], values["draft_k"], compile)


def compile_choice(compile: bool, mode: str | None) -> bool | str:
    """What --compile and --compile-mode ask for: False, True (the default mode) or the mode;
    a mode without --compile, or an unknown one, raises `GenerationError`."""
    if mode not in (None, "whole", "regional"):
        raise GenerationError(f"--compile-mode is {mode!r}; use 'whole' or 'regional'.")
    if mode is not None and not compile:
        raise GenerationError("--compile-mode sets how --compile compiles; add --compile.")
    return (mode or True) if compile else False


def generation_options(**defaults: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer verb that takes `gen: GenOptions`: it gets every option of `OPTIONS`
    (with `defaults` replacing the listed defaults) and receives them checked, as `gen`."""
    unknown = set(defaults) - set(OPTIONS)
    if unknown:
        raise TypeError(f"no generation option named {sorted(unknown)}")

    def wrap(verb: Callable[..., Any]) -> Callable[..., Any]:
        own = [
            p for p in inspect.signature(verb, eval_str=True).parameters.values() if p.name != "gen"
        ]
        added = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[kind, option],
                default=defaults.get(name, default),
            )
            for name, (kind, default, option) in OPTIONS.items()
        ]

        @functools.wraps(verb)
        def run(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in OPTIONS}
            return verb(**kwargs, gen=check(values))

        params = own + added
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return wrap
