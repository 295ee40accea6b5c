"""Shared helpers of the generation tests: tiny models, reference loops, fake tokenizers."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.config import ModelConfig
from lmforge.models import KVCache, ModelOutput, Transformer


def tiny(preset: str, seed: int = 0, **overrides) -> Transformer:
    """A random-initialised tiny model in eval mode."""
    torch.manual_seed(seed)
    return Transformer(ModelConfig.from_preset(preset, **overrides)).eval()


@torch.no_grad()
def greedy_reference(model, prompt: list[int], n: int, eos: int | None = None) -> list[int]:
    """Greedy decoding the slow way: the full forward over the whole sequence every step."""
    ids, out = list(prompt), []
    for _ in range(n):
        token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        if token == eos:
            break
        out.append(token)
        ids.append(token)
    return out


@torch.no_grad()
def seq2seq_reference(model, source: list[int], start: int, n: int) -> list[int]:
    """Encoder-decoder greedy decoding without a cache: re-run the decoder on all targets."""
    target = [start]
    for _ in range(n):
        out = model(torch.tensor([source]), decoder_input_ids=torch.tensor([target]))
        target.append(int(out.logits[0, -1].argmax()))
    return target[1:]


@torch.no_grad()
def sequence_logprob(model, prompt: list[int], tokens: list[int]) -> float:
    """sum_i log p(tokens_i | prompt, tokens_<i) from one full forward."""
    logp = model(torch.tensor([prompt + tokens])).logits[0].float().log_softmax(-1)
    return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(tokens))


def chi2_critical(df: int, z: float = 3.719) -> float:
    """Wilson-Hilferty upper quantile of chi^2_df; z = 3.719 is the 1e-4 normal tail."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2_statistic(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's chi^2 of observed counts against probs; cells expecting < 5 are pooled."""
    total = float(counts.sum())
    expected = probs.double() * total
    big = expected >= 5
    obs = torch.cat([counts.double()[big], counts.double()[~big].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    return stat, int(keep.sum()) - 1


class ByteTokenizer:
    """Byte-level stand-in: ids 0..255 are bytes, 256 is EOS (a special token)."""

    eos_id, bos_id, pad_id = 256, None, None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class CharTokenizer:
    """Every id is one printable ASCII character (for random models: no partial characters)."""

    eos_id = bos_id = pad_id = None

    def encode(self, text: str) -> list[int]:
        return [ord(c) - 32 for c in text]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(32 + i % 95) for i in ids)


class ScriptedLM(nn.Module):
    """A stand-in decoder that, after a prompt of `prompt_len` tokens, emits `script`."""

    def __init__(self, script: list[int], prompt_len: int, eos_id: int | None = None) -> None:
        super().__init__()
        self.cfg = ModelConfig.from_preset("gpt-tiny", eos_id=eos_id)
        self.script, self.prompt_len = script, prompt_len
        self.dummy = nn.Parameter(torch.zeros(1))

    def new_cache(self, batch: int, max_len: int, dtype=None, device=None) -> KVCache:
        return KVCache(1, batch, 1, 1, max_len)

    def _logits(self, batch: int, step: int) -> torch.Tensor:
        token = self.script[min(step, len(self.script) - 1)]
        logits = torch.zeros(batch, 1, self.cfg.vocab_size)
        logits[:, :, token] = 10.0
        return logits

    def forward(self, input_ids, attention_mask=None, cache=None, last_only=False, **_):
        logits = self._logits(input_ids.size(0), int(attention_mask[0].sum()) - self.prompt_len)
        return ModelOutput(logits=logits, hidden=logits)

    def decode_step(self, input_ids, cache, *_, **__):
        """The decode step: the prefill left the cache empty, so its length counts the steps."""
        cache.length += 1
        return self._logits(input_ids.size(0), cache.length)[:, -1]
