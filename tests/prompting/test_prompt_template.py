"""Templates, verbalizers, data files and demonstration draws."""

from __future__ import annotations

import pytest

from lmforge.errors import ConfigError, DataError
from lmforge.prompting import Example, Template, Verbalizer, draw_demonstrations, read_examples


# ------------------------------------------------------------------ templates
def test_template_splits_at_the_slot_and_fills_text():
    t = Template.parse("Review: {text} It was [MASK].", "[MASK]", require_slot=True)
    assert (t.before, t.after) == ("Review: {text} It was ", ".")
    assert t.render("fun") == ("Review: fun It was ", ".")
    assert t.fill("fun", "great") == "Review: fun It was great."
    # the slot may come first; {text} is then in `after`
    t = Template.parse("[MASK] news: {text}", "[MASK]", require_slot=True)
    assert t.render("rates rise") == ("", " news: rates rise")


def test_mask_alias_and_tokenizer_mask_token_are_both_slots():
    for written in ("{text} was [MASK].", "{text} was <|mask|>."):
        t = Template.parse(written, "<|mask|>", require_slot=True)
        assert (t.before, t.after) == ("{text} was ", ".")


def test_causal_template_without_slot_ends_with_it():
    t = Template.parse("Q: {text}\nA:", "<|mask|>", require_slot=False)
    assert (t.before, t.after) == ("Q: {text}\nA: ", "")
    assert t.fill("2 + 2?", "4") == "Q: 2 + 2?\nA: 4"
    assert Template.parse("{text}\n", None, require_slot=False).before == "{text}\n"


def test_text_inside_the_text_is_not_a_placeholder():
    t = Template.parse("{text} => [MASK]", "[MASK]", require_slot=True)
    assert t.fill("odd {text} [MASK] input", "x") == "odd {text} [MASK] input => x"


@pytest.mark.parametrize(
    ("template", "require", "message"),
    [
        ("It was [MASK].", True, r"no \{text\} placeholder"),
        ("{text} {text} [MASK]", True, r"\{text\} 2 times"),
        ("{text} It was good.", True, r"no \[MASK\] slot; a masked LM needs one"),
        ("{text} [MASK] and [MASK]", True, "2 label slots"),
        ("{text} <|mask|> and [MASK]", False, "2 label slots"),
    ],
)
def test_template_errors_are_one_clear_sentence(template, require, message):
    with pytest.raises(ConfigError, match=message):
        Template.parse(template, "<|mask|>" if "<|" in template else "[MASK]", require)


# ------------------------------------------------------------------ verbalizers
def test_verbalizer_parses_entries_and_dicts():
    v = Verbalizer.parse(["positive=great, good", "negative=terrible"])
    assert v.words == {"positive": ("great", "good"), "negative": ("terrible",)}
    assert v.labels == ["positive", "negative"]
    assert Verbalizer.parse({1: "yes", 0: ["no", "nope"]}).words == {
        "1": ("yes",),
        "0": ("no", "nope"),
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (["positive:great", "negative=bad"], "has no '='"),
        (["positive=", "negative=bad"], "at least one word"),
        (["positive=great", "positive=good"], "twice"),
        (["positive=great"], "at least two"),
    ],
)
def test_verbalizer_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        Verbalizer.parse(spec)


# ------------------------------------------------------------------ data files
def test_read_examples_jsonl_csv_tsv(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x", "label": 1}\n\n{"text": "y", "label": 0}\n')
    (tmp_path / "b.csv").write_text('text,label\n"a, b",pos\nc,neg\n')
    (tmp_path / "c.tsv").write_text("sentence\nfirst\nsecond\n")
    assert read_examples(tmp_path / "a.jsonl") == [Example("x", "1"), Example("y", "0")]
    assert read_examples(tmp_path / "b.csv") == [Example("a, b", "pos"), Example("c", "neg")]
    assert read_examples(tmp_path / "c.tsv", text_field="sentence") == [
        Example("first"),
        Example("second"),
    ]


def test_read_examples_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_examples(tmp_path / "missing.jsonl")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(
        DataError, match=r"ends in '\.txt'; pass a \.csv, \.tsv, \.jsonl or \.json file"
    ):
        read_examples(tmp_path / "x.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2 is not valid JSON"):
        read_examples(tmp_path / "bad.jsonl")
    (tmp_path / "part.jsonl").write_text('{"text": "a", "label": "p"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"row\(s\) \[2\] .* label every row or none"):
        read_examples(tmp_path / "part.jsonl")
    (tmp_path / "notext.csv").write_text("body,label\nhi,p\n")
    with pytest.raises(DataError, match="no text field 'text'"):
        read_examples(tmp_path / "notext.csv")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        read_examples(tmp_path / "empty.jsonl")


# ------------------------------------------------------------------ demonstrations
POOL = [Example(f"text {i}", "pos" if i % 2 else "neg") for i in range(20)]


def test_demonstrations_are_deterministic_per_seed_and_never_the_query():
    for i in range(len(POOL)):
        a = draw_demonstrations(POOL, 5, seed=3, query_index=i, query_text=POOL[i].text,
                                pool_is_data=True)  # fmt: skip
        b = draw_demonstrations(POOL, 5, seed=3, query_index=i, query_text=POOL[i].text,
                                pool_is_data=True)  # fmt: skip
        assert a == b and len(set(a)) == 5 and i not in a
    draws = {
        seed: [draw_demonstrations(POOL, 5, seed, i, POOL[i].text, True) for i in range(20)]
        for seed in (0, 1)
    }
    assert draws[0] != draws[1]
    # all pool rows but the query are candidates: K = 19 uses every other row exactly once
    assert sorted(draw_demonstrations(POOL, 19, 0, 4, POOL[4].text, True)) == [
        j for j in range(20) if j != 4
    ]


def test_a_separate_pool_excludes_rows_with_the_query_text():
    pool = [Example("same", "pos"), Example("other", "neg"), Example("third", "pos")]
    for seed in range(10):
        assert 0 not in draw_demonstrations(pool, 2, seed, 0, "same", pool_is_data=False)
    # with a separate pool, the query's row number means nothing
    assert sorted(draw_demonstrations(pool, 3, 0, 1, "new", pool_is_data=False)) == [0, 1, 2]


def test_too_few_demonstrations_is_a_clear_error():
    assert draw_demonstrations(POOL[:2], 0, 0, 0, POOL[0].text, True) == []
    with pytest.raises(DataError, match="1 labelled example.* --shots is 2"):
        draw_demonstrations(POOL[:2], 2, 0, 0, POOL[0].text, True)
