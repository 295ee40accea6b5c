"""Cloze templates and verbalizers: how a text becomes a prompt and a label becomes words.

A template is text with one `{text}` placeholder and one label slot written as the tokenizer's
mask token (`[MASK]` is accepted for any tokenizer):

    template    "Review: {text} Overall it was [MASK]."
    verbalizer  positive -> (great, good),  negative -> (terrible,)

For a masked LM the slot is the position the model fills in (cloze). For a causal LM the slot is
where the label words continue the prompt: the text before the slot is the context, a label word
is the continuation, and text after the slot is not scored; a causal-LM template may leave the
slot out, which puts it at the end, after a space ("Sentiment:" + " positive").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lmforge.errors import ConfigError

TEXT = "{text}"
MASK_ALIAS = "[MASK]"
EXAMPLE = '"Review: {text} It was [MASK]."'


@dataclass(frozen=True)
class Template:
    """A template split at its label slot: `before` + slot + `after`; `{text}` is in one of them.

    Attributes:
        before: template text in front of the slot.
        after: template text behind the slot ("" when the slot ends the template).
    """

    before: str
    after: str

    @classmethod
    def parse(cls, template: str, mask_token: str | None, require_slot: bool) -> Template:
        """Split `template` at its slot (the mask token, or `[MASK]`).

        Args:
            template: text with one `{text}` and at most one slot.
            mask_token: the tokenizer's mask token string (None when it has none).
            require_slot: True for masked LMs (the slot is what they fill in); a causal-LM
                template without a slot gets one at its end, after a space.
        """
        n_text = template.count(TEXT)
        if n_text == 0:
            raise ConfigError(
                f"the template has no {TEXT} placeholder; write {TEXT} where the input text "
                f"goes, e.g. {EXAMPLE}."
            )
        if n_text > 1:
            raise ConfigError(f"the template has {TEXT} {n_text} times; write it once.")
        markers = [m for m in dict.fromkeys([mask_token, MASK_ALIAS]) if m]
        found = [(template.find(m), m) for m in markers if m in template]
        count = sum(template.count(m) for m in markers)
        if count > 1:
            raise ConfigError(
                f"the template has {count} label slots; write {markers[0]} once, where the label "
                "word goes."
            )
        if not found:
            if require_slot:
                shown = " or ".join(markers)
                raise ConfigError(
                    f"the template has no {shown} slot; a masked LM needs one where the label "
                    f"word goes, e.g. {EXAMPLE}."
                )
            return cls(template if template[-1:].isspace() else template + " ", "")
        at, marker = found[0]
        return cls(template[:at], template[at + len(marker) :])

    def render(self, text: str) -> tuple[str, str]:
        """(text before the slot, text after it) with `{text}` replaced by `text`."""
        return self.before.replace(TEXT, text), self.after.replace(TEXT, text)

    def fill(self, text: str, word: str) -> str:
        """The whole prompt with `text` in place and `word` in the slot (a demonstration)."""
        before, after = self.render(text)
        return before + word + after


@dataclass(frozen=True)
class Verbalizer:
    """Label -> the words that stand for it, in the order given (the first word is the one a
    demonstration shows).

    Attributes:
        words: label -> non-empty tuple of words.
    """

    words: dict[str, tuple[str, ...]]

    @property
    def labels(self) -> list[str]:
        return list(self.words)

    @classmethod
    def parse(cls, spec: Sequence[str] | Mapping[str, Sequence[str] | str]) -> Verbalizer:
        """From `["positive=great,good", "negative=terrible"]` or a dict label -> word(s)."""
        words: dict[str, tuple[str, ...]] = {}
        items: list[tuple[str, Sequence[str]]] = []
        if isinstance(spec, Mapping):
            for label, ws in spec.items():
                items.append((str(label), [ws] if isinstance(ws, str) else list(ws)))
        else:
            for entry in spec:
                label, eq, rest = entry.partition("=")
                if not eq:
                    raise ConfigError(
                        f"verbalizer entry '{entry}' has no '='; write LABEL=word[,word], "
                        "e.g. positive=great,good."
                    )
                items.append((label, rest.split(",")))
        for label, ws in items:
            label = label.strip()
            clean = tuple(w.strip() for w in ws if w.strip())
            if not label or not clean:
                raise ConfigError(
                    f"verbalizer entry for label '{label}' needs a label and at least one word; "
                    "write LABEL=word[,word]."
                )
            if label in words:
                raise ConfigError(f"the verbalizer names label '{label}' twice; list it once.")
            words[label] = clean
        if len(words) < 2:
            raise ConfigError(
                f"the verbalizer has {len(words)} label(s); classification needs at least two, "
                "e.g. positive=great negative=terrible."
            )
        return cls(words)
