"""Lanes: decoding beside the continuous batch, one request at a time, each on its own thread
with its own KV caches (the model's weights are only read).

    BeamLane          num_beams > 1: `lmforge.generate.beam_search`; a beam request is a batch
                      of its own, so beam requests queue here and run one after another. The
                      text arrives whole, at the end (a stream gets it as one chunk per choice).
    SpeculativeLane   with `lmforge serve --draft`: `lmforge.generate.speculative_outputs`, the
                      draft proposing k tokens per round and the model checking them at once. It
                      takes a request only while it is free and the batch is idle, and only one it supports (no
                      penalties, no logprobs, greedy or unseeded sampling, within the draft's
                      context); every other request joins the batch as before. Speculative
                      decoding helps one request's latency on a lightly loaded server; under
                      load the batch decodes more tokens per second.

A lane answers through the same `Ticket` as the batch (events of `RowEvent`s, one list per
speculative round for a stream), so the HTTP side does not know which decoded a request. A
lane request that fails is answered alone, with `failure_for`'s status (503 out of memory,
400 a bad request, else 500); one whose client left stops at its next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Any

from torch import nn

from lmforge.generate import RowEvent, beam_search, speculative_outputs
from lmforge.generate.engine import stop_strings
from lmforge.generate.rows import Row
from lmforge.generate.speculative import SpeculativeStats
from lmforge.serve.engine import EngineFailure, Ticket, failure_for
from lmforge.serve.protocol import Job

log = logging.getLogger("lmforge.serve")


class _Stopped(Exception):
    """The lane's request was cancelled (its client left) or the server is stopping."""


class LaneTicket(Ticket):
    """A ticket decoded by a lane: cancelling marks it, and the lane stops at its next step."""

    def __init__(self, lane: Lane, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(lane, job, loop)  # type: ignore[arg-type]  # `engine` is its lane
        self.lane = lane.name
        self.released = False  # the lane counted it and is free of it

    def cancel(self) -> None:
        self.done = True


class Lane:
    """A thread that decodes queued jobs one at a time; subclasses define `decode`."""

    name = "lane"

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[LaneTicket] = deque()
        self._pending = 0  # queued or decoding
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = {"completed": 0, "cancelled": 0, "failures": 0}

    def start(self) -> None:
        """Start the lane's thread (idempotent)."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(
                target=self._run, name=f"lmforge-{self.name}-lane", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop after the current step; queued requests are answered with a failure."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def submit(
        self, job: Job, loop: asyncio.AbstractEventLoop, only_if_free: bool = False
    ) -> LaneTicket | None:
        """Queue `job`; with `only_if_free`, only when nothing is queued or decoding here
        (None otherwise)."""
        with self._cond:
            if only_if_free and self._pending:
                return None
            ticket = LaneTicket(self, job, loop)
            self._queue.append(ticket)
            self._pending += 1
            self._cond.notify()
        return ticket

    def snapshot(self) -> dict[str, int]:
        """Requests queued or decoding here, and the counts so far."""
        return {"requests": self._pending, **self.stats}

    def decode(self, ticket: LaneTicket) -> None:
        """Decode one ticket's job, delivering its events through `emit`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ lane thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._queue or self._stopping):
                    self._cond.wait()
                if self._stopping:
                    break
                ticket = self._queue.popleft()
            try:
                if ticket.done:  # its client left while it waited
                    self._release(ticket, "cancelled")
                    continue
                self.decode(ticket)
                self._release(ticket, "completed")
            except _Stopped:
                self._release(ticket, "cancelled")
                if self._stopping:
                    ticket._push(EngineFailure("the server is shutting down."))
            except Exception as exc:  # this request alone fails
                log.error("%s lane request failed: %s: %s", self.name, type(exc).__name__, exc)
                self._release(ticket, "failures")
                ticket._push(failure_for(exc))
        with self._cond:
            left, self._queue = list(self._queue), deque()
            self._pending -= len(left)
        for ticket in left:
            ticket._push(EngineFailure("the server is shutting down."))

    def _release(self, ticket: LaneTicket, outcome: str) -> None:
        """Count `ticket`'s outcome and free the lane of it, once per ticket, before its last
        answer leaves: a client that sends its next request on reading the answer finds the
        lane free and its counts up to date."""
        if ticket.released:
            return
        ticket.released = True
        with self._cond:
            self._pending -= 1
            self.stats[outcome] += 1

    def check(self, ticket: LaneTicket) -> None:
        """Raise `_Stopped` when the ticket was cancelled or the server is stopping."""
        if ticket.done or self._stopping:
            raise _Stopped

    def emit(
        self,
        ticket: LaneTicket,
        items: list[tuple[int, RowEvent]],
        final: bool,
        rate: float | None = None,
    ) -> None:
        """Count and hand over events: a stream gets them now, any other job all at once when
        `final`. The timings (and the draft's acceptance) are filled before the last events
        leave, so a stream's usage chunk carries them."""
        now = time.perf_counter()
        if items:
            ticket._count(sum(e.token is not None for _, e in items), now)
        if final:
            ticket._finish(now, rate)
            self._release(ticket, "completed")
        if not ticket.job.stream:
            ticket.held += items
            if not final:
                return
            items, ticket.held = ticket.held, []
        if items:
            ticket._push(items)


class BeamLane(Lane):
    """Beam search, one request at a time; results equal `generate(..., num_beams=...)`, each
    beam then ending at its first stop string (as a batch row does)."""

    name = "beam"

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer

    def decode(self, ticket: LaneTicket) -> None:
        job = ticket.job
        start = time.perf_counter()
        outputs = beam_search(
            self.model, job.prompts, replace(job.gen, stop=[]), on_step=lambda _: self.check(ticket)
        )
        seconds = time.perf_counter() - start
        stops = stop_strings(job.gen, self.tokenizer)
        beams: dict[int, list[Any]] = {}
        for out in outputs:  # best first within each prompt
            beams.setdefault(out.prompt_index, []).append(out)
        items: list[tuple[int, RowEvent]] = []
        new = 0
        for p in range(len(job.prompts)):
            found = beams.get(p, [])
            for j in range(job.n):
                index = p * job.n + j
                if j < len(found):
                    tokens, reason = _until_stop(found[j].tokens, found[j].finish_reason, stops)
                else:  # fewer finished beams than asked for (a tiny vocabulary)
                    tokens, reason = [], "length"
                new += len(tokens)
                items += [(index, RowEvent(index, t)) for t in tokens]
                items.append((index, RowEvent(index, None, reason)))
        self.emit(ticket, items, final=True, rate=new / seconds if seconds > 0 else 0.0)


def _until_stop(tokens: list[int], reason: str, stops: Any) -> tuple[list[int], str]:
    """A beam's tokens up to the one that completes its first stop string ("stop"), as a row
    of the batch ends; the text is cut before the stop string when it is streamed."""
    if stops is not None:
        for n in range(1, len(tokens) + 1):
            if stops.hit(tokens[:n]):
                return tokens[:n], "stop"
    return tokens, reason


class SpeculativeLane(Lane):
    """Speculative decoding with a draft model, one request at a time, streamed per round.

    Args:
        model: the served model.
        draft: a smaller model with the same tokenizer.
        tokenizer: the shared tokenizer (stop strings).
        k: draft tokens per round.
    """

    name = "speculative"

    def __init__(self, model: nn.Module, draft: nn.Module, tokenizer: Any, k: int = 4) -> None:
        super().__init__()
        self.model, self.draft, self.tokenizer, self.k = model, draft, tokenizer, k

    def supports(self, job: Job) -> bool:
        """True for a job the speculative loop decodes as the batch would: no beams, no
        penalties, no logprobs, within the draft's context; and greedy or unseeded, so that a
        seeded sampling request gives the same text whatever the load (the lane samples
        from the same distribution but draws other random numbers than the batch)."""
        gen = job.gen
        span = max(len(p) for p in job.prompts) + gen.max_new_tokens
        return (
            gen.num_beams == 1
            and not gen.uses_penalties
            and job.logprobs is None
            and (gen.greedy or gen.seed is None)
            and span <= self.draft.cfg.max_seq_len
        )

    def decode(self, ticket: LaneTicket) -> None:
        job = ticket.job
        sent: list[int] = []
        closed: set[int] = set()

        def on_round(rows: list[Row], stats: SpeculativeStats) -> None:
            self.check(ticket)
            if not sent:
                sent.extend([0] * len(rows))
            items: list[tuple[int, RowEvent]] = []
            for i, row in enumerate(rows):
                items += [(i, RowEvent(i, t)) for t in row.tokens[sent[i] :]]
                sent[i] = len(row.tokens)
                if row.done and i not in closed:
                    closed.add(i)
                    items.append((i, RowEvent(i, None, row.finish_reason)))
            final = len(closed) == len(rows)
            if final:
                ticket.speculative = acceptance(stats)
            self.emit(ticket, items, final)

        outputs, stats = speculative_outputs(
            self.model, self.draft, job.prompts, job.gen, self.k, self.tokenizer, on_round
        )
        if len(closed) < len(outputs):  # every row ends in a round; stay safe all the same
            ticket.speculative = acceptance(stats)
            items = [(i, RowEvent(i, None, o.finish_reason)) for i, o in enumerate(outputs)]
            self.emit(ticket, [it for it in items if it[0] not in closed], final=True)


def acceptance(stats: SpeculativeStats) -> dict[str, Any]:
    """`usage.speculative`: draft tokens proposed, accepted, and accepted / proposed."""
    rate = stats.accepted / stats.proposed if stats.proposed else 0.0
    return {
        "draft_tokens": stats.proposed,
        "accepted_tokens": stats.accepted,
        "acceptance_rate": round(rate, 4),
    }
