"""An interactive terminal chat with a model dir (`lmforge chat MODEL_DIR`).

Each turn renders the whole conversation with the tokenizer's chat template, or the documented
default of `lmforge.tokenizer.chat` when it has none, and streams the reply as it is generated.
The oldest turns are dropped when the conversation no longer fits the model's context.

Commands: `/reset` forgets the conversation, `/exit` (or `/quit`, or end of input) leaves.

Beam search (`num_beams` > 1) and speculative decoding (a draft model) give the reply whole
once it is decoded, instead of token by token.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.errors import GenerationError, LmforgeError
from lmforge.generate import GenerationConfig, stream_ids
from lmforge.generate.core import GenerationStats
from lmforge.knowledge.prompts import cite
from lmforge.recipes.finetuned import load_model_and_tokenizer
from lmforge.recipes.generate import decode, load_draft
from lmforge.tokenizer import Tokenizer
from lmforge.tokenizer.chat import chat_stops, encode_chat


class ChatSession:
    """A conversation with a model: `reply(text)` streams the assistant's answer.

    Args:
        model: a decoder-only model.
        tokenizer: its tokenizer (chat template, stop strings, decoding).
        gen: decoding settings; `max_new_tokens` is the longest reply.
        system: an optional system message kept at the start of every prompt.
        transform: an optional prompt transform (`lmforge.knowledge`) applied to each user
            message (retrieved passages, KG facts); `sources` holds the last one's citations.
        draft: a draft model with the same tokenizer: speculative decoding, `draft_k` tokens
            proposed per round; `last_acceptance` holds the latest reply's acceptance rate.
        compile: torch.compile the decode step (True or "whole", "regional"; False = eager).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        gen: GenerationConfig,
        system: str | None = None,
        transform: Callable[[str], Any] | None = None,
        draft: nn.Module | None = None,
        draft_k: int = 4,
        compile: bool | str = False,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.draft, self.draft_k, self.compile = draft, draft_k, compile
        self.last_acceptance: float | None = None
        self.transform, self.sources = transform, []
        self.gen = replace(gen, stop=gen.stop + chat_stops(tokenizer))
        self.system = system
        self.turns: list[dict[str, str]] = []
        self.last_stats: GenerationStats | None = None  # speed of the latest reply

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.turns = []

    def prompt_ids(self) -> list[int]:
        """The rendered conversation as ids; the oldest turns go first when it is too long."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        budget = self.model.cfg.max_seq_len - self.gen.max_new_tokens
        turns = list(self.turns)
        while True:
            ids = encode_chat(self.tokenizer, head + turns)
            if len(ids) <= budget:
                return ids
            if len(turns) <= 1:
                context, reply = self.model.cfg.max_seq_len, self.gen.max_new_tokens
                if len(ids) < context:  # a shorter reply would make room for the message
                    raise GenerationError(
                        f"the message needs {len(ids)} tokens and a reply of {reply} more, but "
                        f"the model's context holds {context}; lower --max-new-tokens to at "
                        f"most {context - len(ids)} or send a shorter message."
                    )
                raise GenerationError(
                    f"the message needs {len(ids)} tokens but the model's context holds "
                    f"{context}; send a shorter message."
                )
            turns = turns[2:] if len(turns) > 2 else turns[1:]  # drop the oldest exchange

    def reply(self, text: str) -> Iterator[str]:
        """Add a user message and stream the reply; the reply joins the conversation."""
        if self.transform is not None:
            augmented = self.transform(text)
            text, self.sources = augmented.prompt, augmented.sources
        self.turns.append({"role": "user", "content": text})
        try:
            ids = self.prompt_ids()
        except LmforgeError:
            self.turns.pop()
            raise
        pieces = []
        if self.draft is not None or self.gen.num_beams > 1:  # the reply comes whole
            outputs, self.last_stats, self.last_acceptance = decode(
                self.model, ids, self.gen, self.tokenizer, self.draft, self.draft_k, self.compile
            )
            pieces.append(outputs[0].text or "")
            yield pieces[0]
        else:
            with torch.no_grad():
                for delta in stream_ids(
                    self.model, self.tokenizer, ids, self.gen, self.compile, self._keep_stats
                ):
                    pieces.append(delta)
                    yield delta
        self.turns.append({"role": "assistant", "content": "".join(pieces).strip()})

    def _keep_stats(self, stats: GenerationStats) -> None:
        self.last_stats = stats


EMPTY_REPLY = (
    "(no reply: the model ended its turn at once; a base model never tuned on chats often does "
    "this, try `lmforge generate` with a plain prompt or a higher --temperature)"
)
EMPTY_STOPPED = (
    "(no reply: a --stop string came before any other text, or the model ended its turn at "
    "once; try without --stop)"
)


#: `chat`'s decoding settings unless its caller sets them.
CHAT_DEFAULTS: dict[str, Any] = {"max_new_tokens": 256, "temperature": 0.7, "top_p": 0.95}


def chat(
    model_dir: str | Path,
    *,
    system: str | None = None,
    gen: GenerationConfig | None = None,
    draft: str | Path | None = None,
    draft_k: int = 4,
    compile: bool | str = False,
    read: Callable[[str], str] = input,
    write: Callable[[str], object] | None = None,
    stats: bool = False,
    transform: Callable[[str], Any] | None = None,
    **settings: Any,
) -> None:
    """Chat in the terminal until `/exit` or end of input; `read`/`write` replace the terminal.

    Args:
        gen: the decoding settings (`max_new_tokens` is the longest reply); without it, a
            `GenerationConfig` of `CHAT_DEFAULTS` updated by `settings` (its field names:
            `temperature=0`, `num_beams=3`, `repetition_penalty=1.2`, `stop=[...]`, ...).
        draft: a model dir with the same tokenizer for speculative decoding (`draft_k` tokens
            per round); the acceptance rate is printed after each reply.
        stats: after each reply, print its tokens/s and time to first token.
    """
    out = write or _write_stdout
    model, tokenizer = load_model_and_tokenizer(model_dir)  # a PEFT run's dir: its adapter too
    if gen is None:
        gen = GenerationConfig(**{**CHAT_DEFAULTS, **settings})
    elif settings:
        raise GenerationError("pass the decoding settings in gen or as keywords, not both.")
    helper = load_draft(draft, tokenizer) if draft is not None else None
    session = ChatSession(model, tokenizer, gen, system, transform, helper, draft_k, compile)
    how = "its chat template" if tokenizer.chat_template else "the default chat format"
    out(f"chatting with {Path(model_dir).name} ({how}); /reset clears, /exit quits\n")
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            out("\n")
            return
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            session.reset()
            out("(conversation cleared)\n")
            continue
        if not line:
            continue
        out("bot> ")
        said = ""
        try:
            for delta in session.reply(line):
                said += delta
                out(delta)
            if transform is not None:
                out("\n" + cite(session.sources))
            if not said.strip():  # silence would look like a hang or a bug
                out(EMPTY_REPLY if not gen.stop else EMPTY_STOPPED)
        except LmforgeError as exc:
            out(f"\nerror: {exc}")
        out("\n")
        if session.last_acceptance is not None:
            out(f"(draft acceptance rate: {session.last_acceptance:.1%})\n")
        if stats and session.last_stats is not None:
            out(f"({session.last_stats.summary()})\n")


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
