"""Honest time: the wall-time estimate from the first steps, and the warm-up warning."""

from __future__ import annotations

from lmforge.config.train import TrainConfig
from lmforge.train.loop import WallClock, warmup_warning


def test_estimate_from_the_first_steps_after_warm_up():
    clock = WallClock(start=0, max_steps=1000, warm=1, measure=3)
    times = {1: 10.0, 2: 12.0, 3: 14.0, 4: 16.0}  # step 1 is warm-up; then 2.0 s/step
    said = [clock.step_done(step, now) for step, now in times.items()]
    assert said[:3] == [None, None, None]
    assert said[3].startswith("estimated time: 33 min for the 996 steps left (2.00 s/step")
    assert clock.step_done(5, 18.0) is None  # said once


def test_estimate_on_resume_and_for_short_runs():
    clock = WallClock(start=500, max_steps=530)
    for step, now in ((501, 0.0), (502, 0.5), (503, 1.0)):
        assert clock.step_done(step, now) is None
    assert "13 s for the 26 steps left (0.50 s/step over steps 502-504" in clock.step_done(504, 1.5)
    short = WallClock(start=0, max_steps=4)
    assert [short.step_done(s, float(s)) for s in (1, 2, 3, 4)] == [None] * 4


def test_warmup_longer_than_the_run_is_warned():
    assert warmup_warning(TrainConfig(max_steps=100, warmup_steps=50)) is None
    text = warmup_warning(TrainConfig(max_steps=20, warmup_steps=50, lr=1e-3))
    assert "max_steps=20 is below warmup_steps=50" in text and "0.0004" in text


def test_the_estimate_is_said_once_even_when_a_skipped_step_brings_the_count_back():
    clock = WallClock(start=0, max_steps=100, warm=1, measure=3)
    said = [clock.step_done(s, now=float(s)) for s in (1, 2, 3, 4, 3, 4, 5)]
    assert [x is not None for x in said] == [False, False, False, True, False, False, False]
    assert "over steps 2-4" in said[3]


def test_amx_flag_is_read_from_the_flags_line():
    from lmforge.utils.device import amx_bf16_in

    assert amx_bf16_in("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert not amx_bf16_in("flags\t\t: fpu avx512f avx512_bf16 amx_tile\n")  # no AMX bf16
    assert not amx_bf16_in("model name\t: amx_bf16 lookalike\nflags\t\t: fpu sse\n")
    assert not amx_bf16_in("")


def test_a_cpu_run_at_precision_auto_hears_of_bf16_only_on_an_amx_cpu(monkeypatch):
    import torch

    from lmforge.train import report
    from lmforge.utils import device

    cpu, cuda, big, small = torch.device("cpu"), torch.device("cuda"), 135_000_000, 10_000_000
    monkeypatch.setattr(device, "cpu_has_amx_bf16", lambda: True)
    assert "precision=bf16" in report.precision_note(TrainConfig(), cpu, big)
    assert report.precision_note(TrainConfig(), cpu, small) is None  # too small to gain
    assert report.precision_note(TrainConfig(precision="fp32"), cpu, big) is None  # chosen
    assert report.precision_note(TrainConfig(), cuda, big) is None  # auto is bf16 there already
    monkeypatch.setattr(device, "cpu_has_amx_bf16", lambda: False)
    assert report.precision_note(TrainConfig(), cpu, big) is None
