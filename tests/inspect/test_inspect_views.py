"""The views write HTML + PNG + JSON; the HTML opens in a real browser (headless Chromium)
without console errors, draws its content from the inline data and needs no network."""

from __future__ import annotations

import json
import re

import pytest
import torch
from browser import render
from inspect_helpers import build, ids

from lmforge.inspect import views
from lmforge.inspect.html import write_page
from lmforge.inspect.saliency import class_score


class Tok:
    """Enough of a tokenizer for labels: token i reads 't<i>' (one with a '<' to test escaping)."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join("</script>" if i == 7 else f"t{i}" for i in ids)

    def id_to_token(self, i):
        return f"t{i}"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("views")
    gpt = build("gpt-tiny")
    x = ids(gpt, batch=1, length=8)[0].tolist()
    x[2] = 7
    y = ids(gpt, batch=1, length=8, seed=5)[0].tolist()
    with torch.no_grad():
        logits = gpt(torch.tensor([x])).logits[0, -1]
    answer, wrong = int(logits.argmax()), int(logits.argmin())
    bert = build("bert-tiny", num_labels=2, heads=["classify"])
    paths = {
        "attention": views.attention_view(gpt, Tok(), x, out, heads=[0, 1]),
        "lens": views.lens_view(gpt, Tok(), x, out),
        "patch": views.patch_view(gpt, Tok(), x, y, answer, wrong, out),
        "saliency": views.saliency_view(
            bert,
            Tok(),
            [{"ids": x, "score": class_score(1), "title": "class 1"},
             {"ids": y, "score": class_score(0), "title": "class 0"}],
            out,
            steps=16,
        ),
    }  # fmt: skip
    return out, paths, gpt


def test_each_view_writes_html_png_json(written):
    out, paths, gpt = written
    for kind, files in paths.items():
        suffixes = sorted(p.suffix for p in files)
        assert suffixes == [".html", ".json", ".png"], kind
        for p in files:
            assert p.stat().st_size > 0
    data = json.loads((out / "attention.json").read_text())
    assert len(data["patterns"]["0"]) == 2 and len(data["rollout"]) == 8
    lens = json.loads((out / "lens.json").read_text())
    assert len(lens["top"]) == gpt.cfg.n_layer + 1
    # the DLA parts add up to the logit they explain
    dla = lens["dla"]
    assert sum(dla["parts"].values()) == pytest.approx(dla["total"], abs=1e-3)
    assert (out / "dla.png").is_file() and (out / "patch-heads.png").is_file()


def test_html_is_standalone(written):
    out, paths, _ = written
    for files in paths.values():
        html = files[0].read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", html)
        assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in html
        # the token "</script>" is escaped inside the data block
        assert html.count("</script>") == 2


@pytest.mark.slow
def test_views_render_in_chromium_without_console_errors(written, tmp_path):
    out, paths, gpt = written
    expected = {
        "attention": ["headview", "modelview", "head 1", "Attention rollout"],
        "lens": ["grid-0", "grid-1", "Direct logit attribution"],
        "patch": ["grid-0", "grid-1", "Patching each head"],
        "saliency": ["example-0", "example-1", "class 0"],
    }
    for kind, files in paths.items():
        dom, console = render(files[0], out / f"{kind}-screenshot.png")
        assert console == [], (kind, console)
        assert 'data-ready="1"' in dom, kind
        for needle in expected[kind]:
            assert needle in dom, (kind, needle)
        assert (out / f"{kind}-screenshot.png").stat().st_size > 5000
    # the attention page draws a line per visible weight and a canvas per layer x head
    dom, _ = render(paths["attention"][0], tmp_path / "a.png")
    assert dom.count("<canvas") == gpt.cfg.n_layer * 2
    assert dom.count("<line") > 8


@pytest.mark.slow
def test_the_browser_check_catches_a_broken_page(tmp_path):
    page = write_page(tmp_path / "bad.html", "grid", "broken", {"no_grids": []})
    dom, console = render(page, tmp_path / "bad.png")
    assert any("TypeError" in line for line in console), console
    assert 'data-ready="1"' not in dom
