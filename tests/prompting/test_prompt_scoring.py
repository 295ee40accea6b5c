"""Label scores against the plain formulas computed here from the model's logits."""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError, TokenizerError
from lmforge.models import Transformer, load_model
from lmforge.prompting import (
    LabelScorer,
    Template,
    Verbalizer,
    calibrate,
    content_free_probs,
    label_log_scores,
)
from lmforge.tokenizer import Tokenizer

TEMPLATE = "review : {text} it was [MASK] ."


def load(model_dir):
    return load_model(model_dir), Tokenizer.load(model_dir)


@torch.no_grad()
def direct_log_probs(model, ids: list[int]) -> torch.Tensor:
    """(T, V) log softmax of the logits of one unpadded sequence."""
    return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_cloze_score_is_log_softmax_of_the_mlm_logits_at_the_mask(tiny_bert):
    model, tok = load(tiny_bert)
    scorer = LabelScorer(model, tok, Verbalizer.parse(["pos=great,good", "neg=terrible"]))
    template = Template.parse(TEMPLATE, tok.roles["mask"], require_slot=True)
    texts = ["a wonderful cast", "the plot was bad and the music dull and long"]
    got = scorer.word_scores([template.render(t) for t in texts])  # one padded batch
    for row, text in zip(got, texts, strict=True):
        ids = tok.encode(TEMPLATE.format(text=text), add_special_tokens=True)
        pos = ids.index(tok.mask_id)
        logp = direct_log_probs(model, ids)[pos]
        want = torch.stack([logp[tok.token_to_id(w)] for w in ("great", "good", "terrible")])
        torch.testing.assert_close(row, want, atol=1e-5, rtol=0)
    # a label's words add up: S(pos) = log(P(great) + P(good))
    labels = label_log_scores(got, scorer.groups)
    torch.testing.assert_close(labels[:, 0], torch.logaddexp(got[:, 0], got[:, 1]))
    torch.testing.assert_close(labels[:, 1], got[:, 2])
    torch.testing.assert_close(scorer.probs([template.render(texts[0])])[0], labels[0].softmax(-1))


def test_multi_token_word_gets_one_mask_per_token_and_the_mean_log_prob(tiny_bert):
    model, tok = load(tiny_bert)
    word = "greatest"
    pieces = tok.encode(word)
    assert len(pieces) == 4 and tok.unk_id not in pieces
    scorer = LabelScorer(model, tok, Verbalizer.parse([f"pos={word}", "neg=bad"]))
    template = Template.parse(TEMPLATE, "[MASK]", require_slot=True)
    got = scorer.word_scores([template.render("a great film")])[0]
    slot = " ".join(["[MASK]"] * len(pieces))
    ids = tok.encode(f"review : a great film it was {slot} .", add_special_tokens=True)
    positions = [i for i, t in enumerate(ids) if t == tok.mask_id]
    logp = direct_log_probs(model, ids)
    want = torch.stack([logp[p, t] for p, t in zip(positions, pieces, strict=True)]).mean()
    torch.testing.assert_close(got[0], want, atol=1e-5, rtol=0)
    # the one-token word is scored from its own one-mask prompt
    ids1 = tok.encode("review : a great film it was [MASK] .", add_special_tokens=True)
    want1 = direct_log_probs(model, ids1)[ids1.index(tok.mask_id), tok.token_to_id("bad")]
    torch.testing.assert_close(got[1], want1, atol=1e-5, rtol=0)


def test_causal_score_is_the_sum_of_the_word_tokens_log_likelihood(tiny_gpt):
    model, tok = load(tiny_gpt)
    scorer = LabelScorer(model, tok, Verbalizer.parse(["pos=great", "neg=terrible"]))
    template = Template.parse("review : {text} it was", tok.roles["mask"], require_slot=False)
    texts = ["a wonderful cast", "the acting was terrible and the plot bad"]
    got = scorer.word_scores([template.render(t) for t in texts])
    for row, text in zip(got, texts, strict=True):
        context = tok.encode(f"review : {text} it was", add_special_tokens=True)
        for score, word in zip(row, ("great", "terrible"), strict=True):
            word_ids = tok.encode(" " + word)
            full = tok.encode(f"review : {text} it was {word}", add_special_tokens=True)
            assert full == context + word_ids  # the word is spelt as inside the sentence
            logp = direct_log_probs(model, full)
            n = len(context)
            want = sum(logp[n - 1 + j, t] for j, t in enumerate(word_ids))
            torch.testing.assert_close(score, want, atol=1e-5, rtol=0)
    assert len(tok.encode(" terrible")) == 2  # a multi-token continuation was scored


def test_calibration_formula():
    p = torch.tensor([[0.6, 0.4], [0.7, 0.3]])
    cf = torch.tensor([[[0.8, 0.2], [0.9, 0.1], [0.7, 0.3]], [[0.8, 0.2], [0.6, 0.4], [0.7, 0.3]]])
    p_cf = content_free_probs(cf)
    torch.testing.assert_close(p_cf, torch.tensor([[0.8, 0.2], [0.7, 0.3]]))
    q = calibrate(p, p_cf)
    torch.testing.assert_close(q[0], torch.tensor([0.75 / 2.75, 2.0 / 2.75]))
    torch.testing.assert_close(q[1], torch.tensor([0.5, 0.5]))
    # the argmax is that of Zhao et al.'s softmax(W p), W = diag(p_cf)^-1
    paper = torch.softmax(p / p_cf, dim=-1)
    assert q.argmax(-1).tolist() == paper.argmax(-1).tolist()
    # unnormalised content-free probabilities are renormalised first
    torch.testing.assert_close(
        content_free_probs(torch.tensor([[2.0, 2.0]])), torch.tensor([0.5, 0.5])
    )


def test_label_log_scores_is_logsumexp_per_label():
    s = torch.tensor([[math.log(0.1), math.log(0.2), math.log(0.3)]])
    got = label_log_scores(s, [[0, 1], [2]])
    torch.testing.assert_close(got.exp(), torch.tensor([[0.3, 0.3]]))


def test_verbalizer_word_not_in_the_vocabulary(tiny_bert):
    model, tok = load(tiny_bert)
    with pytest.raises(TokenizerError, match=r"verbalizer word 'ζζ' \(label 'neg'\) is not in"):
        LabelScorer(model, tok, Verbalizer.parse(["pos=great", "neg=ζζ"]))


def test_a_model_without_an_lm_head_is_refused(tiny_bert):
    _, tok = load(tiny_bert)
    model = Transformer(ModelConfig.from_preset("bert-tiny", vocab_size=tok.vocab_size, heads=()))
    with pytest.raises(CheckpointError, match="neither a masked LM nor a causal LM"):
        LabelScorer(model, tok, Verbalizer.parse(["pos=great", "neg=bad"]))
