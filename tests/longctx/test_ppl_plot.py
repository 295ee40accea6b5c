"""The perplexity-by-length plot stays readable over a narrow and a wide perplexity range."""

from __future__ import annotations

import matplotlib.pyplot as plt

from lmforge.longctx.probes import PplByLength, ppl_figure


def _labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]


def test_narrow_range_is_linear_with_plain_ticks():
    results = {"base": PplByLength([256, 512, 1024], [41.2, 41.5, 41.7], [1, 1, 1])}
    fig = ppl_figure(results, trained_len=512)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear"
    assert _labels(ax.xaxis) == ["256", "512", "1024"]
    ys = _labels(ax.yaxis)
    assert len(ys) >= 3 and not any("$" in y or "10^" in y for y in ys), ys  # no 4.15x10^1
    plt.close(fig)


def test_wide_range_is_log_with_plain_ticks():
    results = {"base": PplByLength([256, 2048], [20.0, 900.0], [1, 1])}
    fig = ppl_figure(results)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_ylim()[1] > 900 and not any("$" in y for y in _labels(ax.yaxis))
    plt.close(fig)


def test_ppl_by_length_shows_progress(capsys):
    import numpy as np
    import torch

    from lmforge.config import ModelConfig
    from lmforge.longctx.probes import ppl_by_length
    from lmforge.models import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset("gpt-tiny", vocab_size=50, max_seq_len=64)).eval()
    tokens = np.random.default_rng(0).integers(0, 50, 400)
    quiet = ppl_by_length(model, tokens, [16, 32])
    assert capsys.readouterr().err == ""
    loud = ppl_by_length(model, tokens, [16, 32], progress=True)
    assert "ppl by length:" in capsys.readouterr().err and loud.ppl == quiet.ppl
