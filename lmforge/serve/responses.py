"""Answers in OpenAI's shapes: whole responses and server-sent-event chunks.

An `Answer` follows one job: each engine event goes to its choice (text deltas that never split
a character and stop before a stop string, token logprobs, the finish reason), and the answer
hands out the chunks to stream or, at the end, the whole body with usage counts.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.generate import RowEvent, TextStream
from lmforge.serve.protocol import Job, Served

Kind = Literal["completion", "chat"]


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]


class ChoiceState:
    """One choice (one row) as its events arrive."""

    def __init__(self, index: int, served: Served, job: Job, prompt: list[int]) -> None:
        self.index = index
        self.text = TextStream(served.tokenizer, job.gen.stop, prompt_ids=prompt)
        self.pieces: list[str] = []
        self.entries: list[TokenLogprob] = []
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    def feed(self, event: RowEvent) -> tuple[str, list[TokenLogprob]]:
        """Take one event; return the new text and the logprobs of tokens kept in the text."""
        delta, entries = "", []
        if event.token is not None:
            self.completion_tokens += 1
            delta = self.text.push(event.token)
            if event.logprob is not None and not self.text.stopped:
                top = [(t, _finite(lp)) for t, lp in event.top_logprobs or []]
                entries.append(TokenLogprob(event.token, _finite(event.logprob), top))
        if event.finish_reason is not None:
            delta += self.text.finish()
            self.finish_reason = event.finish_reason
        self.pieces.append(delta)
        self.entries += entries
        return delta, entries


class Answer:
    """The response to one job, built from engine events."""

    def __init__(self, kind: Kind, job: Job, served: Served) -> None:
        self.kind, self.job, self.served = kind, job, served
        self.id = ("cmpl-" if kind == "completion" else "chatcmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.choices = [
            ChoiceState(p * job.n + j, served, job, prompt)
            for p, prompt in enumerate(job.prompts)
            for j in range(job.n)
        ]
        self._token_text: dict[int, str] = {}
        # filled by the engine when the job finishes: time_to_first_token_s, tokens_per_second
        # and, for a request of the speculative lane, speculative (draft/accepted tokens)
        self.timings: dict[str, Any] = {}

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    def usage(self) -> dict[str, Any]:
        """Token counts, plus the time to first token and the decode rate (tokens/s); for a
        request decoded speculatively, `speculative`: {draft_tokens, accepted_tokens,
        acceptance_rate}."""
        prompt = sum(len(p) for p in self.job.prompts)
        completion = sum(c.completion_tokens for c in self.choices)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            **self.timings,
        }

    # ------------------------------------------------------------------ streaming
    def opening(self) -> list[dict[str, Any]]:
        """Chunks before any token: the assistant role (chat) or the echoed prompt."""
        if self.kind == "chat":
            return [
                self._chunk(c.index, {"role": "assistant", "content": ""}) for c in self.choices
            ]
        if self.job.echo:
            return [self._chunk(c.index, self._echo(c.index)) for c in self.choices]
        return []

    def feed(self, items: list[tuple[int, RowEvent]]) -> list[dict[str, Any]]:
        """Route a step's events to their choices; return the chunks worth sending, one per
        choice (a speculative round's accepted tokens, or a beam's whole text, are one chunk)."""
        merged: dict[int, tuple[str, list[TokenLogprob]]] = {}
        for index, event in items:
            delta, entries = self.choices[index].feed(event)
            text, kept = merged.get(index, ("", []))
            merged[index] = (text + delta, kept + entries)
        chunks = []
        for index, (delta, entries) in merged.items():
            choice = self.choices[index]
            if delta or entries or choice.finish_reason is not None:
                logprobs = self._logprobs(entries, 0) if self.job.logprobs is not None else None
                content = {"content": delta} if self.kind == "chat" and delta else {}
                chunk = self._chunk(index, delta if self.kind == "completion" else content)
                chunk["choices"][0].update(logprobs=logprobs, finish_reason=choice.finish_reason)
                chunks.append(chunk)
        return chunks

    def usage_chunk(self) -> dict[str, Any]:
        """The last chunk when the client asked for stream_options.include_usage."""
        return {**self._head(chunk=True), "choices": [], "usage": self.usage()}

    def _head(self, chunk: bool) -> dict[str, Any]:
        if self.kind == "completion":
            obj = "text_completion"
        else:
            obj = "chat.completion.chunk" if chunk else "chat.completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.served.name}

    def _chunk(self, index: int, delta: Any) -> dict[str, Any]:
        field = "text" if self.kind == "completion" else "delta"
        choice = {"index": index, field: delta, "logprobs": None, "finish_reason": None}
        head = self._head(chunk=True)
        if self.job.include_usage:
            head["usage"] = None
        return {**head, "choices": [choice]}

    # ------------------------------------------------------------------ whole body
    def body(self) -> dict[str, Any]:
        """The non-streaming response."""
        choices = []
        for c in self.choices:
            text = "".join(c.pieces)
            logprobs = None
            if self.job.logprobs is not None:
                logprobs = self._logprobs(c.entries, len(self._echo(c.index)))
            if self.kind == "completion":
                item = {"index": c.index, "text": self._echo(c.index) + text}
            else:
                item = {"index": c.index, "message": {"role": "assistant", "content": text}}
            choices.append({**item, "logprobs": logprobs, "finish_reason": c.finish_reason})
        body = {**self._head(chunk=False), "choices": choices, "usage": self.usage()}
        if self.job.sources:  # `--retrieve` / `--kg`: the passages the prompt cited
            body["sources"] = self.job.sources
        return body

    def _echo(self, index: int) -> str:
        return self.job.prompt_texts[index // self.job.n] if self.job.echo else ""

    def _token(self, token: int) -> str:
        if token not in self._token_text:
            self._token_text[token] = self.served.tokenizer.decode(
                [token], skip_special_tokens=False
            )
        return self._token_text[token]

    def _logprobs(self, entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
        """Completions: tokens / token_logprobs / top_logprobs / text_offset; chat: content."""
        if self.kind == "chat":
            return {
                "content": [
                    {
                        **self._token_logprob(e.token, e.logprob),
                        "top_logprobs": [self._token_logprob(t, lp) for t, lp in e.top],
                    }
                    for e in entries
                ],
                "refusal": None,
            }
        tokens = [self._token(e.token) for e in entries]
        offsets = []
        for text in tokens:
            offsets.append(offset)
            offset += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{self._token(t): lp for t, lp in e.top} for e in entries],
            "text_offset": offsets,
        }

    def _token_logprob(self, token: int, logprob: float) -> dict[str, Any]:
        text = self._token(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _finite(logprob: float) -> float:
    """JSON has no -inf; like OpenAI, report an impossible token as -9999."""
    return max(logprob, -9999.0)


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: `data: <json>` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"
