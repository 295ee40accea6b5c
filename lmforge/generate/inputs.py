"""Turning prompts into the first decoder input: validation, padding, the encoder pass, limits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmforge.errors import GenerationError
from lmforge.generate.config import GenerationConfig


@dataclass
class EncoderState:
    """The source side of an encoder-decoder, computed once and reused every step."""

    source: Tensor  # (B, S) source ids
    mask: Tensor  # (B, S) 1 = token, 0 = padding
    hidden: Tensor  # (B, S, d_model) encoder output

    def select(self, index: Tensor) -> EncoderState:
        """Keep rows `index` (expanding for beams or samples, reordering beams)."""
        return EncoderState(self.source[index], self.mask[index], self.hidden[index])


@dataclass
class Start:
    """What decoding starts from: the first decoder input and how long the cache must be."""

    ids: Tensor  # (B, T) the prompt (decoder-only) or the start token (encoder-decoder)
    mask: Tensor  # (B, T) self-attention mask of `ids`
    encoder: EncoderState | None
    cache_len: int
    history: list[list[int]]  # tokens the repetition penalty counts as already seen


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_model(model: nn.Module) -> None:
    """Generation needs a causal stack with an LM head."""
    cfg = model.cfg
    if cfg.arch == "encoder" or "lm" not in cfg.heads:
        raise GenerationError(
            f"this model (arch='{cfg.arch}', heads={list(cfg.heads)}) has no causal LM head to "
            "generate with; use a decoder or encoder-decoder model with the 'lm' head."
        )


def as_prompts(input_ids: list[list[int]] | list[int] | Tensor, vocab_size: int) -> list[list[int]]:
    """Prompts as lists of ids; a (B, T) tensor is B unpadded prompts, a flat list is one."""
    if isinstance(input_ids, Tensor):
        if input_ids.dim() not in (1, 2):
            raise GenerationError(
                f"input_ids must be a (B, T) or (T,) tensor, got shape {tuple(input_ids.shape)}."
            )
        rows = input_ids.reshape(-1, input_ids.size(-1)).tolist()
    else:
        rows = list(input_ids)
        if rows and all(isinstance(t, int) for t in rows):
            rows = [rows]
    prompts = [[int(t) for t in p] for p in rows]
    if not prompts:
        raise GenerationError("no prompts were given; pass at least one list of token ids.")
    for i, p in enumerate(prompts):
        if not p:
            raise GenerationError(
                f"prompt {i} is empty; give it at least one token (for example the BOS token)."
            )
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise GenerationError(
                f"prompt {i} has token id {bad[0]} outside the vocabulary of {vocab_size}."
            )
    return prompts


def pad(
    prompts: list[list[int]], pad_id: int, device: torch.device, left: bool = True
) -> tuple[Tensor, Tensor]:
    """(B, T_max) ids and (B, T_max) mask, padded on the left (decoding) or right (encoders)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        span = slice(width - len(p), width) if left else slice(0, len(p))
        ids[row, span] = torch.tensor(p, dtype=torch.long)
        mask[row, span] = 1
    return ids.to(device), mask.to(device)


def bounded_positions(cfg) -> bool:
    """Learned and sinusoidal position tables end at cfg.max_seq_len."""
    return cfg.pos in ("learned", "sinusoidal")


def check_fits(cfg, prompt_len: int, max_new_tokens: int) -> None:
    """A decoder-only prompt plus its new tokens must fit a bounded context."""
    if bounded_positions(cfg) and prompt_len + max_new_tokens > cfg.max_seq_len:
        raise GenerationError(
            f"the prompt has {prompt_len} tokens and max_new_tokens={max_new_tokens}, together "
            f"more than the model's context of {cfg.max_seq_len}; shorten the prompt or ask "
            "for fewer tokens."
        )


def decoder_start_id(cfg) -> int:
    """The first decoder token of an encoder-decoder: decoder_start_id, else pad_id, else bos_id."""
    for value in (cfg.decoder_start_id, cfg.pad_id, cfg.bos_id):
        if value is not None:
            return value
    raise GenerationError(
        "the model config sets none of decoder_start_id, pad_id or bos_id, so the decoder has "
        "no start token; set decoder_start_id in the model config."
    )


def resolve_eos(model: nn.Module, gen: GenerationConfig) -> int | None:
    """gen.eos_id if set, else the model's cfg.eos_id (None: stop only at length or strings)."""
    eos = gen.eos_id if gen.eos_id is not None else model.cfg.eos_id
    if eos is not None and eos >= model.cfg.vocab_size:
        raise GenerationError(
            f"eos_id={eos} is outside the vocabulary of {model.cfg.vocab_size}; fix eos_id."
        )
    return eos


def start(model: nn.Module, prompts: list[list[int]], gen: GenerationConfig) -> Start:
    """Pad the prompts, run the encoder if there is one, and size the KV cache."""
    cfg = model.cfg
    device = model_device(model)
    pad_id = cfg.pad_id if cfg.pad_id is not None else 0
    if cfg.arch != "encoder-decoder":
        longest = max(len(p) for p in prompts)
        check_fits(cfg, longest, gen.max_new_tokens)
        ids, mask = pad(prompts, pad_id, device, left=True)
        return Start(ids, mask, None, longest + gen.max_new_tokens, prompts)
    longest = max(len(p) for p in prompts)
    if bounded_positions(cfg) and longest > cfg.max_seq_len:
        raise GenerationError(
            f"the source has {longest} tokens, more than the model's context of "
            f"{cfg.max_seq_len}; shorten the source."
        )
    if bounded_positions(cfg) and gen.max_new_tokens > cfg.max_seq_len:
        raise GenerationError(
            f"max_new_tokens={gen.max_new_tokens} is more than the decoder's context of "
            f"{cfg.max_seq_len}; ask for fewer tokens."
        )
    src, src_mask = pad(prompts, pad_id, device, left=False)
    hidden = model.encode(src, src_mask).hidden  # (B, S, d_model)
    first = decoder_start_id(cfg)
    ids = torch.full((len(prompts), 1), first, dtype=torch.long, device=device)
    encoder = EncoderState(src, src_mask, hidden)
    # the start token and max_new_tokens - 1 fed-back tokens, plus one spare slot: a decode
    # step's key/value views then never span the whole buffer (a view that does is contiguous,
    # a different memory layout to a compiled step, which would compile again)
    slots = gen.max_new_tokens + 1
    return Start(ids, torch.ones_like(ids), encoder, slots, [[first]] * len(prompts))
