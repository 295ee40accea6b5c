"""`GenerationConfig`: how to pick each next token and when to stop."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lmforge.errors import GenerationError

#: A temperature below this samples as temperature 0 (greedy), as vLLM does.
GREEDY_BELOW = 1e-5

_FLOATS = (
    "temperature",
    "top_p",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "length_penalty",
)


@dataclass
class GenerationConfig:
    """Decoding settings, validated on construction with one clear sentence per mistake.

    Attributes:
        max_new_tokens: the most tokens generated per returned sequence.
        temperature: logits / T before sampling; 0 (or below 1e-5) means greedy (argmax).
            Default 1.0.
        top_k: keep only the k most likely tokens (None = off).
        top_p: nucleus sampling, keep the smallest set with cumulative probability >= p (1 = off).
        min_p: keep tokens with probability >= min_p * the top probability (0 = off).
        repetition_penalty: CTRL penalty r on every token seen in the prompt or output (1 = off).
        presence_penalty: OpenAI alpha_p, subtracted once from every token already generated.
        frequency_penalty: OpenAI alpha_f, subtracted once per earlier occurrence in the output.
        num_return_sequences: outputs per prompt (returned consecutively, prompt-major).
        num_beams: beam search width (1 = sampling or greedy).
        length_penalty: beam score = sum(logprob) / len^length_penalty.
        early_stopping: beam search stops once `num_beams` hypotheses are finished, instead of
            searching on until no running beam can still beat the worst finished one.
        stop: strings that end a sequence; the text is cut before the first one found.
        seed: seed of the sampling generator (None = torch's global random state).
        eos_id: end-of-sequence id overriding the model's `cfg.eos_id`.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    num_return_sequences: int = 1
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = False
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    eos_id: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        self._validate()
        if self.temperature < GREEDY_BELOW:  # logits / 1e-300 overflow: this close to 0 is 0
            self.temperature = 0.0

    def _validate(self) -> None:
        def fail(msg: str) -> None:
            raise GenerationError(msg)

        for name in _FLOATS:
            value = getattr(self, name)
            if not math.isfinite(value):
                fail(f"{name} must be a finite number, got {value}.")
        if self.max_new_tokens < 1:
            fail(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        if self.temperature < 0:
            fail(f"temperature must be >= 0 (0 means greedy), got {self.temperature}.")
        if self.top_k is not None and self.top_k < 1:
            fail(f"top_k must be at least 1 (or None to turn it off), got {self.top_k}.")
        if not 0.0 < self.top_p <= 1.0:
            fail(f"top_p must be in (0, 1] (1 turns it off), got {self.top_p}.")
        if not 0.0 <= self.min_p <= 1.0:
            fail(f"min_p must be in [0, 1] (0 turns it off), got {self.min_p}.")
        if self.repetition_penalty <= 0:
            fail(f"repetition_penalty must be > 0 (1 turns it off), got {self.repetition_penalty}.")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                fail(f"{name} must be in [-2, 2] (0 turns it off), got {value}.")
        if self.num_return_sequences < 1:
            fail(f"num_return_sequences must be at least 1, got {self.num_return_sequences}.")
        if self.num_beams < 1:
            fail(f"num_beams must be at least 1, got {self.num_beams}.")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            fail(
                f"num_return_sequences={self.num_return_sequences} is more than "
                f"num_beams={self.num_beams}; beam search returns at most num_beams sequences."
            )
        if any(not isinstance(s, str) or not s for s in self.stop):
            fail("every stop string must be a non-empty string.")
        if self.eos_id is not None and self.eos_id < 0:
            fail(f"eos_id must be a token id >= 0, got {self.eos_id}.")

    @property
    def greedy(self) -> bool:
        """True when each step takes the argmax (temperature 0)."""
        return self.temperature == 0

    @property
    def uses_penalties(self) -> bool:
        """True when a repetition, presence or frequency penalty is on."""
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )
