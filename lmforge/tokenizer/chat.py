"""Chat templates: turn a list of messages into the prompt text a model continues.

A tokenizer's own ``chat_template`` (a Jinja string, Hugging Face style, from
``tokenizer_config.json`` or ``chat_template.jinja``) is used when it has one. It is rendered in
a sandbox with ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token`` and
``raise_exception``, as ``transformers`` renders it.

A template is code from a file, so it runs under a budget (:class:`RenderBudget`): every loop
iteration, call and operator is a step; past ``max_steps`` steps, ``max_seconds`` seconds or
``max_chars`` characters in any value or in the output, rendering stops with a
:class:`~lmforge.errors.TokenizerError`. Operations that would build a value past the size limit
in one go (``'a' * 10**9``, ``s|center(10**9)``, ``s|replace('', s)``) are refused before they run.

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

import math
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache, wraps
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


@dataclass(frozen=True)
class RenderBudget:
    """What rendering one chat prompt may cost.

    Args:
        max_steps: loop iterations, calls and operators, together.
        max_seconds: wall-clock time.
        max_chars: the longest string (or list) any step may build, and the longest output.
    """

    max_steps: int = 1_000_000
    max_seconds: float = 2.0
    max_chars: int = 8_000_000


class _Meter:
    """The budget of the render running on this thread."""

    def __init__(self, budget: RenderBudget) -> None:
        self.budget, self.steps = budget, 0
        self.deadline = time.monotonic() + budget.max_seconds

    def step(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > self.budget.max_steps:
            raise _over(f"more than {self.budget.max_steps} steps")
        if time.monotonic() > self.deadline:
            raise _over(f"more than {self.budget.max_seconds:g} s")
        if self.steps % 512 < n:
            time.sleep(0)  # hand the GIL over: a server's event loop shares this process

    def size(self, n: int, what: str = "a value") -> None:
        if n > self.budget.max_chars:
            raise _over(f"{what} of {n} characters (the limit is {self.budget.max_chars})")


_local = threading.local()


def _meter() -> _Meter:
    meter = getattr(_local, "meter", None)
    if meter is None:  # rendering outside render_chat (a compiled template used directly)
        meter = _local.meter = _Meter(RenderBudget())
    return meter


def _over(what: str) -> TokenizerError:
    return TokenizerError(
        f"the chat template needs {what} to render these messages; fix the template in "
        "tokenizer_config.json (or the GGUF's tokenizer.chat_template) or send shorter messages."
    )


def _sized(value: Any) -> Any:
    """Charge a step (more for a large value); refuse a value past the size limit."""
    meter = _meter()
    length = _length(value)
    meter.size(length)
    meter.step(1 + length // 256)  # work in proportion to the data touched
    return value


def render_chat(
    tokenizer: Any,
    messages: list[Message],
    add_generation_prompt: bool = True,
    budget: RenderBudget | None = None,
) -> str:
    """The prompt text of ``messages`` (dicts with ``role`` and ``content``) under the
    tokenizer's chat template, or :data:`DEFAULT_CHAT_TEMPLATE` when it has none, within
    ``budget`` (default :class:`RenderBudget`)."""
    template = getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
    roles = getattr(tokenizer, "roles", {}) or {}
    compiled = _compile(template)
    meter = _local.meter = _Meter(budget or RenderBudget())
    try:
        out, length = [], 0
        for chunk in compiled.generate(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=roles.get("bos", ""),
            eos_token=roles.get("eos", ""),
            pad_token=roles.get("pad", ""),
            unk_token=roles.get("unk", ""),
        ):
            length += len(chunk)
            meter.size(length, "an output")
            meter.step()
            out.append(chunk)
        return "".join(out)
    except TokenizerError:
        raise
    except (RecursionError, MemoryError) as exc:
        raise _over(f"too much recursion or memory ({type(exc).__name__})") from None
    except Exception as exc:  # a template bug surfaces as any Jinja or Python error
        raise TokenizerError(
            f"the chat template failed on these messages ({type(exc).__name__}: {exc}); "
            "fix the template in tokenizer_config.json or the messages."
        ) from exc
    finally:
        _local.meter = None


def encode_chat(tokenizer: Any, messages: list[Message], rendered: str | None = None) -> list[int]:
    """Token ids of the rendered chat prompt (special-token strings become their ids);
    `rendered` is the prompt text when the caller has rendered it already."""
    text = rendered if rendered is not None else render_chat(tokenizer, messages)
    ids = list(tokenizer.encode(text))
    if not ids:
        raise TokenizerError("the chat prompt is empty; send at least one message with text.")
    return ids


def _raise_exception(message: str) -> None:
    raise TokenizerError(f"the chat template rejected the messages: {message}")


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict) else 0


def _check_args(args: Iterable[Any], kwargs: dict[str, Any]) -> None:
    """Refuse a width or count past the size limit (``center(10**9)``, ``zfill``, ``indent``)."""
    limit = _meter().budget.max_chars
    for value in (*args, *kwargs.values()):
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value) or abs(value) > limit:
                raise _over(f"an argument of {value}")


def _predict(op: str, left: Any, right: Any) -> int:
    """The size of ``left op right`` before it is built (0 when it is not a sequence)."""
    if op == "*":
        if isinstance(left, int) and not isinstance(left, bool):
            left, right = right, left
        if _length(left) and isinstance(right, int):
            return _length(left) * max(right, 0)
    elif op == "+":
        return _length(left) + _length(right)
    elif op == "%" and isinstance(left, str):
        _check_widths(left)
        return len(left) + sum(map(_length, right if isinstance(right, tuple) else (right,)))
    elif op == "**" and isinstance(right, int | float) and abs(right) > 1024:
        return math.inf
    return 0


def _check_widths(fmt: str) -> None:
    """Refuse a format string with a field width past the size limit ('%999999999d')."""
    import re

    for digits in re.findall(r"\d{7,}", fmt):
        _check_args([int(digits)], {})


def _counted(iterable: Any) -> Iterator[Any]:
    """Every item a template loop takes is one step."""
    meter = _meter()
    for item in iterable:
        meter.step()
        yield item


def _guard_filter(name: str, fn: Any) -> Any:
    from jinja2.utils import _PassArg

    skip = 1 if _PassArg.from_obj(fn) is None else 2  # (context,) value, then the arguments

    @wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        value, rest = (args[skip - 1], args[skip:]) if len(args) >= skip else (None, ())
        _check_args(rest, kwargs)
        if name == "replace" and len(rest) >= 2:
            _check_replace(value, rest[0], rest[1])
        elif name == "join":
            _check_join(value, rest[0] if rest else kwargs.get("d", ""))
        elif name == "format" and isinstance(value, str):
            _check_widths(value)
        return _sized(fn(*args, **kwargs))

    return guarded


def _check_replace(text: Any, old: Any, new: Any) -> None:
    """Refuse ``text.replace(old, new)`` whose result would pass the size limit."""
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        count = len(text) + 1 if not old else text.count(old)
        _meter().size(len(text) + count * max(len(new) - len(old), 0))


def _check_join(items: Any, sep: Any) -> None:
    """Refuse ``sep.join(items)`` whose result would pass the size limit."""
    if hasattr(items, "__len__") and isinstance(sep, str):
        known = sum(map(_length, items)) if isinstance(items, list | tuple) else 0
        _meter().size(known + len(sep) * len(items))


def _charge_transformer() -> type:
    from jinja2 import nodes
    from jinja2.visitor import NodeTransformer

    def wrap(node: Any, name: str) -> Any:
        return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)

    class Charge(NodeTransformer):
        """Rewrite a parsed template: each loop's iterable is counted item by item
        (``|lmforge_steps``), each ``a ~ b`` is size-checked (``|lmforge_sized``)."""

        def visit_For(self, node: Any) -> Any:
            self.generic_visit(node)
            node.iter = wrap(node.iter, "lmforge_steps")
            return node

        def visit_Concat(self, node: Any) -> Any:
            self.generic_visit(node)
            node.nodes = [wrap(part, "lmforge_sized") for part in node.nodes]
            return wrap(node, "lmforge_sized")

    return Charge


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    _Charge = _charge_transformer()

    class Budgeted(ImmutableSandboxedEnvironment):
        """Loops, calls, operators and joins charged to the render's budget."""

        intercepted_binops = frozenset({"*", "+", "%", "**", "//", "/", "-"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _meter().size(_predict(operator, left, right))
            return _sized(super().call_binop(context, operator, left, right))

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            _check_args(args, kwargs)
            bound = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
            owner = getattr(bound, "__self__", None)
            name = getattr(bound, "__name__", "")
            if isinstance(owner, str):
                if name in ("format", "format_map"):
                    _check_widths(owner)
                if name == "replace" and len(args) >= 2:
                    _check_replace(owner, args[0], args[1])
                if name == "join" and args:
                    _check_join(args[0], owner)
            return _sized(super().call(__context, __obj, *args, **kwargs))

        def _parse(self, source: str, name: str | None, filename: str | None) -> Any:
            return _Charge().visit(super()._parse(source, name, filename))

    env = Budgeted(trim_blocks=True, lstrip_blocks=True)
    env.filters = {name: _guard_filter(name, fn) for name, fn in env.filters.items()}
    env.filters["lmforge_steps"] = _counted
    env.filters["lmforge_sized"] = _sized
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(template)
    except TemplateError as exc:
        raise TokenizerError(
            f"the chat template is not valid Jinja ({exc}); fix chat_template in "
            "tokenizer_config.json."
        ) from exc
