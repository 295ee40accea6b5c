"""Generation: logits processors, greedy/sampling/beam search, stop strings, streaming,
speculative decoding, continuous batching, over a preallocated KV cache (`prefill`, then the
model's one decode step, `decode_one_token` = `Transformer.decode_step`).

Example:
    >>> from lmforge.generate import GenerationConfig, generate
    >>> gen = GenerationConfig(max_new_tokens=20, temperature=0.8, top_p=0.95, seed=0)
    >>> new_tokens = generate(model, [[1, 2, 3], [4, 5]], gen)   # list of token lists
"""

from lmforge.generate.beam import beam_search
from lmforge.generate.config import GenerationConfig
from lmforge.generate.continuous import ContinuousBatcher, RowEvent
from lmforge.generate.core import (
    GenerationOutput,
    GenerationStats,
    decode_one_token,
    prefill,
    verify_tokens,
)
from lmforge.generate.engine import (
    SamplingRun,
    generate,
    generate_outputs,
    generate_text,
)
from lmforge.generate.processors import (
    frequency_penalty,
    min_p_filter,
    presence_penalty,
    process_logits,
    repetition_penalty,
    temperature_scale,
    top_k_filter,
    top_p_filter,
)
from lmforge.generate.rows import Row, TokenHistory
from lmforge.generate.sampling import make_generator, sample, select_next
from lmforge.generate.speculative import (
    SpeculativeStats,
    accept_draft,
    speculative_generate,
    speculative_outputs,
)
from lmforge.generate.stream import TextStream, stream, stream_ids

__all__ = [
    "ContinuousBatcher",
    "GenerationConfig",
    "GenerationOutput",
    "GenerationStats",
    "Row",
    "RowEvent",
    "SamplingRun",
    "SpeculativeStats",
    "TextStream",
    "TokenHistory",
    "accept_draft",
    "beam_search",
    "decode_one_token",
    "frequency_penalty",
    "generate",
    "generate_outputs",
    "generate_text",
    "make_generator",
    "min_p_filter",
    "prefill",
    "presence_penalty",
    "process_logits",
    "repetition_penalty",
    "sample",
    "select_next",
    "speculative_generate",
    "speculative_outputs",
    "stream",
    "stream_ids",
    "temperature_scale",
    "top_k_filter",
    "top_p_filter",
    "verify_tokens",
]
