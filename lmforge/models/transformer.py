"""The one Transformer: embeddings, an encoder and/or decoder stack, and output heads.

Which parts exist is decided by `ModelConfig` alone:

    arch="decoder"          tokens -> Embeddings -> decoder Stack (causal) -> heads (lm | classify | tokens)
    arch="encoder"          tokens -> Embeddings -> encoder Stack          -> heads (mlm, nsp | classify | tokens)
    arch="encoder-decoder"  source -> Embeddings -> encoder Stack ----------.
                            target -> Embeddings -> decoder Stack (causal, cross-attends) -> lm head

The model returns logits; losses live in `lmforge.objectives`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.models.block import Stack
from lmforge.models.cache import CacheView, KVCache
from lmforge.models.heads import ModelOutput, build_heads
from lmforge.models.positions import sinusoidal_table


class Embeddings(nn.Module):
    """token embedding (* sqrt(d) if embed_scale) + absolute position + token type, then norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.scale = cfg.d_model**0.5 if cfg.embed_scale else 1.0
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.pos == "learned" else None
        if cfg.pos == "sinusoidal":
            self.register_buffer(
                "sinusoid", sinusoidal_table(cfg.max_seq_len, cfg.d_model), persistent=False
            )
        self.sinusoidal = cfg.pos == "sinusoidal"
        self.token_type = (
            nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        )
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.embed_norm else None

    def forward(
        self, input_ids: Tensor, position_ids: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        x = self.tok(input_ids)  # (B, T, d)
        if self.scale != 1.0:
            x = x * self.scale
        if self.pos is not None:
            x = x + self.pos(position_ids)
        elif self.sinusoidal:
            x = x + self.sinusoid[position_ids].to(x.dtype)
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type(token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        return x


def positions_from_mask(attention_mask: Tensor, t: int) -> Tensor:
    """Positions that skip left padding: cumsum(mask) - 1, for the last t steps; (B, t)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)[:, -t:]


class Transformer(nn.Module):
    """The config-driven Transformer core with its heads (see the module docstring)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embeddings(cfg)
        if cfg.arch in ("encoder", "encoder-decoder"):
            self.encoder = Stack(cfg, cfg.n_layer, causal=False)
        if cfg.arch == "decoder":
            self.decoder = Stack(cfg, cfg.n_layer, causal=True)
        elif cfg.arch == "encoder-decoder":
            self.decoder = Stack(cfg, cfg.n_decoder_layer, causal=True, cross=True)
        self.heads = build_heads(cfg, self.embed.tok)
        # prompt tuning (lmforge.peft): prompt(batch) -> (B, n, d) virtual-token embeddings
        self.prompt: nn.Module | None = None
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        """N(0, 0.02) weights, zero biases, unit norms; residual outputs scaled by
        1/sqrt(2 * n_layer) so the residual stream does not grow with depth."""
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                scale = 1.0
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    scale = (2 * self.cfg.n_layer) ** -0.5
                nn.init.normal_(p, 0.0, std * scale)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            elif "norm" in name and name.endswith("weight"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    def num_parameters(self, trainable_only: bool = False) -> int:
        params = {id(p): p for p in self.parameters() if p.requires_grad or not trainable_only}
        return sum(p.numel() for p in params.values())

    # ------------------------------------------------------------------ helpers
    def set_attention_backend(self, backend: str) -> None:
        """ "sdpa" (fused kernels) or "math" (explicit formula) for every attention layer."""
        for m in self.modules():
            if hasattr(m, "backend"):
                m.backend = backend

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, Stack):
                m.gradient_checkpointing = enabled

    def new_cache(
        self,
        batch: int,
        max_len: int,
        dtype=None,
        device=None,
        window: int | None = None,
        sinks: int = 0,
    ) -> KVCache:
        """A KV cache for `max_len` real tokens (plus the soft prompt's, which a decoder caches),
        or a rolling one that keeps the first `sinks` and the last `window` tokens (constant
        memory for any length; see `KVCache`)."""
        p = next(self.parameters())
        max_len += self._decoder_prompt_len()
        # each layer's own shape: pruned layers may keep fewer key/value heads
        stack = getattr(self, "decoder", None)
        layers = (
            None if stack is None else [(b.attn.n_kv_head, b.attn.head_dim) for b in stack.layers]
        )
        return KVCache.for_model(
            self.cfg, batch, max_len, dtype or p.dtype, device or p.device, window, sinks, layers
        )

    def _decoder_prompt_len(self) -> int:
        """Virtual tokens a soft prompt puts in the decoder stack (it is on the encoder of an
        encoder-decoder)."""
        return self.prompt.n_tokens if self.prompt is not None and self.cfg.arch == "decoder" else 0

    def _prepend_prompt(
        self, x: Tensor, attention_mask: Tensor | None, position_ids: Tensor, cached: int
    ) -> tuple[Tensor, Tensor | None, Tensor, int]:
        """Soft prompt (prompt tuning): [P; E(x)], P the n virtual-token embeddings.

        x: (B, T, d) embedded tokens (learned/sinusoidal positions already added at their real
        positions); cached: steps already in the KV cache. The virtual tokens go in front of a
        sequence's first chunk (cached == 0) and live in the cache after that. The mask gains n
        ones in front; the stack sees the virtual tokens at positions 0..n-1 and real tokens at
        position_ids + n, which RoPE, ALiBi and relative biases (functions of differences) cannot
        tell from position_ids. Returns (x, mask, stack positions, rows added to x).
        """
        if self.prompt is None:
            return x, attention_mask, position_ids, 0
        b, n = x.size(0), self.prompt.n_tokens
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(b, n), attention_mask], dim=1)
        position_ids = (position_ids + n).expand(b, -1)
        if cached > 0:
            return x, attention_mask, position_ids, 0
        virtual = self.prompt(b).to(x.dtype)  # (B, n, d)
        first = torch.arange(n, device=x.device).expand(b, n)
        return (
            torch.cat([virtual, x], dim=1),  # (B, n + T, d)
            attention_mask,
            torch.cat([first, position_ids], dim=1),
            n,
        )

    def _positions(self, input_ids: Tensor, attention_mask: Tensor | None, past: int) -> Tensor:
        t = input_ids.size(1)
        if attention_mask is not None and not bool(attention_mask.all()):
            return positions_from_mask(attention_mask, t)
        return torch.arange(past, past + t, device=input_ids.device)[None].expand(
            input_ids.size(0), t
        )

    def _check_length(self, n: int) -> None:
        if self.cfg.pos in ("learned", "sinusoidal") and n > self.cfg.max_seq_len:
            from lmforge.errors import GenerationError

            raise GenerationError(
                f"the input has {n} positions but the model allows at most "
                f"{self.cfg.max_seq_len}; shorten it or use a model with a longer context."
            )

    # ------------------------------------------------------------------ decoding
    def step(
        self,
        input_ids: Tensor,
        view: CacheView,
        encoder_hidden: Tensor | None = None,
        encoder_mask: Tensor | None = None,
        block_call=None,
    ) -> Tensor:
        """The decode step: (B, 1) newest tokens -> (B, V) float32 next-token logits.

        The same embeddings, blocks and head as `forward`, for one new token per row against
        a `CacheView` (tensors only: the cache slot, each row's position, the keep-vector of
        padding slots), so it has no host syncs and compiles as one graph. A soft prompt's
        virtual tokens sit in the cache at positions 0..n-1 and shift the real positions by n.
        encoder_hidden, encoder_mask: (B, S, d) and (B, S) of an encoder-decoder's source.
        block_call: how runs of consecutive blocks are run (`lmforge.models.block.call_blocks`
        or a compiled copy of it, see `Stack.step`).
        """
        n = self._decoder_prompt_len()
        pos = view.pos - n if n else view.pos  # (B, 1) real position of the new token
        x = self.embed(input_ids, pos)  # (B, 1, d)
        x = self.decoder.step(
            x, view, memory=encoder_hidden, memory_mask=encoder_mask, block_call=block_call
        )
        return self.heads(x, None).logits[:, -1].float()

    def decode_step(
        self,
        input_ids: Tensor,
        cache: KVCache,
        encoder_hidden: Tensor | None = None,
        encoder_mask: Tensor | None = None,
        step=None,
    ) -> Tensor:
        """`step` over `cache` (filled by a forward with the prompt), then the cache's host-side
        bookkeeping; `step` may be a compiled version of `Transformer.step` (see
        `lmforge.generate.static`). (B, 1) tokens -> (B, V) float32 logits."""
        view = cache.step_view()
        logits = (step or self.step)(input_ids, view, encoder_hidden, encoder_mask)
        cache.stepped()
        return logits

    # ------------------------------------------------------------------ forward
    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        need_weights: bool = False,
    ):
        """Run the encoder stack; (B, S) ids -> StackOutput with hidden (B, S, d).

        A soft prompt's virtual tokens take part in the stack but are cut from `hidden`, so
        heads (the pooled [CLS] included) and cross-attention see the original positions only.
        """
        self._check_length(input_ids.size(1))
        pos = self._positions(input_ids, attention_mask, 0)
        x = self.embed(input_ids, pos, token_type_ids)
        x, mask, pos, n = self._prepend_prompt(x, attention_mask, pos, 0)
        out = self.encoder(x, attention_mask=mask, position_ids=pos, need_weights=need_weights)
        if n:
            out.hidden = out.hidden[:, n:]
        return out

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        *,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        encoder_hidden: Tensor | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
        last_only: bool = False,
        lm_logits: bool = True,
    ) -> ModelOutput:
        """Args:
        input_ids: (B, T) token ids (the source, for an encoder-decoder).
        attention_mask: (B, past + T) 1 for tokens, 0 for padding (None = all tokens).
        token_type_ids: (B, T) segment ids (BERT).
        position_ids: (B, T) explicit positions (default: from the mask / the cache).
        decoder_input_ids, decoder_attention_mask: the target side of an encoder-decoder.
        encoder_hidden: a precomputed encoder output (skips the encoder while decoding).
        cache: a `KVCache` for incremental decoding (decoder stack only).
        need_weights: return attention weights (forces the explicit-math attention path).
        last_only: compute LM logits for the last position only (generation).
        lm_logits: False skips the LM head (`logits` is None; `hidden` is what it would
            multiply, before T5's tied-head scale), for a loss that applies the head in chunks.
        """
        cfg = self.cfg
        if cfg.arch == "encoder":
            out = self.encode(input_ids, attention_mask, token_type_ids, need_weights)
            return self.heads(out.hidden, attention_mask, attentions=out.attentions)
        if cfg.arch == "encoder-decoder":
            if encoder_hidden is None:
                encoder_hidden = self.encode(input_ids, attention_mask).hidden
            if decoder_input_ids is None:
                raise ValueError("an encoder-decoder forward needs decoder_input_ids.")
            memory_mask = attention_mask
            ids, mask = decoder_input_ids, decoder_attention_mask
        else:
            memory_mask = None
            ids, mask = input_ids, attention_mask
        cached = cache.seen if cache is not None else 0
        past = max(0, cached - self._decoder_prompt_len())  # real tokens before `ids`
        self._check_length(past + ids.size(1))
        if position_ids is None:
            position_ids = self._positions(ids, mask, past)
        x = self.embed(ids, position_ids, token_type_ids if cfg.arch == "decoder" else None)
        stack_mask, stack_pos, n = mask, position_ids, 0
        if cfg.arch == "decoder":
            x, stack_mask, stack_pos, n = self._prepend_prompt(x, mask, position_ids, cached)
        out = self.decoder(
            x,
            attention_mask=stack_mask,
            position_ids=stack_pos,
            memory=encoder_hidden,
            memory_mask=memory_mask,
            cache=cache,
            need_weights=need_weights,
        )
        # the soft prompt's rows are not outputs (no slice without one: FSDP warns on views)
        hidden = out.hidden[:, n:] if n else out.hidden
        hidden = hidden[:, -1:] if last_only else hidden
        result = self.heads(hidden, mask, attentions=out.attentions, lm_logits=lm_logits)
        result.encoder_hidden = encoder_hidden
        return result
