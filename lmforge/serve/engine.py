"""The server's engine: one background thread owns the model and decodes every request in one
continuous batch (`lmforge.generate.ContinuousBatcher`).

    HTTP handlers (event loop)                engine thread
    submit(job) -> Ticket  ---- inbox ---->   batcher.add(prompt, gen)   (queued, then admitted)
    await ticket.queue     <--- events ----   batcher.step()             (one token for every row)
    ticket.cancel()        ---- inbox ---->   batcher.cancel(row)        (the slot is freed)

The thread sleeps while there is nothing to do. Events of one step for one ticket travel
together, handed to the handler's event loop with `call_soon_threadsafe`.

Beside the batch run lanes (`lmforge.serve.lanes`), one request at a time each on its own
thread with its own caches: beam search (`num_beams` > 1) always, and, with a draft model,
speculative decoding for a request it supports while that lane is free and the batch idle.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmforge.errors import LmforgeError, first_line
from lmforge.generate import ContinuousBatcher, RowEvent
from lmforge.serve.protocol import Job

log = logging.getLogger("lmforge.serve")


@dataclass
class EngineFailure:
    """Put on a ticket's queue when its request failed; the handler answers with `status`:
    503 when memory ran out (retry later), 400 when the request itself is at fault, else 500."""

    message: str
    status: int = 500
    type: str = "server_error"
    code: str | None = None


def out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure: torch's OutOfMemoryError (GPU) or the CPU allocator's
    RuntimeError ("can't allocate memory")."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def failure_for(exc: BaseException) -> EngineFailure:
    """How one request's failure is reported to its client (the others are not touched)."""
    if out_of_memory(exc):
        return EngineFailure(
            "the server ran out of memory for this request; retry shortly, or lower "
            "max_tokens or n.",
            status=503,
            code="out_of_memory",
        )
    if isinstance(exc, LmforgeError):
        return EngineFailure(str(exc), 400, "invalid_request_error", "invalid_value")
    return EngineFailure(f"decoding failed for this request ({type(exc).__name__}: {exc}).")


class Ticket:
    """A submitted job: its events arrive on `queue` as lists of (choice index, RowEvent),
    once per step for a stream, all at once when every row finished otherwise."""

    def __init__(self, engine: Engine, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self.engine, self.job, self.loop = engine, job, loop
        self.queue: asyncio.Queue[list[tuple[int, RowEvent]] | EngineFailure] = asyncio.Queue()
        self.rows: dict[int, int] = {}  # row id -> choice index (set by the engine thread)
        self.open = 0  # rows not finished yet (engine thread)
        self.held: list[tuple[int, RowEvent]] = []  # a non-streaming job's events so far
        self.done = False
        # speed as the client sees it (engine thread): submitted, first-token and last-token
        # times, tokens after the first step; `timings` is filled when the job finishes
        self.submitted = time.perf_counter()
        self.first: float | None = None
        self.tokens = self.later_tokens = 0
        self.timings: dict[str, Any] = {}
        self.lane = "batch"  # or the lane that decoded it ("beam", "speculative")
        self.speculative: dict[str, Any] | None = None  # draft/accepted counts (speculative)

    def _count(self, tokens: int, now: float) -> None:
        """One step's new tokens of this job, at time `now`."""
        self.tokens += tokens
        if self.first is None:
            self.first = now
        else:
            self.later_tokens += tokens

    def _finish(self, now: float, rate: float | None = None) -> None:
        """Fill `timings`: time to first token and tokens/s after it (the decode rate, unless
        `rate` is given), and the draft's acceptance of a speculative request."""
        first = self.first if self.first is not None else now
        if rate is None:
            decode = now - first
            rate = self.later_tokens / decode if decode > 0 else 0.0
        self.timings.update(
            time_to_first_token_s=round(first - self.submitted, 4),
            tokens_per_second=round(rate, 2),
        )
        extra = ""
        if self.speculative is not None:
            self.timings["speculative"] = self.speculative
            extra = ", draft acceptance {acceptance_rate:.1%} ({accepted_tokens} of {draft_tokens})"
            extra = extra.format(**self.speculative)
        log.info(
            "request done (%s): %d tokens, first token after %.0f ms, %.1f tokens/s%s",
            self.lane,
            self.tokens,
            (first - self.submitted) * 1000,
            rate,
            extra,
        )

    def cancel(self) -> None:
        """Free this job's rows (the client went away); harmless once it has finished."""
        if not self.done:
            self.done = True
            self.engine._post(cancel=self)

    def _push(self, item: list[tuple[int, RowEvent]] | EngineFailure) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


def _deliver(deliveries: list[tuple[asyncio.Queue, Any]]) -> None:
    """Runs on the event loop: hand each ticket its events of one step."""
    for queue, items in deliveries:
        queue.put_nowait(items)


class Engine:
    """Runs the decoding thread.

    Args:
        model: a decoder-only model in eval mode.
        tokenizer: the model's tokenizer (stop strings).
        max_batch: the most rows (choices) decoded together.
        draft: a draft model with the same tokenizer: requests the speculative lane supports
            run there, one at a time, while it is free and the batch idle (`lmforge.serve.lanes`).
        draft_k: draft tokens per speculative round.
        compile: torch.compile the batch's decode step (`ContinuousBatcher`'s `compile`; the
            lanes decode eagerly); `batcher.warm_up()` compiles it before the first request.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        max_batch: int = 16,
        draft: nn.Module | None = None,
        draft_k: int = 4,
        compile: bool | str = False,
    ) -> None:
        from lmforge.serve.lanes import BeamLane, SpeculativeLane  # lanes build on Ticket

        self.batcher = ContinuousBatcher(model, tokenizer, max_rows=max_batch, compile=compile)
        self.max_batch = max_batch
        self.beam_lane = BeamLane(model, tokenizer)
        self.speculative_lane = (
            SpeculativeLane(model, draft, tokenizer, draft_k) if draft is not None else None
        )
        self._cond = threading.Condition()
        self._new: list[Ticket] = []
        self._cancel: list[Ticket] = []
        self._stopping = False
        self._told_compile_error = False
        self._thread: threading.Thread | None = None
        self._owner: dict[
            int, Ticket
        ] = {}  # row id -> ticket (engine thread; others test emptiness)
        self._load = {"active_rows": 0, "waiting_rows": 0}  # replaced whole, never mutated
        self.stats = {
            "completed_rows": 0,
            "cancelled_rows": 0,
            "generated_tokens": 0,
            "peak_active_rows": 0,
            "failures": 0,
        }

    # ------------------------------------------------------------------ event-loop side
    @property
    def lanes(self) -> list[Any]:
        """The one-request-at-a-time lanes beside the batch."""
        return [lane for lane in (self.beam_lane, self.speculative_lane) if lane is not None]

    def start(self) -> None:
        """Start the decoding thread and the lanes' threads (idempotent)."""
        for lane in self.lanes:
            lane.start()
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="lmforge-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread after its current step, and the lanes after theirs."""
        for lane in self.lanes:
            lane.stop()
        self._post(stop=True)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def submit(self, job: Job) -> Ticket:
        """Queue a checked job; call from the event loop that will read the ticket.

        Beam search goes to the beam lane (queued there); a job the speculative lane supports
        goes there if the lane is free and the continuous batch is idle (speculation shortens
        one request's latency; under load the batch's throughput is worth more); everything
        else joins the continuous batch."""
        loop = asyncio.get_running_loop()
        if job.gen.num_beams > 1:
            return self.beam_lane.submit(job, loop)
        lane = self.speculative_lane
        if lane is not None and lane.supports(job) and self._batch_idle():
            ticket = lane.submit(job, loop, only_if_free=True)
            if ticket is not None:
                return ticket
        ticket = Ticket(self, job, loop)
        self._post(new=ticket)
        return ticket

    def _batch_idle(self) -> bool:
        """No row in the batch (every row has an owner from the moment it is added) and no
        ticket on its way there."""
        with self._cond:
            return not self._new and not self._owner

    def lane_load(self) -> dict[str, dict[str, int]]:
        """Each lane's load and counts, for /health."""
        return {f"{lane.name}_lane": lane.snapshot() for lane in self.lanes}

    def load(self) -> dict[str, int]:
        """Rows decoding now and rows waiting for a slot, as of the engine's last step."""
        return dict(self._load)

    def _post(self, new: Ticket | None = None, cancel: Ticket | None = None, stop: bool = False):
        with self._cond:
            if new is not None:
                self._new.append(new)
            if cancel is not None:
                self._cancel.append(cancel)
            self._stopping = self._stopping or stop
            self._cond.notify()

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._new or self._cancel or self._stopping) and self.batcher.idle:
                    self._cond.wait()
                if self._stopping:
                    break
                new, self._new = self._new, []
                cancel, self._cancel = self._cancel, []
            for ticket in new:
                try:
                    self._add(ticket)
                except Exception as exc:  # checked before submission; stay safe all the same
                    self._drop(ticket)
                    ticket._push(failure_for(exc))
            for ticket in cancel:
                self._drop(ticket)
            self._snapshot()
            if not self.batcher.idle:
                self._step()
        self._fail_all("the server is shutting down.")

    def _add(self, ticket: Ticket) -> None:
        job = ticket.job
        if ticket.done:  # cancelled before the engine saw it
            return
        for p, prompt in enumerate(job.prompts):
            rows = self.batcher.add(prompt, job.gen, job.logprobs)
            for j, row in enumerate(rows):
                ticket.rows[row] = p * job.n + j
                self._owner[row] = ticket
            ticket.open += len(rows)

    def _drop(self, ticket: Ticket) -> None:
        for row in ticket.rows:
            if self._owner.pop(row, None) is not None:
                self.batcher.cancel(row)
                self.stats["cancelled_rows"] += 1

    def _step(self) -> None:
        try:
            events = self.batcher.step()
        except Exception as exc:  # the batcher isolates requests; this is its own failure
            log.exception("decoding failed")
            self.stats["failures"] += 1
            self._fail_all(f"decoding failed ({type(exc).__name__}: {exc}).")
            return
        if self.batcher.compile_error is not None and not self._told_compile_error:
            self._told_compile_error = True
            error = self.batcher.compile_error
            log.warning(
                "compiling the batch's decode step failed (%s); it decodes eagerly from now on.",
                first_line(error.__cause__ or error),
            )
        self._snapshot()  # before any client sees this step's tokens
        self.stats["peak_active_rows"] = max(self.stats["peak_active_rows"], len(events))
        out: dict[Ticket, list[tuple[int, RowEvent]]] = {}
        now = time.perf_counter()
        for event in events:
            ticket = self._owner.get(event.row)
            if ticket is None:
                continue
            if event.error is not None:  # the batcher's failure events come first
                self._fail(ticket, event)
                continue
            self.stats["generated_tokens"] += event.token is not None
            if event.finish_reason is not None:
                del self._owner[event.row]
                self.stats["completed_rows"] += 1
                ticket.open -= 1
            out.setdefault(ticket, []).append((ticket.rows[event.row], event))
        for ticket, items in out.items():
            ticket._count(sum(e.token is not None for _, e in items), now)
            if not ticket.open:
                ticket._finish(now)
        # Wake each event loop once per step, and only for streams and finished jobs: every
        # cross-thread call is a socket write, and every wake-up is work on the loop's thread,
        # both paid for in GIL time this thread would decode with.
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for ticket, items in out.items():
            if not ticket.job.stream:
                ticket.held += items
                if ticket.open:
                    continue
                items, ticket.held = ticket.held, []
            by_loop.setdefault(ticket.loop, []).append((ticket.queue, items))
        for loop, deliveries in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, deliveries)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                pass

    def _snapshot(self) -> None:
        self._load = {"active_rows": self.batcher.active, "waiting_rows": self.batcher.waiting}

    def _fail(self, ticket: Ticket, event: RowEvent) -> None:
        """One of the ticket's prompts failed in the batcher (its rows have left the batch):
        answer this ticket alone, and free the rows of its other prompts."""
        exc = event.error
        log.error("request failed: %s: %s", type(exc).__name__, exc)
        self.stats["failures"] += 1
        ticket._push(failure_for(exc))
        ticket.done = True
        failed = ticket.rows[event.row] // ticket.job.n  # the prompt whose request failed
        for row, choice in ticket.rows.items():
            if self._owner.pop(row, None) is not None and choice // ticket.job.n != failed:
                self.batcher.cancel(row)
                self.stats["cancelled_rows"] += 1

    def _fail_all(self, message: str) -> None:
        """Answer every open ticket with a failure and start from an empty batch."""
        for ticket in {id(t): t for t in self._owner.values()}.values():
            ticket._push(EngineFailure(message))
        for row in list(self._owner):
            self.batcher.cancel(row)
        self._owner.clear()
        with self._cond:
            pending, self._new = self._new, []
        for ticket in pending:
            ticket._push(EngineFailure(message))
        self.batcher = self.batcher.fresh()
