"""Multimodal fusion (多模态融合): where image features meet text on the one core.

Four ways, chosen by `ModelConfig.fusion`; v are image features (B, N, d) from
`lmforge.models.vision.ImageEncoder`, x the text embeddings (B, T, d):

    early   one sequence of patch tokens and text tokens through the text stack:
                X = [x ; V_patches]  (encoder: text first, [CLS] pools both)
                X = [V_patches ; x]  (decoder: image first, so every text token sees it)
    late    each modality encoded alone, their pooled vectors combined (`LateFusion`):
                concat h = [t ; v],  sum h = t + v,  gated h = g * t + (1 - g) * v,
                g = sigmoid(W_g [t ; v] + b_g)
    cross   text states attend to the image features through the core's cross-attention
            blocks (`CrossFusion`): h <- h + CrossAttn(norm(h), V), then the MLP, per block
    prefix  image features projected into the language model's input space and put in front
            of the text (`PrefixProjector`, LLaVA style): P = W_2 GELU(W_1 v + b_1) + b_2,
            X = [P ; x]

`FusionModel` holds the text core (a `Transformer`), the image encoder and the fusion piece, and
serves three tasks picked by the config's heads: ("classify",) image classification with a text
prompt, () two-tower image-text retrieval (CLIP style, late fusion), ("lm",) captioning with
a decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.config import ModelConfig
from lmforge.models.block import Stack
from lmforge.models.heads import last_token
from lmforge.models.transformer import Transformer, positions_from_mask
from lmforge.models.vision import ImageEncoder, image_stack_config

TASKS = ("classify", "retrieve", "caption")


def fusion_task(cfg: ModelConfig) -> str:
    """The task a fusion model's heads select: classify, retrieve (no head) or caption (lm)."""
    if "lm" in cfg.heads:
        return "caption"
    if "classify" in cfg.heads:
        return "classify"
    if not cfg.heads:
        return "retrieve"
    raise ValueError(f"a fusion model takes heads (), ('classify',) or ('lm',); got {cfg.heads}.")


def check_fusion(cfg: ModelConfig) -> None:
    """One sentence for a fusion / task / architecture combination that does not exist."""
    from lmforge.errors import ConfigError

    task = fusion_task(cfg)
    if cfg.arch == "encoder-decoder":
        raise ConfigError("image fusion works on an encoder or a decoder text model, not on an "
                          "encoder-decoder; choose another base model.")  # fmt: skip
    if task == "caption" and cfg.arch != "decoder":
        raise ConfigError(
            "captioning needs a decoder (a causal LM) as its text model; pass a GPT/Llama model "
            "dir, or use --task image-classify / image-text with an encoder."
        )
    if task == "caption" and cfg.fusion == "late":
        raise ConfigError(
            "late fusion combines pooled vectors, which cannot condition each generated token; "
            "caption with --fusion early, cross or prefix."
        )
    if task == "retrieve" and cfg.fusion != "late":
        raise ConfigError(
            "image-text retrieval scores every image against every text with two separate "
            f"towers (late fusion, CLIP style); use --fusion late, not '{cfg.fusion}'."
        )


class LateFusion(nn.Module):
    """Combine pooled text t and image v vectors (B, d): concat [t ; v] (B, 2d), sum t + v, or
    gated g * t + (1 - g) * v with g = sigmoid(W_g [t ; v] + b_g), g in (0, 1)^d."""

    def __init__(self, d: int, combine: str) -> None:
        super().__init__()
        self.combine = combine
        self.out_dim = 2 * d if combine == "concat" else d
        self.gate = nn.Linear(2 * d, d) if combine == "gated" else None

    def forward(self, t: Tensor, v: Tensor) -> Tensor:
        if self.combine == "concat":
            return torch.cat([t, v], dim=-1)
        if self.combine == "sum":
            return t + v
        g = torch.sigmoid(self.gate(torch.cat([t, v], dim=-1)))
        return g * t + (1 - g) * v


class CrossFusion(nn.Module):
    """`n_fusion_layer` blocks of the core with cross-attention: each text state attends to the
    image features, h <- h + SelfAttn(norm(h)); h <- h + CrossAttn(norm(h), V); h <- h + MLP(.)
    (pre-norm shown; the text model's norm placement is kept). Causal for a decoder."""

    def __init__(self, cfg: ModelConfig, causal: bool) -> None:
        super().__init__()
        self.stack = Stack(image_stack_config(cfg), cfg.n_fusion_layer, causal=causal, cross=True)

    def forward(self, h: Tensor, attention_mask: Tensor | None, image: Tensor) -> Tensor:
        return self.stack(h, attention_mask=attention_mask, memory=image).hidden


class PrefixProjector(nn.Module):
    """P = W_2 GELU(W_1 v + b_1) + b_2: image features into the language model's embedding
    space (the two-layer MLP connector of LLaVA-1.5 / nanoVLM)."""

    def __init__(self, d_image: int, d_text: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_image, d_text)
        self.fc2 = nn.Linear(d_text, d_text)

    def forward(self, v: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(v)))


@dataclass
class FusionOutput:
    """logits: (B, num_labels) for classify, (B, T, vocab) for caption, None for retrieve;
    hidden: the text states after fusion (B, T, d); image_embeds / text_embeds: (B, proj_dim)
    projections of the two towers (retrieve)."""

    logits: Tensor | None
    hidden: Tensor
    image_embeds: Tensor | None = None
    text_embeds: Tensor | None = None


def text_config(cfg: ModelConfig) -> ModelConfig:
    """The text core's config: the model without its image fields, with an LM head only for
    captioning (the fusion model owns the classification and projection heads)."""
    heads = ("lm",) if fusion_task(cfg) == "caption" else ()
    return cfg.replace(image_size=None, fusion=None, heads=heads)


class FusionModel(nn.Module):
    """Text core + image encoder + one fusion piece (see the module docstring)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.image_size is None or cfg.fusion is None:
            raise ValueError("a FusionModel needs image_size and fusion in its config.")
        check_fusion(cfg)
        self.cfg = cfg
        self.task = fusion_task(cfg)
        d = cfg.d_model
        self.core = Transformer(text_config(cfg))
        # early fusion feeds raw patch tokens into the text stack: no image blocks of its own
        self.image = ImageEncoder(cfg, n_layer=0 if cfg.fusion == "early" else None)
        self.projector = PrefixProjector(d, d) if cfg.fusion == "prefix" else None
        causal = cfg.arch == "decoder"
        self.cross = CrossFusion(cfg, causal) if cfg.fusion == "cross" else None
        self.late = LateFusion(d, cfg.fusion_combine) if cfg.fusion == "late" else None
        if self.task == "classify":
            width = self.late.out_dim if self.late is not None else d
            self.classifier = nn.Linear(width, cfg.num_labels)
        if self.task == "retrieve":
            proj = cfg.proj_dim or d
            self.text_proj = nn.Linear(d, proj, bias=False)
            self.image_proj = nn.Linear(d, proj, bias=False)

    def num_parameters(self, trainable_only: bool = False) -> int:
        params = {id(p): p for p in self.parameters() if p.requires_grad or not trainable_only}
        return sum(p.numel() for p in params.values())

    def _pool(self, h: Tensor, attention_mask: Tensor) -> Tensor:
        """Encoder: the first ([CLS]) state; decoder: the last non-padding token's."""
        return h[:, 0] if self.cfg.arch == "encoder" else last_token(h, attention_mask)

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H, W) -> image features (B, N, d)."""
        return self.image(pixel_values)

    def _text(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids=None):
        """Embedded text (B, T, d), its positions (B, T) and the text stack."""
        core, t = self.core, input_ids.size(1)
        stack = core.encoder if self.cfg.arch == "encoder" else core.decoder
        pos = positions_from_mask(attention_mask, t)
        x = core.embed(input_ids, pos, token_type_ids if self.cfg.type_vocab_size else None)
        return x, pos, stack

    def embed_image(self, pixel_values: Tensor) -> Tensor:
        """Retrieval: the image tower, mean-pooled features projected, (B, proj_dim)."""
        return self.image_proj(self.encode_image(pixel_values).mean(dim=1))

    def embed_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Retrieval: the text tower, pooled states projected, (B, proj_dim)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x, pos, stack = self._text(input_ids, attention_mask)
        h = stack(x, attention_mask=attention_mask, position_ids=pos).hidden
        return self.text_proj(self._pool(h, attention_mask))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        pixel_values: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> FusionOutput:
        """input_ids (B, T) text, attention_mask (B, T) 1/0, pixel_values (B, C, H, W)."""
        if pixel_values is None:
            raise ValueError("an image-and-text model needs pixel_values (B, C, H, W).")
        cfg = self.cfg
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.task == "retrieve":  # two towers: neither sees the other
            text = self.embed_text(input_ids, attention_mask)
            return FusionOutput(None, text, self.embed_image(pixel_values), text)
        image = self.encode_image(pixel_values)  # (B, N, d)
        x, pos, stack = self._text(input_ids, attention_mask, token_type_ids)
        if cfg.fusion in ("early", "prefix"):
            v = image if self.projector is None else self.projector(image)
            n = v.size(1)
            ones = attention_mask.new_ones(b, n)
            v_pos = torch.arange(n, device=x.device).expand(b, n)
            if cfg.arch == "decoder":  # image first: every text token (causally) sees it
                seq = torch.cat([v.to(x.dtype), x], dim=1)
                mask = torch.cat([ones, attention_mask], dim=1)
                seq_pos = torch.cat([v_pos, pos + n], dim=1)
                h = stack(seq, attention_mask=mask, position_ids=seq_pos).hidden[:, n:]
            else:  # text first: [CLS] stays the pooled position
                seq = torch.cat([x, v.to(x.dtype)], dim=1)
                mask = torch.cat([attention_mask, ones], dim=1)
                seq_pos = torch.cat([pos, v_pos + t], dim=1)
                h = stack(seq, attention_mask=mask, position_ids=seq_pos).hidden[:, :t]
        else:
            h = stack(x, attention_mask=attention_mask, position_ids=pos).hidden
            if self.cross is not None:
                h = self.cross(h, attention_mask, image)
        if self.task == "caption":
            return FusionOutput(self.core.heads(h, attention_mask).logits, h)
        pooled_text = self._pool(h, attention_mask)
        if self.late is not None:
            pooled_text = self.late(pooled_text, image.mean(dim=1))
        return FusionOutput(self.classifier(pooled_text), h)

    @torch.no_grad()
    def caption(
        self,
        pixel_values: Tensor,
        prompt_ids: list[int],
        eos_id: int | None,
        max_new_tokens: int = 16,
    ) -> list[list[int]]:
        """Greedy captions: argmax_w P(w | image, prompt, words so far) until EOS; one id list
        per image (the prompt and EOS left out). Short captions, so each step reruns the
        forward (no KV cache)."""
        if self.task != "caption":
            raise ValueError("caption() needs a model built for captioning (an 'lm' head).")
        b = pixel_values.size(0)
        ids = torch.tensor([prompt_ids] * b, device=pixel_values.device)
        done = torch.zeros(b, dtype=torch.bool, device=ids.device)
        out: list[list[int]] = [[] for _ in range(b)]
        for _ in range(max_new_tokens):
            logits = self(ids, pixel_values=pixel_values).logits[:, -1]
            nxt = logits.argmax(-1)
            for i, tok in enumerate(nxt.tolist()):
                if not done[i] and tok != eos_id:
                    out[i].append(tok)
            done |= nxt == eos_id if eos_id is not None else torch.zeros_like(done)
            if bool(done.all()):
                break
            ids = torch.cat([ids, nxt[:, None]], dim=1)
        return out
