"""LoRA fine-tuning on a quantized base (QLoRA-style: the integer base stays frozen)."""

from __future__ import annotations

import json

from cli_helpers import run_cli

from lmforge.compress import Int8Linear, quantized_modules
from lmforge.peft.lora import lora_modules
from lmforge.recipes.finetuned import load_finetuned

TRAIN = ["batch_size=16", "lr=1e-2", "device=cpu", "precision=fp32", "warmup_steps=2"]


def test_lora_on_an_int8_base(monkeypatch, capsys, tmp_path, gpt_pretrained, classify_files):
    base = tmp_path / "int8"
    code, _, err = run_cli(monkeypatch, capsys, "quantize", gpt_pretrained, "--out", base)
    assert code == 0, err
    accuracy = {}
    for name, model_dir in (("float", gpt_pretrained), ("int8", base)):
        out = tmp_path / f"run-{name}"
        code, stdout, err = run_cli(
            monkeypatch, capsys, "finetune", model_dir, "--task", "classify",
            "--train", classify_files["train"], "--valid", classify_files["valid"],
            "--test", classify_files["test"], "--out", out, "--method", "lora",
            "--lora-targets", "*_proj", "--lora-r", "4", "--epochs", "3", *TRAIN,
        )  # fmt: skip
        assert code == 0, err
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        accuracy[name] = metrics["test"]["accuracy"]
    # the frozen int8 base trains as well as the float one (same data, seed and steps)
    assert abs(accuracy["int8"] - accuracy["float"]) <= 0.15, accuracy
    assert not (out / "merged").exists()  # integer weights take no merge
    model = load_finetuned(out)
    layers = lora_modules(model)
    assert layers and all(isinstance(m.base_layer, Int8Linear) for m in layers.values())
    assert all(m.lora_B.abs().sum() > 0 for m in layers.values())  # the adapter trained
    assert "heads.classifier" not in quantized_modules(model)  # the new head trains in float

    code, _, err = run_cli(
        monkeypatch, capsys, "finetune", base, "--task", "classify",
        "--train", classify_files["train"], "--out", tmp_path / "full", "--method", "full",
    )  # fmt: skip
    assert code != 0 and "use --method lora" in err and "Traceback" not in err
