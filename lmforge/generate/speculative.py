"""Speculative decoding: a small draft model proposes k tokens, the target checks them at once.

One round, per row (Leviathan et al. 2023, Chen et al. 2023):

    draft:  d_1..d_k ~ q_1..q_k                      (k cheap steps)
    target: p_1..p_{k+1} from one forward over [last, d_1..d_k]
    accept d_j while u_j < p_j(d_j) / q_j(d_j), u_j ~ U(0, 1)
    first rejection at j: draw from norm(max(0, p_j - q_j)); all accepted: draw from p_{k+1}

The tokens come out distributed exactly as the target's alone; with temperature 0 p and q are
one-hot and the output equals the target's greedy output.

Rows of a batch accept different numbers of tokens. After each round the rejected cache slots
are dropped and every row is shifted so its tokens end at the same column (left padding
absorbs the difference); positions come from the mask, so shifting changes nothing the model
sees, and relative/ALiBi distances inside a row stay intact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.errors import GenerationError
from lmforge.generate.config import GenerationConfig
from lmforge.generate.core import GenerationOutput, eval_mode, verify_tokens
from lmforge.generate.engine import finish_texts
from lmforge.generate.inputs import (
    as_prompts,
    check_fits,
    check_model,
    model_device,
    pad,
    resolve_eos,
)
from lmforge.generate.rows import Row, expand_index, make_rows
from lmforge.generate.sampling import make_generator, next_token_probs, sample
from lmforge.models.cache import KVCache


@dataclass
class SpeculativeStats:
    """How well the draft guessed: accepted / proposed is the acceptance rate."""

    proposed: int = 0
    accepted: int = 0
    rounds: int = 0


def accept_draft(
    proposal: Tensor, q: Tensor, p: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The accept/reject rule: keep d_j with probability min(1, p_j(d_j) / q_j(d_j)).

    Args:
        proposal: (B, k) draft tokens d_1..d_k.
        q: (B, k, V) draft distributions they were drawn from.
        p: (B, k + 1, V) target distributions at the same positions plus one more.
        generator: random generator for the uniforms and the extra draw.

    Returns:
        (n, token): (B,) number of accepted draft tokens and (B,) the extra token, drawn from
        norm(max(0, p_{n+1} - q_{n+1})) after a rejection, or from p_{k+1} if all were accepted.
    """
    b, k = proposal.shape
    p_d = p[:, :k].gather(-1, proposal[..., None]).squeeze(-1)  # (B, k)
    q_d = q.gather(-1, proposal[..., None]).squeeze(-1)  # (B, k)
    u = torch.rand(b, k, generator=generator, device=p.device)
    accepted = u * q_d < p_d  # u < p / q without dividing by q
    n = accepted.long().cumprod(dim=1).sum(dim=1)  # (B,) accepted before the first rejection
    rows = torch.arange(b, device=p.device)
    p_n = p[rows, n]  # (B, V)
    q_n = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)[rows, n]  # q = 0 after the last draft
    residual = (p_n - q_n).clamp(min=0)
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_n)
    return n, sample(residual, generator)


def realign(caches: list[KVCache], mask: Tensor, ends: Tensor) -> Tensor:
    """Shift each row so its tokens (a block ending at column ends[i]) end at one column.

    Returns the new (B, width) mask, width = the longest row; caches are rewritten in place.
    """
    width = int(mask.sum(1).max())
    src = torch.arange(width, device=mask.device)[None] + (ends - width)[:, None]  # (B, width)
    valid = src >= 0
    src = src.clamp(min=0)
    new = mask.gather(1, src) * valid
    for cache in caches:
        cache.gather_time(src, new)
    return new


def _check(target: nn.Module, draft: nn.Module, gen: GenerationConfig, k: int) -> None:
    for model in (target, draft):
        check_model(model)
        if model.cfg.arch != "decoder":
            raise GenerationError(
                "speculative decoding needs decoder-only target and draft models."
            )
    if target.cfg.vocab_size != draft.cfg.vocab_size:
        raise GenerationError(
            f"the draft's vocabulary ({draft.cfg.vocab_size}) differs from the target's "
            f"({target.cfg.vocab_size}); use a draft trained with the same tokenizer."
        )
    if k < 1:
        raise GenerationError(f"k (draft tokens per round) must be at least 1, got {k}.")
    if gen.num_beams > 1 or gen.uses_penalties:
        raise GenerationError(
            "speculative decoding supports temperature, top_k, top_p and min_p only; "
            "set num_beams=1 and leave the repetition, presence and frequency penalties off."
        )


def speculative_outputs(
    target: nn.Module,
    draft: nn.Module,
    input_ids: list[list[int]] | list[int] | Tensor,
    gen: GenerationConfig | None = None,
    k: int = 4,
    tokenizer: Any = None,
    on_round: Callable[[list[Row], SpeculativeStats], None] | None = None,
) -> tuple[list[GenerationOutput], SpeculativeStats]:
    """Like `speculative_generate`, with finish reasons, text and acceptance statistics.

    `on_round(rows, stats)` is called after every round, once its accepted tokens are in the
    rows (prompt-major, as returned): a streaming caller hands out each row's new tokens; an
    exception it raises ends the decoding."""
    gen = gen or GenerationConfig()
    _check(target, draft, gen, k)
    prompts = as_prompts(input_ids, target.cfg.vocab_size)
    rows = make_rows(gen, resolve_eos(target, gen), len(prompts), tokenizer)
    stats = SpeculativeStats()
    with eval_mode(target), eval_mode(draft), torch.inference_mode():
        _speculate(target, draft, prompts, gen, k, rows, stats, on_round)
    outputs = [row.output() for row in rows]
    if tokenizer is not None:
        finish_texts(outputs, gen, tokenizer)
    return outputs, stats


def speculative_generate(
    target: nn.Module,
    draft: nn.Module,
    input_ids: list[list[int]] | list[int] | Tensor,
    gen: GenerationConfig | None = None,
    k: int = 4,
    tokenizer: Any = None,
) -> list[list[int]]:
    """Generate with `target`, `draft` proposing k tokens per round; same outputs as `generate`
    (greedy: identical tokens; sampling: the same distribution), prompt-major, EOS excluded."""
    return [o.tokens for o in speculative_outputs(target, draft, input_ids, gen, k, tokenizer)[0]]


def _speculate(
    target: nn.Module,
    draft: nn.Module,
    prompts: list[list[int]],
    gen: GenerationConfig,
    k: int,
    rows: list[Row],
    stats: SpeculativeStats,
    on_round: Callable[[list[Row], SpeculativeStats], None] | None = None,
) -> None:
    device = model_device(target)
    vocab, budget = target.cfg.vocab_size, gen.max_new_tokens
    longest = max(len(r) for r in prompts)
    check_fits(target.cfg, longest, budget)
    check_fits(draft.cfg, longest, budget)
    capacity = longest + budget
    pad_id = target.cfg.pad_id if target.cfg.pad_id is not None else 0
    ids, mask = pad(prompts, pad_id, device, left=True)  # (N, P)
    caches = [target.new_cache(len(prompts), capacity), draft.new_cache(len(prompts), capacity)]
    if longest > 1:  # the caches hold every token but the last one of each row
        for model, cache in zip((target, draft), caches, strict=True):
            model(ids[:, :-1], attention_mask=mask[:, :-1], cache=cache, last_only=True)
    index = expand_index([gen.num_return_sequences] * len(prompts), device)
    for cache in caches:  # one prefill per prompt, copied for each of its samples
        cache.reorder(index)
    last = ids[index, -1]
    live = list(range(len(rows)))
    generator = make_generator(gen.seed, device)
    while live:
        past = caches[0].length
        most_left = max(rows[r].left for r in live)
        kr = min(k, capacity - past - 1, most_left - 1)  # draft tokens this round
        proposal, q = _draft(draft, caches[1], last, kr, gen, generator)
        fed = torch.cat([last[:, None], proposal], dim=1)  # (N, kr + 1)
        mask = caches[0].mask()
        full = torch.cat([mask, mask.new_ones(mask.size(0), kr + 1)], dim=1)
        logits = verify_tokens(target, fed, full, caches[0])  # (N, kr + 1, V)
        p = next_token_probs(logits.view(-1, vocab), gen).view(len(live), kr + 1, vocab)
        n_acc, extra = accept_draft(proposal, q, p, generator)
        stats.rounds += 1
        stats.proposed += kr * len(live)
        stats.accepted += int(n_acc.sum())
        keep = []
        for i, (r, n, tok, drafted) in enumerate(
            zip(live, n_acc.tolist(), extra.tolist(), proposal.tolist(), strict=True)
        ):
            if not any(rows[r].push(t) for t in drafted[:n] + [tok]):
                keep.append(i)
        if on_round is not None:
            on_round(rows, stats)
        if not keep:
            break
        full[:, past:] = (torch.arange(kr + 1, device=device)[None] <= n_acc[:, None]).long()
        ends = past + n_acc + 1  # each row's tokens now end here
        if len(keep) < len(live):
            index = torch.tensor(keep, device=device)
            for cache in caches:
                cache.reorder(index)
            full, extra, ends = full[index], extra[index], ends[index]
            live = [live[i] for i in keep]
        realign(caches, full, ends)
        last = extra


def _draft(
    draft: nn.Module,
    cache: KVCache,
    last: Tensor,
    kr: int,
    gen: GenerationConfig,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Draw kr tokens from the draft; its cache ends up holding last, d_1..d_kr (kr + 1 steps).

    Returns ((N, kr) proposal, (N, kr, V) the draft distributions q).
    """
    tokens, dists = [], []
    x = last
    for _ in range(kr + 1):
        logits = draft.decode_step(x[:, None], cache)  # (N, V)
        if len(tokens) == kr:
            break  # the last call only writes d_kr into the cache
        q = next_token_probs(logits, gen)
        x = sample(q, generator)
        tokens.append(x)
        dists.append(q)
    n, vocab = last.size(0), draft.cfg.vocab_size
    if not tokens:
        return last.new_zeros(n, 0), torch.zeros(n, 0, vocab, device=last.device)
    return torch.stack(tokens, dim=1), torch.stack(dists, dim=1)
