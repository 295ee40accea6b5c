"""Output heads on top of the core: LM, MLM (BERT), NSP, sequence and token classification.

- lm:       logits = h W_E^T (tied) or h W_lm^T; T5 scales h by d_model^-0.5 before a tied head.
- mlm:      logits = LayerNorm(act(h W_t + b_t)) W_E^T + b   (BERT's transform + tied decoder)
- nsp:      logits = tanh(h_[CLS] W_p + b_p) W_nsp + b        (pooled first token -> IsNext/NotNext)
- classify: encoder: the pooled first token; decoder: the last non-padding token -> num_labels
- tokens:   one label distribution per token (NER with BIO tags)
- qa:       start/end logits per token, (B, T, 2) = h W_qa^T + b (BERT's extractive QA head;
            `heads.qa_outputs` as Hugging Face's `qa_outputs`)
- choice:   one score per input, the pooled first token (encoder) or the last non-padding token
            (decoder) -> 1; the objective takes softmax over an example's options
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.models.layers import ACTIVATIONS


@dataclass
class ModelOutput:
    """What a forward pass returns.

    Attributes:
        logits: the main head's logits: (B, T, vocab) for lm/mlm, (B, num_labels) for classify,
            (B, T, num_labels) for tokens, (B, T, 2) start/end for qa, (B, 1) for choice; None
            when the model has no head.
        hidden: last hidden states of the top stack (the decoder's for an encoder-decoder).
        nsp_logits: (B, 2) next-sentence logits when the model has an "nsp" head.
        encoder_hidden: encoder output of an encoder-decoder (reuse it while decoding).
        attentions: per-layer attention weights (B, H, T, T_k) when `need_weights=True`.
    """

    logits: Tensor | None
    hidden: Tensor
    nsp_logits: Tensor | None = None
    encoder_hidden: Tensor | None = None
    attentions: list[Tensor] | None = None


class MLMHead(nn.Module):
    def __init__(self, cfg: ModelConfig, tok: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = ACTIVATIONS[cfg.activation]
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.decoder.weight = tok.weight
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.norm(self.act(self.dense(h)))) + self.bias


class Pooler(nn.Module):
    """tanh(W h_0 + b) of the first token ([CLS])."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, h: Tensor) -> Tensor:
        return torch.tanh(self.dense(h[:, 0]))


def last_token(h: Tensor, attention_mask: Tensor | None) -> Tensor:
    """(B, T, d) -> (B, d): the hidden state of each row's last non-padding token."""
    if attention_mask is None:
        return h[:, -1]
    t = attention_mask.size(1)
    # index of the last 1 in each row, right or left padded alike
    idx = (attention_mask.long() * torch.arange(1, t + 1, device=h.device)).argmax(-1)
    return h[torch.arange(h.size(0), device=h.device), idx]


class Heads(nn.Module):
    def __init__(self, cfg: ModelConfig, tok: nn.Embedding) -> None:
        super().__init__()
        self.cfg = cfg
        names = set(cfg.heads)
        self.logit_scale = cfg.d_model**-0.5 if cfg.tie_embeddings and cfg.tied_logit_scale else 1.0
        if "lm" in names:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
            if cfg.tie_embeddings:
                self.lm_head.weight = tok.weight
        if "mlm" in names:
            self.mlm = MLMHead(cfg, tok)
        pooled = cfg.arch == "encoder" and bool(names & {"nsp", "classify", "choice"})
        if pooled:
            self.pooler = Pooler(cfg)
        if "nsp" in names:
            self.nsp = nn.Linear(cfg.d_model, 2)
        if "classify" in names or "tokens" in names:
            self.dropout = nn.Dropout(cfg.dropout)
            bias = cfg.arch == "encoder" or "tokens" in names
            self.classifier = nn.Linear(cfg.d_model, cfg.num_labels, bias=bias)
        if "qa" in names:
            self.qa_outputs = nn.Linear(cfg.d_model, 2)
        if "choice" in names:
            self.dropout = nn.Dropout(cfg.dropout)
            self.classifier = nn.Linear(cfg.d_model, 1)

    def forward(
        self, h: Tensor, attention_mask: Tensor | None, attentions=None, lm_logits: bool = True
    ):
        """The heads' outputs; `lm_logits=False` leaves the LM head out (logits None), for a
        loss that applies it itself (`lmforge.objectives.chunked`)."""
        names = self.cfg.heads
        logits = nsp = None
        if "lm" in names:
            if lm_logits:
                logits = self.lm_head(h * self.logit_scale if self.logit_scale != 1.0 else h)
        elif "mlm" in names:
            logits = self.mlm(h)
        elif "classify" in names or "choice" in names:
            if self.cfg.arch == "encoder":
                pooled = self.pooler(h)
            else:
                pooled = last_token(h, attention_mask)
            logits = self.classifier(self.dropout(pooled))
        elif "tokens" in names:
            logits = self.classifier(self.dropout(h))
        elif "qa" in names:
            logits = self.qa_outputs(h)  # (B, T, 2): start, end
        if "nsp" in names:
            nsp = self.nsp(self.pooler(h))
        return ModelOutput(logits=logits, hidden=h, nsp_logits=nsp, attentions=attentions)


def build_heads(cfg: ModelConfig, tok: nn.Embedding) -> Heads:
    return Heads(cfg, tok)
