"""Fill in masked tokens with a masked-language model (BERT's MLM head).

For each position m holding the mask token, the model gives P(w | context) = softmax(z_m)_w
over the vocabulary; the `top_k` most probable tokens are listed with their probabilities.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.errors import CheckpointError, ConfigError, TokenizerError
from lmforge.recipes.embed import encode_texts, max_tokens
from lmforge.recipes.finetuned import load_model_and_tokenizer
from lmforge.tokenizer import Tokenizer


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """How a predicted token reads on its own ("paris", "##ing", "Ġthe" -> "the")."""
    text = tokenizer.decode([token_id], skip_special_tokens=False).strip()
    return text or (tokenizer.id_to_token(token_id) or str(token_id))


@torch.inference_mode()
def fill_mask(model_dir: str | Path, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """The `top_k` predictions, with probabilities, for every mask token in `text`.

    Args:
        model_dir: an lmforge model dir with an "mlm" head (e.g. an imported BertForMaskedLM)
            and its tokenizer.
        text: text holding the tokenizer's mask token (for BERT "[MASK]") at least once.
        top_k: predictions per mask, most probable first.

    Returns:
        One list per mask token, in order of appearance, of (token, probability) pairs.
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}.")
    model, tokenizer = load_model_and_tokenizer(model_dir)
    if "mlm" not in model.cfg.heads:
        raise CheckpointError(
            f"the model in {model_dir} has no masked-language-model head (heads="
            f"{list(model.cfg.heads)}); fill-mask needs one, e.g. an imported BertForMaskedLM."
        )
    mask_token = tokenizer.roles.get("mask")
    if mask_token is None:
        raise TokenizerError(
            f"the tokenizer in {model_dir} has no mask token; set mask_token in "
            "tokenizer_config.json."
        )
    if mask_token not in text:
        raise ConfigError(
            f"the text has no {mask_token} token; write {mask_token} where a word is missing."
        )
    ids = encode_texts(tokenizer, [text], max_tokens(model, tokenizer))[0]
    positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_id]
    if not positions:
        raise ConfigError(
            f"every {mask_token} of the text lies past the model's limit of "
            f"{max_tokens(model, tokenizer)} tokens; shorten the text."
        )
    logits = model(torch.tensor([ids])).logits[0, positions]  # (n_masks, vocab)
    probs = logits.float().softmax(-1)
    top = probs.topk(min(top_k, probs.size(-1)), dim=-1)
    return [
        [(token_text(tokenizer, int(i)), float(p)) for p, i in zip(ps, idx, strict=True)]
        for ps, idx in zip(top.values, top.indices, strict=True)
    ]
