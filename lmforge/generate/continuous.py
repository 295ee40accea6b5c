"""Continuous batching: a decoding batch that admits new requests and drops finished rows
between steps, so requests that arrive at different times are decoded together.

    add(prompt, gen) -> row ids (queued)            cancel(row) -> row leaves at the next step
    step():  admit queued requests that fit -> prefill them (in groups of similar prompt
             length, `length_groups`) -> merge their cache rows
             pick one token per row (each row with its own GenerationConfig)
             drop finished and cancelled rows -> the model's decode step for the rest

All rows share the KV cache's one time axis. Every row is kept right-aligned: its newest token
sits in the last column and left padding fills the front, which the mask hides (positions come
from the mask, so padding changes nothing the model sees). Merging new rows left-pads whichever
side is shorter; dropping rows trims the columns that became padding in every row, so the cache
is never wider than the longest row. What the penalties see (`rows.TokenHistory`, the class
`generate` uses too) follows the batch the same way: its rows are merged on admission and
selected when rows leave.

One request's failure stays its own. When a batched step raises, the batcher finds the culprit
instead of failing the batch:

    admission (cache allocation, prefill, merge) fails  -> admit the newcomers one by one;
                                                           those that fail alone fail
    decode step fails                                   -> bisect the batch (row ranges are
                                                           views of the cache, nothing copied);
                                                           a row that fails alone fails its request
    token choice fails                                  -> choose per request

A failed request leaves the batch and `step` reports it as events with `error` set (one per
row); every other row goes on with the tokens it would have had without it. A failure that is
not bound to one row (say memory at the full batch size) is survived by decoding the batch in
smaller pieces for that step.

With `compile` the decode step is compiled once for the batch (`static.batch_step`, its batch
axis symbolic, so rows coming and going reuse one graph; batch 1 has its own); `warm_up()`
compiles both before the first request.

Each request draws its sampling noise from its own generator (seeded by `gen.seed`), one
(n, V) draw per step for its n rows, exactly as `generate` does for one prompt: a seeded request
gives the same tokens here, whatever else shares the batch, as it does alone with `generate`.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.errors import GenerationError
from lmforge.generate.config import GenerationConfig
from lmforge.generate.core import FinishReason, prefill
from lmforge.generate.inputs import (
    as_prompts,
    check_fits,
    check_model,
    model_device,
    pad,
    resolve_eos,
)
from lmforge.generate.rows import Row, TokenHistory, expand_index, make_rows, stop_strings
from lmforge.generate.sampling import exp_noise, make_generator, next_token_probs
from lmforge.generate.static import StepCompileError, batch_step, compile_mode
from lmforge.models.cache import KVCache


@dataclass
class RowEvent:
    """What one step did for one row.

    Attributes:
        row: the row id `add` returned.
        token: the new token, or None when the row ended on EOS (which is not returned).
        finish_reason: set on a row's last event: "stop" (EOS or a stop string) or "length".
        logprob: log p(token) under the model's raw distribution (rows asking for logprobs).
        top_logprobs: the most likely (token, logprob) pairs, best first.
        error: set when the row's request failed (its only event from then on; the request's
            other rows get one too); token and finish_reason are then None.
    """

    row: int
    token: int | None
    finish_reason: FinishReason | None = None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    error: Exception | None = None


@dataclass
class _Request:
    prompt: list[int]
    gen: GenerationConfig
    logprobs: int | None
    rows: list[int]
    generator: torch.Generator | None = None


@dataclass
class _Row(Row):
    """A `Row` of the running batch, with the id `add` returned and its request."""

    id: int = 0
    request: _Request | None = None


def _sampling_key(gen: GenerationConfig) -> tuple:
    """Rows whose settings share this key go through the logits processors together."""
    return (
        gen.temperature,
        gen.top_k,
        gen.top_p,
        gen.min_p,
        gen.repetition_penalty,
        gen.presence_penalty,
        gen.frequency_penalty,
    )


#: the fixed cost of one prefill forward, in prompt tokens: reading every weight once costs
#: about as much as the products of this many token rows (on CPU, fp32: memory bandwidth
#: ~20 GB/s against ~250 GFLOP/s, 2 x 250 / 20 = 25 rows; a SmolLM2-135M-shape step read its
#: weights in ~30 ms, and prefill ran ~1.1 ms a token row)
PREFILL_PASS_ROWS = 32


def length_groups(lengths: list[int], pass_rows: int = PREFILL_PASS_ROWS) -> list[list[int]]:
    """Split prompts of these token lengths into prefill groups (lists of indices, shortest
    prompts first), each group padded to its longest prompt. A group of prompts i..j in length
    order costs its padded rows plus one forward's fixed cost:

        cost(group) = len(group) * max(lengths in group) + pass_rows

    and the groups minimise the total (dynamic programming over the sorted lengths; a
    partition into contiguous runs of the sorted order is optimal for this cost). One long
    prompt among short ones gets a forward of its own instead of padding them all to its
    length; prompts of similar lengths share one."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = [0] * (len(order) + 1)  # best[j]: cheapest split of the j shortest prompts
    cut = [0] * (len(order) + 1)  # where the last group of that split starts
    for j in range(1, len(order) + 1):
        longest = lengths[order[j - 1]]
        best[j], cut[j] = min((best[i] + (j - i) * longest + pass_rows, i) for i in range(j))
    groups = []
    j = len(order)
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


class ContinuousBatcher:
    """A running batch of rows over one model; `step()` advances every row by one token.

    Args:
        model: a decoder-only `Transformer` with an LM head (in eval mode).
        tokenizer: needed for stop strings.
        max_rows: the most rows decoded at once; a request (its n samples together) waits
            in a FIFO queue until it fits, or runs alone if it is larger than `max_rows`.
        compile: torch.compile the decode step (True, "regional" or "whole", as `generate`'s
            `compile`), with a symbolic batch axis; False decodes eagerly.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        max_rows: int = 16,
        compile: bool | str = False,
    ) -> None:
        check_model(model)
        if model.cfg.arch != "decoder":
            raise GenerationError(
                "continuous batching needs a decoder-only model; generate with an "
                "encoder-decoder through lmforge.generate.generate instead."
            )
        if getattr(model, "prompt", None) is not None:
            raise GenerationError(
                "continuous batching does not support a soft prompt; merge or remove the "
                "prompt-tuning module first."
            )
        if max_rows < 1:
            raise GenerationError(f"max_rows must be at least 1, got {max_rows}.")
        self.model, self.tokenizer, self.max_rows = model, tokenizer, max_rows
        self.device = model_device(model)
        self.compile = compile
        self._step = batch_step(model, compile)  # None: eager `model.step`
        # why the compiled step was dropped (the batch then decodes eagerly), or None
        self.compile_error: StepCompileError | None = None
        self._ids = itertools.count()
        self.reset()

    def fresh(self) -> ContinuousBatcher:
        """A new, empty batcher over the same model with this one's compiled step (after a
        failure of the batcher itself, its state is not trusted; its compiled graphs are)."""
        new = ContinuousBatcher(self.model, self.tokenizer, self.max_rows)
        new.compile, new._step, new.compile_error = self.compile, self._step, self.compile_error
        return new

    def reset(self) -> None:
        """Forget every row and queued request (the compiled step is kept)."""
        self._layout: tuple | None = None  # the cache layout the compiled step last checked
        self._queue: deque[_Request] = deque()
        self._cancelled: set[int] = set()
        self._rows: list[_Row] = []  # batch order
        self._cache: KVCache | None = None
        self._logits: Tensor | None = None  # (B, V) next-token logits of every row
        self._history: TokenHistory | None = None  # what the penalties see, row by row
        self._failed: list[tuple[_Request, Exception]] = []  # this step's failed requests

    # ------------------------------------------------------------------ queue
    @property
    def active(self) -> int:
        """Rows in the running batch."""
        return len(self._rows)

    @property
    def decoding(self) -> str:
        """How the decode step runs: "eager", "compiled (regional)" or "compiled (whole)", or
        "eager (compiling failed)" after a compilation failed (see `compile_error`)."""
        if self._step is not None:
            return f"compiled ({compile_mode(self.compile)})"
        return "eager (compiling failed)" if self.compile_error is not None else "eager"

    @property
    def waiting(self) -> int:
        """Rows queued for admission."""
        return sum(len(r.rows) for r in self._queue)

    @property
    def idle(self) -> bool:
        """True when there is nothing to decode and nothing queued."""
        return not self._rows and not self._queue

    def add(
        self, prompt: list[int], gen: GenerationConfig, logprobs: int | None = None
    ) -> list[int]:
        """Queue one prompt with its own settings; returns the ids of its
        `gen.num_return_sequences` rows. `logprobs` = k asks for each token's logprob and the
        k most likely alternatives (0: the chosen token's only)."""
        if gen.num_beams > 1:
            raise GenerationError(
                "continuous batching samples or decodes greedily; set num_beams=1."
            )
        if logprobs is not None and logprobs < 0:
            raise GenerationError(f"logprobs must be >= 0, got {logprobs}.")
        (ids,) = as_prompts([list(prompt)], self.model.cfg.vocab_size)
        check_fits(self.model.cfg, len(ids), gen.max_new_tokens)
        stop_strings(gen, self.tokenizer)  # fails early when stop strings lack a tokenizer
        rows = [next(self._ids) for _ in range(gen.num_return_sequences)]
        self._queue.append(_Request(ids, gen, logprobs, rows))
        return rows

    def cancel(self, row: int) -> None:
        """Drop a row before the next step (a queued request leaves with all its rows);
        unknown ids are ignored."""
        self._cancelled.add(row)

    # ------------------------------------------------------------------ step
    def step(self) -> list[RowEvent]:
        """Admit what fits, pick one token for every row, drop finished rows, decode the rest.

        Returns this step's events: first one with `error` set for each row of a request that
        failed (those rows have left the batch), then one per row that got a token or ended."""
        with torch.inference_mode():
            self._drop_cancelled()
            self._admit()
            events: list[RowEvent] = []
            if self._rows:
                tokens = self._select()  # (B,)
                events = self._record(tokens)
                self._history.add(tokens)
                keep = [
                    i
                    for i, r in enumerate(self._rows)
                    if r.finish_reason is None and not self._failing(r.request)
                ]
                if len(keep) < len(self._rows):
                    self._keep(keep)
                    tokens = tokens[torch.tensor(keep, dtype=torch.long, device=self.device)]
                if self._rows:
                    self._decode(tokens)
            return self._failure_events(events)

    # ------------------------------------------------------------------ failures
    def _fail(self, request: _Request, exc: Exception) -> None:
        """Mark `request` failed (its first error wins); its rows leave the batch."""
        if not self._failing(request):
            self._failed.append((request, exc))

    def _failing(self, request: _Request | None) -> bool:
        return any(request is r for r, _ in self._failed)

    def _drop_failed(self) -> None:
        keep = [i for i, r in enumerate(self._rows) if not self._failing(r.request)]
        if len(keep) < len(self._rows):
            self._keep(keep)

    def _failure_events(self, events: list[RowEvent]) -> list[RowEvent]:
        """One error event per row of each failed request, then the other rows' events."""
        if not self._failed:
            return events
        failed = [RowEvent(i, None, error=exc) for r, exc in self._failed for i in r.rows]
        gone = {e.row for e in failed}
        self._failed = []
        return failed + [e for e in events if e.row not in gone]

    def _drop_cancelled(self) -> None:
        if not self._cancelled:
            return
        for request in list(self._queue):
            if self._cancelled.intersection(request.rows):
                self._queue.remove(request)
        keep = [i for i, r in enumerate(self._rows) if r.id not in self._cancelled]
        if len(keep) < len(self._rows):
            self._keep(keep)
        self._cancelled.clear()

    def _admit(self) -> None:
        """Prefill the queued requests that fit (FIFO) and merge them into the batch; when
        that fails, admit them one by one so that only a request that fails alone fails."""
        batch: list[_Request] = []
        room = self.max_rows - len(self._rows)
        while self._queue:
            n = len(self._queue[0].rows)
            if n > room and (self._rows or batch):
                break
            batch.append(self._queue.popleft())
            room -= n
        if not batch:
            return
        try:
            self._admit_together(batch)
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            for request in batch:
                try:
                    self._admit_together([request])
                except Exception as alone:
                    self._fail(request, alone)

    def _admit_together(self, batch: list[_Request]) -> None:
        """Prefill `batch` (in groups of similar prompt lengths, see `length_groups`) and merge
        it; the batch is unchanged if this raises."""
        cfg = self.model.cfg
        groups = [[batch[i] for i in g] for g in length_groups([len(r.prompt) for r in batch])]
        batch = [r for group in groups for r in group]
        # into an empty batch a single group's prefill cache is the batch's cache: give it
        # room to decode; several groups (or a running batch) are merged into a new cache
        alone = not self._rows and len(groups) == 1
        room = max(r.gen.max_new_tokens for r in batch) if alone else 0
        pad_id = cfg.pad_id if cfg.pad_id is not None else 0
        caches, logits = [], []
        for group in groups:
            ids, mask = pad([r.prompt for r in group], pad_id, self.device, left=True)  # (b, P)
            cache = self.model.new_cache(len(group), ids.size(1) + room)
            group_logits = prefill(self.model, ids, mask, cache)  # (b, V)
            index = expand_index([len(r.rows) for r in group], self.device)
            cache.reorder(index)  # one prefill per prompt, copied for each of its samples
            caches.append(cache)
            logits.append(group_logits[index])
        history = TokenHistory([r.prompt for r in batch], cfg.vocab_size, self.device)
        history.select(expand_index([len(r.rows) for r in batch], self.device))
        new_rows = []
        for request in batch:
            request.generator = make_generator(request.gen.seed, self.device)
            eos = resolve_eos(self.model, request.gen)
            rows = make_rows(request.gen, eos, 1, self.tokenizer, request.generator, _Row)
            for row, row_id in zip(rows, request.rows, strict=True):
                row.id, row.request = row_id, request
            new_rows += rows
        self._merge(new_rows, caches, torch.cat(logits), history)

    def _merge(
        self, rows: list[_Row], caches: list[KVCache], logits: Tensor, history: TokenHistory
    ) -> None:
        """Append prefilled rows (their caches in row order); every cache is left-padded to the
        widest. Everything is built before anything is replaced, so a failure (memory) leaves
        the batch as it was."""
        if not self._rows and len(caches) == 1:
            self._rows, self._cache, self._logits, self._history = rows, caches[0], logits, history
            return
        everyone = self._rows + rows
        if self._rows:
            caches = [self._cache, *caches]
            logits = torch.cat([self._logits, logits])
            history = TokenHistory.merge([self._history, history])
        width = max(c.length for c in caches)
        capacity = width + max(r.left for r in everyone)
        merged = KVCache.concat(caches, capacity)
        self._rows, self._cache, self._logits, self._history = everyone, merged, logits, history

    def _keep(self, keep: list[int]) -> None:
        """Keep batch rows `keep`, then trim the columns that are padding in every row."""
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._cache = self._logits = self._history = None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self._cache.reorder(index)
        self._cache.trim_front(self._cache.padding_columns())
        self._logits = self._logits[index]
        self._history.select(index)

    def _decode(self, tokens: Tensor) -> None:
        """Feed every row its newest token; the logits of the next step replace the old.

        If the batched step raises, the batch is bisected: each half runs on its rows' slice
        of the cache (a view: the new keys/values land in place), a half that raises is split
        again, and a row that raises alone fails its request. The step writes only the next
        free slot, which a retry overwrites, so a failed try leaves nothing behind."""
        # room is enough: capacity was width + the largest budget left when rows were merged,
        # and a row is fed only while it has a token left to generate
        try:
            self._check_layout()
            self._logits = self.model.decode_step(tokens[:, None], self._cache, step=self._step)
            return
        except StepCompileError as exc:  # decode eagerly from now on
            self.compile_error, self._step = exc, None
            self._decode(tokens)
            return
        except Exception as exc:
            if len(self._rows) == 1:
                self._fail(self._rows[0].request, exc)
                self._drop_failed()
                return
        logits = torch.zeros_like(self._logits)
        pieces = [(0, len(self._rows) // 2), (len(self._rows) // 2, len(self._rows))]
        while pieces:
            lo, hi = pieces.pop()
            rows = slice(lo, hi)
            try:
                logits[rows] = self.model.step(tokens[rows, None], self._cache.step_view(rows))
            except Exception as exc:
                if hi - lo == 1:
                    self._fail(self._rows[lo].request, exc)
                else:
                    mid = (lo + hi) // 2
                    pieces += [(lo, mid), (mid, hi)]
        self._cache.stepped()
        self._logits = logits
        self._drop_failed()

    def _check_layout(self) -> None:
        """A compiled step skips its guards while the cache keeps its layout; rows admitted or
        dropped change it (rows, capacity, strides, storage), and the next call then checks
        the guards again (and compiles, once, what no graph serves)."""
        if self._step is None:
            return
        k = self._cache.ks[0]
        layout = (k.shape, k.stride(), k.storage_offset(), k.data_ptr())
        if layout != self._layout:
            self._step.new_generation()
            self._layout = layout

    def warm_up(self) -> None:
        """Compile the decode step before the first request: one step of two rows, then one
        of a single row (the graph for two rows and more, and the one for a single row), each
        on a two-token prompt's cache, outside the batch. Raises `StepCompileError` if
        compiling fails (later, a failed compilation drops the compiled step and the batch
        decodes eagerly, see `compile_error`)."""
        if self._step is None:
            return
        with torch.inference_mode():
            for rows in (2, 1):
                ids = torch.zeros(rows, 2, dtype=torch.long, device=self.device)
                cache = self.model.new_cache(rows, ids.size(1) + 2)
                logits = prefill(self.model, ids, torch.ones_like(ids), cache)
                self._step.new_generation()
                try:
                    self.model.decode_step(logits.argmax(-1)[:, None], cache, step=self._step)
                except StepCompileError as exc:
                    self.compile_error, self._step = exc, None
                    raise
        self._layout = None  # the batch's next step checks the guards again

    # ------------------------------------------------------------------ tokens
    def _select(self) -> Tensor:
        """One token per row: rows with equal settings are processed together; each request
        draws its noise from its own generator. Should that raise, each request is tried on
        its own, and one that fails alone fails (its slot holds token 0, never used)."""
        tokens = torch.zeros(len(self._rows), dtype=torch.long, device=self.device)
        try:
            self._select_rows(tokens, list(range(len(self._rows))))
        except Exception:
            for start, end in self._request_slices():
                try:
                    self._select_rows(tokens, list(range(start, end)))
                except Exception as exc:
                    self._fail(self._rows[start].request, exc)
        return tokens

    def _request_slices(self) -> list[tuple[int, int]]:
        """[start, end) of each request's rows in the batch (a request's rows are adjacent)."""
        slices, start = [], 0
        for i in range(1, len(self._rows) + 1):
            if i == len(self._rows) or self._rows[i].request is not self._rows[start].request:
                slices.append((start, i))
                start = i
        return slices

    def _select_rows(self, tokens: Tensor, chosen: list[int]) -> None:
        """Write the tokens of batch rows `chosen` into `tokens`."""
        logits, rows = self._logits, self._rows
        groups: dict[tuple, list[int]] = {}
        for i in chosen:
            groups.setdefault(_sampling_key(rows[i].request.gen), []).append(i)
        for indices in groups.values():
            gen = rows[indices[0]].request.gen
            index: Tensor | slice = slice(None)  # the whole batch: no gathers, no copies
            if len(indices) < len(rows):
                index = torch.tensor(indices, dtype=torch.long, device=self.device)
            penalized = self._history.penalize(logits[index], gen, index)  # (b, V)
            if gen.greedy:
                tokens[index] = penalized.argmax(-1)
                continue
            probs = next_token_probs(penalized, gen)  # (b, V)
            tokens[index] = (probs / self._noise([rows[i] for i in indices], probs)).argmax(-1)

    def _noise(self, rows: list[_Row], probs: Tensor) -> Tensor:
        """E ~ Exp(1) per row (see `sampling.sample`); a seeded request draws (n, V) per step
        from its own generator, as `generate` does. A request's rows are adjacent in the batch
        (admitted together, dropped without reordering), so each request is one slice."""
        parts, start = [], 0
        while start < len(rows):
            request, end = rows[start].request, start + 1
            while end < len(rows) and rows[end].request is request:
                end += 1
            if request.generator is None:
                parts.append(exp_noise(end - start, probs.size(1), None, self.device))
            else:
                drawn = exp_noise(len(request.rows), probs.size(1), request.generator, self.device)
                samples = [r.sample for r in rows[start:end]]
                parts.append(drawn if len(samples) == len(request.rows) else drawn[samples])
            start = end
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _record(self, tokens: Tensor) -> list[RowEvent]:
        """Append each row's token; finish rows at EOS, a stop string or their length. A row
        whose bookkeeping raises (its stop strings, its logprobs) fails its request."""
        wanted = [
            i
            for i, r in enumerate(self._rows)
            if r.request.logprobs is not None and not self._failing(r.request)
        ]
        try:
            logprob, top = self._logprobs(tokens, wanted)
        except Exception:
            logprob, top = {}, {}
            for start, end in self._request_slices():
                mine = [i for i in wanted if start <= i < end]
                try:
                    got = self._logprobs(tokens, mine) if mine else ({}, {})
                except Exception as exc:
                    self._fail(self._rows[start].request, exc)
                    continue
                logprob.update(got[0])
                top.update(got[1])
        events = []
        for i, (row, tok) in enumerate(zip(self._rows, tokens.tolist(), strict=True)):
            if self._failing(row.request):
                continue
            try:
                token = row.take(tok)
            except Exception as exc:
                self._fail(row.request, exc)
                continue
            events.append(RowEvent(row.id, token, row.finish_reason, logprob.get(i), top.get(i)))
        return events

    def _logprobs(
        self, tokens: Tensor, wanted: list[int]
    ) -> tuple[dict[int, float], dict[int, list]]:
        """log p of each chosen token and the top-k alternatives, for batch rows `wanted`;
        p is the model's raw softmax (before temperature, penalties and filters)."""
        if not wanted:
            return {}, {}
        index = torch.tensor(wanted, dtype=torch.long, device=self.device)
        logp = self._logits[index].float().log_softmax(-1)  # (b, V)
        chosen = logp.gather(1, tokens[index][:, None]).squeeze(1).tolist()
        k = min(max(self._rows[i].request.logprobs for i in wanted), logp.size(1))
        values, ids = logp.topk(k, dim=-1) if k else (logp[:, :0], index[:, None][:, :0])
        values, ids = values.tolist(), ids.tolist()
        top = {}
        for n, i in enumerate(wanted):
            want = self._rows[i].request.logprobs
            top[i] = list(zip(ids[n][:want], values[n][:want], strict=True))
        return dict(zip(wanted, chosen, strict=True)), top
