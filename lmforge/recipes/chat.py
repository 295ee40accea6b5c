"""An interactive terminal chat with a model dir (`lmforge chat MODEL_DIR`).

Each turn renders the whole conversation with the tokenizer's chat template, or the documented
default of `lmforge.tokenizer.chat` when it has none, and streams the reply as it is generated.
The oldest turns are dropped when the conversation no longer fits the model's context.

Commands: `/reset` forgets the conversation, `/exit` (or `/quit`, or end of input) leaves.
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
from lmforge.recipes.finetuned import load_finetuned
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
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        gen: GenerationConfig,
        system: str | None = None,
        transform: Callable[[str], Any] | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
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
        with torch.no_grad():
            for delta in stream_ids(
                self.model, self.tokenizer, ids, self.gen, on_stats=self._keep_stats
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


def chat(
    model_dir: str | Path,
    *,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 0.95,
    seed: int | None = None,
    read: Callable[[str], str] = input,
    write: Callable[[str], object] | None = None,
    stats: bool = False,
    transform: Callable[[str], Any] | None = None,
) -> None:
    """Chat in the terminal until `/exit` or end of input; `read`/`write` replace the terminal.
    `stats`: after each reply, print its tokens/s and time to first token."""
    out = write or _write_stdout
    model = load_finetuned(model_dir)
    tokenizer = Tokenizer.load(model_dir)
    gen = GenerationConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    session = ChatSession(model, tokenizer, gen, system, transform)
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
                out(EMPTY_REPLY)
        except LmforgeError as exc:
            out(f"\nerror: {exc}")
        out("\n")
        if stats and session.last_stats is not None:
            out(f"({session.last_stats.summary()})\n")


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
