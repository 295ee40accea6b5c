"""Prompt tuning and prefix tuning: small trainable modules in front of a frozen model.

Prompt tuning (Lester et al.) learns n virtual-token embeddings P in R^{n x d} put in front of
the embedded input, [P; E(x)]. The `SoftPrompt` sits on `Transformer.prompt`:

- decoder: in front of the sequence; the virtual tokens go through the stack once and stay in
  the KV cache, so generation works as usual (`new_cache` reserves their n slots);
- encoder (BERT): in front of everything, [CLS] included, so [CLS] keeps position 0;
- encoder-decoder: in front of the encoder input; the decoder cross-attends to the real source
  positions, whose encodings the prompt has conditioned.

In every case the virtual tokens' rows are cut from the stack's output, so heads, labels and
losses see the original positions. They carry no absolute position embedding; real tokens keep
theirs (see `Transformer._prepend_prompt`).

Prefix tuning (Li & Liang) learns, for every self-attention layer l, keys and values
P_k^l, P_v^l in R^{H_kv x n x hd} that every query attends to: softmax(q [P_k; K]^T) [P_v; V].
The `Prefix` sits on `Stack.prefix` (every self-attention stack: encoder and decoder). Prefix keys
carry no position, real tokens keep theirs, and the KV cache holds real tokens only. Li & Liang
train P through an MLP, P = MLP(E) (`reparam_hidden`), for stability; `fold_prefix` then replaces
the MLP by its output. The plain parameterisation (the default) trains P directly, initialised
like Li & Liang's "real word" initialisation with the keys and values the frozen model computes
for n random vocabulary tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import AdapterError
from lmforge.models.transformer import Transformer
from lmforge.peft.base import check_absent, freeze_base, match_modules, peft_configs, register

INITS = ("vocab", "random")


@dataclass
class PromptConfig:
    """Prompt tuning.

    Attributes:
        n_tokens: virtual tokens.
        init: "vocab" (the embeddings of n random vocabulary tokens), "random" (Gaussian of
            the same scale), or a list of n token ids to start from (say, of a text prompt).
        modules_to_save: patterns of modules trained in full and saved too (a new head).
    """

    method: ClassVar[str] = "prompt"
    n_tokens: int = 20
    init: str | list[int] = "vocab"
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.modules_to_save = list(self.modules_to_save)
        _check_n(self.n_tokens)
        if isinstance(self.init, str) and self.init not in INITS:
            raise AdapterError(
                f"prompt init must be 'vocab', 'random' or a list of token ids, got '{self.init}'."
            )
        if not isinstance(self.init, str) and len(self.init) != self.n_tokens:
            raise AdapterError(
                f"prompt init has {len(self.init)} token ids but n_tokens={self.n_tokens}; "
                "give one id per virtual token."
            )


@dataclass
class PrefixConfig:
    """Prefix tuning.

    Attributes:
        n_tokens: prefix length n (keys/values per layer).
        reparam_hidden: None trains the prefixes directly; a width trains them through Li &
            Liang's MLP E (n x d) -> hidden -> n_layer * 2 * H_kv * hd (tanh).
        init: "vocab" (the frozen model's keys/values of n random tokens) or "random"
            (N(0, 0.02)); used by the plain parameterisation.
        stacks: "encoder" and/or "decoder"; empty = every stack of the model.
        modules_to_save: patterns of modules trained in full and saved too (a new head).
    """

    method: ClassVar[str] = "prefix"
    n_tokens: int = 20
    reparam_hidden: int | None = None
    init: str = "vocab"
    stacks: list[str] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stacks, self.modules_to_save = list(self.stacks), list(self.modules_to_save)
        _check_n(self.n_tokens)
        if self.init not in INITS:
            raise AdapterError(f"prefix init must be 'vocab' or 'random', got '{self.init}'.")
        if self.reparam_hidden is not None and self.reparam_hidden < 1:
            raise AdapterError(f"reparam_hidden must be at least 1, got {self.reparam_hidden}.")
        wrong = [s for s in self.stacks if s not in ("encoder", "decoder")]
        if wrong:
            raise AdapterError(f"prefix stack '{wrong[0]}' is not 'encoder' or 'decoder'.")


def _check_n(n: int) -> None:
    if n < 1:
        raise AdapterError(f"n_tokens must be at least 1, got {n}.")


def _check_model(model: nn.Module, what: str) -> Transformer:
    if not isinstance(model, Transformer):
        raise AdapterError(f"{what} needs an lmforge Transformer, got {type(model).__name__}.")
    return model


def _random_ids(model: Transformer, n: int, device: torch.device) -> Tensor:
    vocab = model.cfg.vocab_size
    ids = torch.randperm(vocab)[:n] if n <= vocab else torch.randint(0, vocab, (n,))
    return ids.to(device)


# ------------------------------------------------------------------ prompt tuning
class SoftPrompt(nn.Module):
    """[P; E(x)]: n trainable virtual-token embeddings P in R^{n x d} (`embedding`)."""

    def __init__(self, embedding: Tensor) -> None:
        super().__init__()
        self.n_tokens = embedding.size(0)
        self.embedding = nn.Parameter(embedding)  # (n, d)

    def adapter_parameter_names(self) -> list[str]:
        return ["embedding"]

    def forward(self, batch: int) -> Tensor:
        return self.embedding[None].expand(batch, -1, -1)  # (B, n, d)


@torch.no_grad()
def _token_embeddings(model: Transformer, ids: Tensor) -> Tensor:
    """(n,) ids -> (n, d) embeddings as the stack sees them (scaled, normalised), no position."""
    emb = model.embed
    x = emb.tok(ids) * emb.scale
    return emb.norm(x) if emb.norm is not None else x


def attach_prompt(model: nn.Module, cfg: PromptConfig, initialise: bool = True) -> Transformer:
    """Put a `SoftPrompt` on `model.prompt` (its values zero unless `initialise`)."""
    model = _check_model(model, "prompt tuning")
    check_absent(model, cfg.method)
    if cfg.modules_to_save:
        match_modules(model, cfg.modules_to_save, what="modules_to_save entry")
    weight = model.embed.tok.weight
    init = torch.zeros(cfg.n_tokens, model.cfg.d_model, dtype=weight.dtype, device=weight.device)
    if initialise:
        if isinstance(cfg.init, str):
            ids = _random_ids(model, cfg.n_tokens, weight.device)
        else:
            bad = [t for t in cfg.init if not 0 <= t < model.cfg.vocab_size]
            if bad:
                raise AdapterError(f"prompt init token id {bad[0]} is outside the vocabulary.")
            ids = torch.tensor(cfg.init, device=weight.device)
        init = _token_embeddings(model, ids)
        if cfg.init == "random":
            init = torch.randn_like(init) * init.float().std().to(init.dtype)
    register(model, cfg)
    model.prompt = SoftPrompt(init.detach().clone())
    freeze_base(model)
    return model


def apply_prompt_tuning(
    model: nn.Module,
    n_tokens: int = 20,
    init: str | list[int] = "vocab",
    modules_to_save: list[str] | tuple[str, ...] = (),
) -> Transformer:
    """Prompt tuning: train n virtual-token embeddings in front of the input, freeze the rest.

    Args:
        model: an lmforge `Transformer` (decoder, encoder or encoder-decoder).
        n_tokens: virtual tokens; init: "vocab", "random" or n token ids (see `PromptConfig`).
        modules_to_save: modules trained in full as well (the classifier of a new task).

    Returns:
        the same model, in place.
    """
    cfg = PromptConfig(n_tokens, init, list(modules_to_save))
    return attach_prompt(model, cfg)


# ------------------------------------------------------------------ prefix tuning
class Prefix(nn.Module):
    """Per-layer key/value prefixes P in R^{L x 2 x H_kv x n x hd} for one stack.

    plain:           P is the parameter `kv`;
    reparameterised: P = MLP(E), E in R^{n x d} (`embedding`), MLP = Linear -> tanh -> Linear.

    A stack whose blocks have different key/value head counts h_i (a structurally pruned model)
    stores P with H_kv = max_i h_i; block i reads its first h_i heads, P[i, :, :h_i].
    """

    def __init__(
        self,
        n_layer: int,
        n_kv_head: int | list[int],
        head_dim: int,
        n_tokens: int,
        d_model: int,
        reparam_hidden: int | None = None,
    ) -> None:
        super().__init__()
        heads = [n_kv_head] * n_layer if isinstance(n_kv_head, int) else list(n_kv_head)
        if len(heads) != n_layer:
            raise AdapterError(f"need one key/value head count per layer ({n_layer}), got {heads}.")
        self.layer_kv_heads = heads
        n_kv_head = max(heads)
        self.shape = (n_layer, 2, n_kv_head, n_tokens, head_dim)
        self.n_tokens = n_tokens
        if reparam_hidden is None:
            self.kv = nn.Parameter(torch.zeros(self.shape))
            self.embedding, self.mlp = None, None
        else:
            self.embedding = nn.Parameter(torch.randn(n_tokens, d_model))
            self.mlp = nn.Sequential(
                nn.Linear(d_model, reparam_hidden),
                nn.Tanh(),
                nn.Linear(reparam_hidden, n_layer * 2 * n_kv_head * head_dim),
            )
            self.kv = None

    def adapter_parameter_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters()]

    def prefixes(self) -> Tensor:
        """P, (L, 2, H_kv, n, hd)."""
        if self.mlp is None:
            return self.kv
        n_layer, _, heads, n, hd = self.shape
        out = self.mlp(self.embedding)  # (n, L * 2 * H_kv * hd)
        return out.view(n, n_layer, 2, heads, hd).permute(1, 2, 3, 0, 4)

    def forward(self, batch: int) -> list[tuple[Tensor, Tensor]]:
        """One (keys, values) pair per layer i, each (B, h_i, n, hd)."""
        p = self.prefixes()
        out = []
        for i, h in enumerate(self.layer_kv_heads):
            size = (batch, h, *self.shape[3:])
            out.append((p[i, 0, :h].expand(size), p[i, 1, :h].expand(size)))
        return out

    @torch.no_grad()
    def fold(self) -> None:
        """Replace the MLP by its output (Li & Liang keep only P after training)."""
        if self.mlp is not None:
            p = self.prefixes().detach().clone()
            self.embedding, self.mlp = None, None
            self.kv = nn.Parameter(p)


def _stacks(model: Transformer, cfg: PrefixConfig) -> list[str]:
    present = [s for s in ("encoder", "decoder") if hasattr(model, s)]
    wanted = cfg.stacks or present
    missing = [s for s in wanted if s not in present]
    if missing:
        raise AdapterError(
            f"this {model.cfg.arch} model has no {missing[0]} stack; choose from {present}."
        )
    return wanted


@torch.no_grad()
def real_kv(model: Transformer, stacks: list[str], ids: Tensor) -> dict[str, Tensor]:
    """Keys and values the model computes for the n tokens `ids` (at positions 0..n-1), as
    (L, 2, H_kv, n, hd) per stack: with these as its prefix a decoder sees `ids` as context.
    Blocks with fewer key/value heads than H_kv = the stack's most (a pruned model) are
    zero-padded."""
    cfg = model.cfg
    n = ids.numel()
    if cfg.pos in ("learned", "sinusoidal") and n > cfg.max_seq_len:
        raise AdapterError(
            f"n_tokens={n} is longer than the model's context of {cfg.max_seq_len}; use fewer."
        )
    ids = ids.reshape(1, n).to(model.embed.tok.weight.device)
    grabbed: dict[tuple[str, int, int], Tensor] = {}
    hooks = []
    for s in stacks:
        for i, block in enumerate(getattr(model, s).layers):
            for j, proj in enumerate((block.attn.k_proj, block.attn.v_proj)):

                def grab(module, args, out, key=(s, i, j)):
                    grabbed[key] = out[0, -n:].detach()  # (n, H_kv * hd), the real tokens

                hooks.append(proj.register_forward_hook(grab))
    was_training = model.training
    model.eval()
    try:
        if cfg.arch == "encoder-decoder":
            model(ids, decoder_input_ids=ids)
        else:
            model(ids)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = {}
    for s in stacks:
        heads = [block.attn.n_kv_head for block in getattr(model, s).layers]
        per = [
            F.pad(
                torch.stack([grabbed[(s, i, j)].view(n, h, cfg.head_dim) for j in (0, 1)]),
                (0, 0, 0, max(heads) - h),
            )
            for i, h in enumerate(heads)
        ]  # each (2, n, H_kv, hd)
        out[s] = torch.stack(per).transpose(2, 3).contiguous()  # (L, 2, H_kv, n, hd)
    return out


def attach_prefix(model: nn.Module, cfg: PrefixConfig, initialise: bool = True) -> Transformer:
    """Put a `Prefix` on each chosen stack (`stack.prefix`); values zero unless `initialise`."""
    model = _check_model(model, "prefix tuning")
    if cfg.modules_to_save:
        match_modules(model, cfg.modules_to_save, what="modules_to_save entry")
    stacks = _stacks(model, cfg)
    check_absent(model, cfg.method)
    weight = model.embed.tok.weight
    init = {}
    if initialise and cfg.init == "vocab" and cfg.reparam_hidden is None:
        init = real_kv(model, stacks, _random_ids(model, cfg.n_tokens, weight.device))
    mc = model.cfg
    register(model, cfg)
    for s in stacks:
        stack = getattr(model, s)
        prefix = Prefix(
            len(stack.layers),
            [block.attn.n_kv_head for block in stack.layers],
            mc.head_dim,
            cfg.n_tokens,
            mc.d_model,
            cfg.reparam_hidden,
        )
        if prefix.kv is not None and initialise:
            with torch.no_grad():
                prefix.kv.copy_(init[s] if s in init else 0.02 * torch.randn(prefix.shape))
        stack.prefix = prefix.to(device=weight.device, dtype=weight.dtype)
    freeze_base(model)
    return model


def apply_prefix_tuning(
    model: nn.Module,
    n_tokens: int = 20,
    reparam_hidden: int | None = None,
    init: str = "vocab",
    stacks: list[str] | tuple[str, ...] = (),
    modules_to_save: list[str] | tuple[str, ...] = (),
) -> Transformer:
    """Prefix tuning: train per-layer key/value prefixes of length n, freeze the rest.

    Args:
        model: an lmforge `Transformer` (decoder, encoder or encoder-decoder).
        n_tokens: prefix length; reparam_hidden, init, stacks: see `PrefixConfig`.
        modules_to_save: modules trained in full as well (the classifier of a new task).

    Returns:
        the same model, in place.
    """
    cfg = PrefixConfig(n_tokens, reparam_hidden, init, list(stacks), list(modules_to_save))
    return attach_prefix(model, cfg)


def fold_prefix(model: nn.Module) -> nn.Module:
    """After training through the MLP: keep only the prefixes it produces (plain `kv`)."""
    cfg = peft_configs(model).get("prefix")
    if cfg is None:
        raise AdapterError("this model has no prefix to fold; apply_prefix_tuning first.")
    for m in model.modules():
        if isinstance(m, Prefix):
            m.fold()
    cfg.reparam_hidden = None
    freeze_base(model)
    return model
