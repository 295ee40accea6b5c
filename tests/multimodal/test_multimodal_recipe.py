"""Image-and-text fine-tuning end to end on a slice of the real digits, with tiny text models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli

from lmforge.config import ModelConfig
from lmforge.data.images import export_digits, read_images
from lmforge.errors import DataError
from lmforge.models import Transformer, load_model, save_model
from lmforge.models.fusion import FusionModel
from lmforge.recipes.multimodal import MultimodalConfig, finetune_multimodal
from lmforge.tokenizer import Tokenizer, train_tokenizer

WORDS = ("a handwritten digit zero one two three four five six seven eight nine what is shown "
         "image").split()  # fmt: skip
FAST = {"batch_size": 16, "lr": 3e-3, "warmup_steps": 1, "device": "cpu", "precision": "fp32",
        "threads": 1}  # fmt: skip


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict[str, Path]:
    """The real digits, cut to 64 training and 24 validation images."""
    root = tmp_path_factory.mktemp("digits")
    export_digits(root)
    out = {}
    for name, n in (("train", 64), ("valid", 24), ("test", 24)):
        lines = (root / f"{name}.csv").read_text().splitlines()
        out[name] = root / f"small-{name}.csv"
        out[name].write_text("\n".join(lines[: n + 1]) + "\n")
    return out


def _base(root: Path, preset: str, kind: str) -> Path:
    corpus = [" ".join(WORDS)] * 20 + [f"a handwritten digit {w}" for w in WORDS[3:]] * 5
    tok = train_tokenizer(corpus, vocab_size=300 if kind == "bpe" else 80, kind=kind)
    cfg = ModelConfig.from_preset(preset, vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                                  eos_id=tok.eos_id if tok.eos_id is not None else tok.sep_id,
                                  bos_id=tok.bos_id, dropout=0.0, attn_dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    save_model(Transformer(cfg), root / preset)
    tok.save(root / preset)
    return root / preset


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mm-bases")
    return {"bert": _base(root, "bert-tiny", "wordpiece"), "gpt": _base(root, "gpt-tiny", "bpe")}


def test_digits_export_is_real_and_stated(digits):
    root = digits["train"].parent
    assert len((root / "train.csv").read_text().splitlines()) == 1 + 1258
    assert "CC BY 4.0" in (root / "README.md").read_text()
    records = read_images(root / "train.csv")
    assert tuple(records[0].pixels.shape) == (1, 8, 8)
    assert records[0].text == f"a handwritten digit {WORDS[3 + int(records[0].label)]}"
    assert -1.0 <= float(records[0].pixels.min()) and float(records[0].pixels.max()) <= 1.0


def test_class_folders_are_read_like_imagefolder(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.fromarray(np.full((4, 4), 60 * i, np.uint8)).save(tmp_path / label / f"{i}.png")
    records = read_images(tmp_path)
    assert [r.label for r in records] == ["cat", "cat", "dog", "dog"]
    assert float(records[0].pixels[0, 0, 0]) == -1.0
    with pytest.raises(DataError, match="no class sub-folders"):
        read_images(tmp_path / "cat")


def test_npz_arrays_are_read_without_pickle(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, images=np.zeros((3, 4, 4), np.uint8), labels=np.array(["a", "b", "a"]),
             texts=np.array(["x", "y", "x"]))  # fmt: skip
    records = read_images(path)
    assert [r.label for r in records] == ["a", "b", "a"] and records[1].text == "y"
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 4, 5)))
    with pytest.raises(DataError, match="square"):
        read_images(tmp_path / "bad.npz")


def test_image_classify_saves_loads_and_resumes(tmp_path, bases, digits):
    out = tmp_path / "run"
    mc = MultimodalConfig(task="image-classify", fusion="cross", patch_size=4, n_image_layer=1)
    first = finetune_multimodal(bases["bert"], digits["train"], out, mc, valid=digits["valid"],
                                overrides={**FAST, "max_steps": 4, "eval_every": 2},
                                progress=False)  # fmt: skip
    assert first.train.steps == 4
    model = load_model(out)
    assert isinstance(model, FusionModel) and model.cfg.fusion == "cross"
    assert model.cfg.image_size == 8 and ModelConfig.from_dir(out).n_image_tokens == 4
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["validation"]["accuracy"] <= 1.0 and metrics["parameters"] > 0
    assert "validation (24 images)" in (out / "report.md").read_text()
    # the same predictions after a reload: the image encoder and fusion are in the files
    px = torch.stack([r.pixels for r in read_images(digits["valid"])[:5]])
    ids = torch.tensor([Tokenizer.load(out).encode("What digit is shown?", True)] * 5)
    again = load_model(out)
    torch.testing.assert_close(model(ids, pixel_values=px).logits,
                               again(ids, pixel_values=px).logits)  # fmt: skip
    resumed = finetune_multimodal(bases["bert"], digits["train"], out, mc, valid=digits["valid"],
                                  overrides={**FAST, "max_steps": 6, "eval_every": 2},
                                  resume=True, progress=False)  # fmt: skip
    assert resumed.train.steps == 6
    steps = [json.loads(x).get("step") for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 6


def test_image_text_retrieval_learns_above_chance(tmp_path, bases, digits):
    mc = MultimodalConfig(task="image-text", fusion="late", patch_size=4, n_image_layer=1)
    r = finetune_multimodal(bases["bert"], digits["train"], tmp_path / "clip", mc,
                            valid=digits["valid"], overrides={**FAST, "max_steps": 30},
                            progress=False)  # fmt: skip
    scores = r.metrics["validation"]
    assert set(scores) >= {"image_to_text_recall1", "text_to_image_recall1"}
    assert scores["image_to_text_recall1"] > 0.2  # ten captions: chance is 0.1


@pytest.mark.parametrize("fusion", ["prefix", "cross", "early"])
def test_captioning_with_a_decoder(tmp_path, bases, digits, fusion):
    mc = MultimodalConfig(task="caption", fusion=fusion, patch_size=4, n_image_layer=1)
    r = finetune_multimodal(bases["gpt"], digits["train"], tmp_path / fusion, mc,
                            valid=digits["valid"], overrides={**FAST, "max_steps": 40},
                            progress=False)  # fmt: skip
    scores = r.metrics["validation"]
    assert 0.0 <= scores["caption_exact_match"] <= 1.0 and scores["samples"]
    # the shared words are learned: every caption starts as the references do
    assert all(s["caption"].startswith("a handwritten digit") for s in scores["samples"])


def test_cli_image_tasks_and_their_errors(monkeypatch, capsys, tmp_path, bases, digits):
    code, out, err = run_cli(monkeypatch, capsys, "finetune", bases["bert"], "--task",
                             "image-classify", "--fusion", "late", "--fusion-combine", "gated",
                             "--patch-size", "4", "--train", digits["train"], "--valid",
                             digits["valid"], "--test", digits["test"], "--out", tmp_path / "c",
                             "max_steps=2", "batch_size=16", "device=cpu", "threads=1")  # fmt: skip
    assert code == 0, err
    assert "validation: accuracy" in out and "test: accuracy" in out
    cases = [
        (["--task", "caption", "--fusion", "prefix"], "captioning needs a decoder"),
        (["--task", "image-text", "--fusion", "cross"], "late fusion, CLIP style"),
        (["--task", "image-classify", "--fusion", "middle"], "unknown fusion 'middle'"),
        (["--task", "image-classify", "--patch-size", "3"], "not a multiple of patch_size"),
    ]
    for args, msg in cases:
        code, out, err = run_cli(monkeypatch, capsys, "finetune", bases["bert"], *args,
                                 "--train", digits["train"], "--valid", digits["valid"],
                                 "--out", tmp_path / "x", "max_steps=1")  # fmt: skip
        assert code == 2 and msg in err and "Traceback" not in err, (args, err)
    code, out, err = run_cli(monkeypatch, capsys, "finetune", bases["gpt"], "--task", "caption",
                             "--fusion", "late", "--train", digits["train"], "--valid",
                             digits["valid"], "--out", tmp_path / "y")  # fmt: skip
    assert code == 2 and "late fusion combines pooled vectors" in err
    code, out, err = run_cli(monkeypatch, capsys, "finetune", bases["bert"], "--task",
                             "image-classify", "--train", digits["train"], "--out",
                             tmp_path / "z")  # fmt: skip
    assert code == 2 and "needs --valid" in err
