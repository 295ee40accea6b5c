"""Chat templates render under a budget: hostile templates stop with one sentence, fast and
small; ordinary templates render exactly as plain Jinja renders them."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmforge.errors import TokenizerError
from lmforge.tokenizer.chat import DEFAULT_CHAT_TEMPLATE, RenderBudget, render_chat

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi! " * 50},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "你好"},
]
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] | trim + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
HOSTILE = {
    "nested loops": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "string times 1e9": "{{ 'a' * 1000000000 }}",
    "center 1e9": "{{ 'a' | center(1000000000) }}",
    "format width": "{{ '{:>999999999}'.format(1) }}",
    "percent width": "{{ '%999999999d' % 1 }}",
    "join blow-up": "{{ range(99999) | join(messages[1].content * 40) }}",
    "doubling": "{% set ns = namespace(s=messages[1].content) %}{% for i in range(60) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    "exponential macro": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}"
    "{% endmacro %}{{ f(40) }}",
    "recursion": "{% macro f(n) %}{{ f(n+1) }}{% endmacro %}{{ f(0) }}",
    "huge power": "{{ 10 ** 100000000 }}",
}


def tokenizer(template: str) -> SimpleNamespace:
    return SimpleNamespace(chat_template=template, roles={"bos": "<s>", "eos": "</s>"})


@pytest.mark.parametrize("template", [CHATML, LLAMA3, DEFAULT_CHAT_TEMPLATE])
def test_ordinary_templates_render_as_plain_jinja_does(template):
    plain = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    want = plain.from_string(template).render(
        messages=MESSAGES, add_generation_prompt=True, bos_token="<s>", eos_token="</s>",
        pad_token="", unk_token="",
    )  # fmt: skip
    assert render_chat(tokenizer(template), MESSAGES) == want


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_template_stops_with_one_sentence(name):
    budget = RenderBudget(max_steps=200_000, max_seconds=2.0, max_chars=1_000_000)
    start = time.perf_counter()
    with pytest.raises(TokenizerError) as info:
        render_chat(tokenizer(HOSTILE[name]), MESSAGES, budget=budget)
    assert time.perf_counter() - start < 10  # 2 s of budget, on a busy machine
    message = str(info.value)
    assert message.startswith("the chat template") and message.endswith(".")
    assert "\n" not in message


def test_the_budget_is_per_render():
    ok = tokenizer(CHATML)
    for _ in range(50):  # steps do not accumulate across renders
        render_chat(ok, MESSAGES, budget=RenderBudget(max_steps=2_000))
