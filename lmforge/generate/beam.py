"""Beam search: keep the `num_beams` best partial sequences of each prompt.

Each step every beam b proposes every token v with score s_b + log p(v | beam b); the best
2 * num_beams candidates per prompt are scanned in order: an EOS candidate ranked within the top
num_beams closes a finished hypothesis, the others fill the next beams. The cache rows follow
their beams through `KVCache.reorder`. A hypothesis is ranked by

    score = sum(logprob) / len^length_penalty     (len counts the new tokens, EOS included)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lmforge.errors import GenerationError
from lmforge.generate.config import GenerationConfig
from lmforge.generate.core import GenerationOutput, decode_one_token, eval_mode, prefill
from lmforge.generate.inputs import as_prompts, check_model, model_device, resolve_eos, start
from lmforge.generate.rows import TokenHistory, expand_index
from lmforge.generate.static import step_function


class Finished:
    """The best `n` finished hypotheses of one prompt, as (score, tokens, ended_with_eos)."""

    def __init__(self, n: int, length_penalty: float) -> None:
        self.n, self.alpha = n, length_penalty
        self.items: list[tuple[float, list[int], bool]] = []

    def add(self, tokens: list[int], logprob_sum: float, length: int, eos: bool) -> None:
        if logprob_sum == -math.inf:
            return
        score = logprob_sum / length**self.alpha
        self.items.append((score, tokens, eos))
        self.items.sort(key=lambda item: -item[0])
        del self.items[self.n :]

    def is_done(self, best_running: float, length: int, max_length: int, early: bool) -> bool:
        """Full, and (early stopping, or no running beam can still beat the worst kept one).

        A running beam's sum only falls, so its best reachable score is sum / L^alpha at the
        longest L for alpha > 0 and at the current L for alpha <= 0.
        """
        if len(self.items) < self.n:
            return False
        if early or best_running == -math.inf:
            return True
        reach = max_length if self.alpha > 0 else length
        return self.items[-1][0] >= best_running / reach**self.alpha


def beam_search(
    model: nn.Module,
    input_ids: list[list[int]] | list[int] | torch.Tensor,
    gen: GenerationConfig,
    compile: bool | str = False,
    on_step: Callable[[int], None] | None = None,
) -> list[GenerationOutput]:
    """Beam search with `gen.num_beams` beams (1 is allowed and equals greedy decoding).

    `on_step(step)` is called before every decode step; an exception it raises ends the search
    (a server drops a request whose client left).

    Returns:
        The `gen.num_return_sequences` best hypotheses of each prompt, best first, prompt-major,
        with their `score`; EOS is not included in the tokens.
    """
    check_model(model)
    if gen.stop:
        raise GenerationError(
            "stop strings are not supported with beam search; drop stop or use num_beams=1."
        )
    prompts = as_prompts(input_ids, model.cfg.vocab_size)
    with eval_mode(model), torch.inference_mode():
        finished = _search(model, prompts, gen, compile, on_step)
    outputs = []
    for i, fin in enumerate(finished):
        for score, tokens, eos in fin.items[: gen.num_return_sequences]:
            reason = "stop" if eos else "length"
            outputs.append(GenerationOutput(tokens, None, reason, score, i))
    return outputs


def _search(
    model: nn.Module,
    prompts: list[list[int]],
    gen: GenerationConfig,
    compile: bool | str,
    on_step: Callable[[int], None] | None = None,
) -> list[Finished]:
    device = model_device(model)
    vocab, nb = model.cfg.vocab_size, gen.num_beams
    eos = resolve_eos(model, gen)
    pad_id = model.cfg.pad_id if model.cfg.pad_id is not None else 0
    step_fn = step_function(model, compile)

    begin = start(model, prompts, gen)
    batch = len(prompts)
    cache = model.new_cache(batch, begin.cache_len)
    logits = prefill(model, begin.ids, begin.mask, cache, begin.encoder)  # (B, V)
    index = expand_index([nb] * batch, device)  # each prompt -> nb beams
    logits = logits[index]
    cache.reorder(index)
    encoder = begin.encoder.select(index) if begin.encoder is not None else None
    history = None
    if gen.uses_penalties:
        history = TokenHistory(begin.history, vocab, device)
        history.select(index)

    scores = torch.full((batch, nb), -math.inf, device=device)
    scores[:, 0] = 0.0  # only the first copy of each prompt starts alive
    scores = scores.view(-1)  # (B * nb,)
    tokens = torch.zeros(batch * nb, 0, dtype=torch.long, device=device)
    finished = [Finished(nb, gen.length_penalty) for _ in range(batch)]
    done = [False] * batch
    width = min(2 * nb, nb * vocab)

    for step in range(gen.max_new_tokens):
        if on_step is not None:
            on_step(step)
        if history is not None:
            logits = history.penalize(logits, gen)
        logp = logits.log_softmax(-1)  # (B * nb, V)
        cand = (scores[:, None] + logp).view(batch, nb * vocab)
        top_scores, top_idx = cand.topk(width, dim=1)  # (B, 2 nb)
        top = zip(
            top_scores.tolist(),
            (top_idx // vocab).tolist(),
            (top_idx % vocab).tolist(),
            strict=True,
        )
        next_scores = [[-math.inf] * nb for _ in range(batch)]
        next_beam = [list(range(nb)) for _ in range(batch)]
        next_tok = [[pad_id] * nb for _ in range(batch)]
        for b, (row_scores, row_beams, row_toks) in enumerate(top):
            if done[b]:
                continue
            j = 0
            for rank, (s, beam, tok) in enumerate(
                zip(row_scores, row_beams, row_toks, strict=True)
            ):
                if tok == eos:
                    if rank < nb:
                        prefix = tokens[b * nb + beam].tolist()
                        finished[b].add(prefix, s, step + 1, eos=True)
                    continue
                next_scores[b][j], next_beam[b][j], next_tok[b][j] = s, beam, tok
                j += 1
                if j == nb:
                    break
            done[b] = finished[b].is_done(
                next_scores[b][0], step + 1, gen.max_new_tokens, gen.early_stopping
            )
        offsets = torch.arange(batch, device=device)[:, None] * nb
        beam_idx = (offsets + torch.tensor(next_beam, device=device)).view(-1)  # (B * nb,)
        new_tok = torch.tensor(next_tok, device=device).view(-1)
        tokens = torch.cat([tokens[beam_idx], new_tok[:, None]], dim=1)
        scores = torch.tensor(next_scores, device=device).view(-1)
        if all(done) or step == gen.max_new_tokens - 1:
            break
        cache.reorder(beam_idx)
        encoder = encoder.select(beam_idx) if encoder is not None else None
        if history is not None:
            history.select(beam_idx)
            history.add(new_tok)
        logits = decode_one_token(model, new_tok[:, None], cache, encoder, step_fn)

    for b in range(batch):
        if not done[b]:  # out of steps: the running beams compete with the finished ones
            for j in range(nb):
                row = b * nb + j
                finished[b].add(tokens[row].tolist(), scores[row].item(), tokens.size(1), False)
    return finished
