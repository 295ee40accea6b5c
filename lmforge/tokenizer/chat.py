"""Chat templates: turn a list of messages into the prompt text a model continues.

A tokenizer's own ``chat_template`` (a Jinja string, Hugging Face style, from
``tokenizer_config.json`` or ``chat_template.jinja``) is used when it has one. It is rendered in
a sandbox with ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token`` and
``raise_exception``, as ``transformers`` renders it.

Otherwise the documented default, :data:`DEFAULT_CHAT_TEMPLATE`, is used: the BOS token (when
the tokenizer has one), then one block per message and an open assistant block::

    <|bos|><|system|>
    You are terse.
    <|user|>
    Hi!
    <|assistant|>

The role markers are plain text (a base model sees them as ordinary characters), so a reply
is also ended by the stop strings :data:`DEFAULT_CHAT_STOPS`: the model starting the next turn.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from lmforge.errors import TokenizerError

#: The template used when a tokenizer has no ``chat_template``.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token or '' }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

#: Stop strings that end a reply under the default template (the next turn beginning).
DEFAULT_CHAT_STOPS = ("<|user|>", "<|system|>")

Message = dict[str, Any]


def uses_default_template(tokenizer: Any) -> bool:
    """True when the tokenizer has no chat template of its own."""
    return not getattr(tokenizer, "chat_template", None)


def chat_stops(tokenizer: Any) -> list[str]:
    """Stop strings a chat reply needs besides EOS: the default template's turn markers."""
    return list(DEFAULT_CHAT_STOPS) if uses_default_template(tokenizer) else []


def render_chat(tokenizer: Any, messages: list[Message], add_generation_prompt: bool = True) -> str:
    """The prompt text of ``messages`` (dicts with ``role`` and ``content``) under the
    tokenizer's chat template, or :data:`DEFAULT_CHAT_TEMPLATE` when it has none."""
    template = getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
    roles = getattr(tokenizer, "roles", {}) or {}
    compiled = _compile(template)
    try:
        return compiled.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=roles.get("bos", ""),
            eos_token=roles.get("eos", ""),
            pad_token=roles.get("pad", ""),
            unk_token=roles.get("unk", ""),
        )
    except TokenizerError:
        raise
    except Exception as exc:  # a template bug surfaces as any Jinja or Python error
        raise TokenizerError(
            f"the chat template failed on these messages ({type(exc).__name__}: {exc}); "
            "fix the template in tokenizer_config.json or the messages."
        ) from exc


def encode_chat(tokenizer: Any, messages: list[Message]) -> list[int]:
    """Token ids of the rendered chat prompt (special-token strings become their ids)."""
    ids = list(tokenizer.encode(render_chat(tokenizer, messages)))
    if not ids:
        raise TokenizerError("the chat prompt is empty; send at least one message with text.")
    return ids


def _raise_exception(message: str) -> None:
    raise TokenizerError(f"the chat template rejected the messages: {message}")


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(template)
    except TemplateError as exc:
        raise TokenizerError(
            f"the chat template is not valid Jinja ({exc}); fix chat_template in "
            "tokenizer_config.json."
        ) from exc
