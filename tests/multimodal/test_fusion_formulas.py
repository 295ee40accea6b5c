"""Each fusion piece against its formula, written out with plain tensor operations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.models.fusion import CrossFusion, FusionModel, LateFusion, PrefixProjector
from lmforge.models.vision import PatchEmbedding, sincos_2d_table
from lmforge.objectives import in_batch_contrastive_loss
from lmforge.objectives.multimodal import multi_positive_contrastive_loss

torch.manual_seed(0)


def tiny(**kw) -> ModelConfig:
    base = dict(arch="encoder", vocab_size=40, n_layer=1, n_head=2, d_model=16, max_seq_len=16,
                heads=("classify",), num_labels=3, image_size=8, patch_size=4, fusion="late")  # fmt: skip
    return ModelConfig(**{**base, **kw})


def test_sincos_2d_table_matches_the_formula():
    rows, cols, dim = 3, 4, 8
    table = sincos_2d_table(rows, cols, dim)
    for r in range(rows):
        for c in range(cols):
            want = []
            for value in (r, c):
                w = [10000 ** (-k / (dim // 4)) for k in range(dim // 4)]
                want += [math.sin(value * x) for x in w] + [math.cos(value * x) for x in w]
            torch.testing.assert_close(table[r * cols + c], torch.tensor(want), atol=1e-6, rtol=0)


@pytest.mark.parametrize("image_pos", ["learned", "sincos2d"])
def test_patch_embedding_is_one_linear_map_per_patch(image_pos):
    cfg = tiny(image_pos=image_pos, image_channels=3)
    pe = PatchEmbedding(cfg)
    torch.nn.init.normal_(pe.proj.weight)
    if pe.pos is not None:
        torch.nn.init.normal_(pe.pos)
    x = torch.randn(2, 3, 8, 8)
    p = cfg.patch_size
    # plain rule: cut row-major p x p patches, flatten (C, p, p), z_i = W vec(x_i) + b + P_i
    patches = [x[:, :, i : i + p, j : j + p].reshape(2, -1) for i in range(0, 8, p)
               for j in range(0, 8, p)]  # fmt: skip
    w = pe.proj.weight.reshape(cfg.d_model, -1)
    pos = pe.pos if pe.pos is not None else sincos_2d_table(2, 2, cfg.d_model)
    want = torch.stack([q @ w.T + pe.proj.bias for q in patches], dim=1) + pos
    torch.testing.assert_close(pe(x), want, atol=1e-5, rtol=1e-5)


def test_patch_embedding_refuses_a_wrong_image_shape():
    with pytest.raises(ValueError, match="images must be"):
        PatchEmbedding(tiny())(torch.randn(2, 1, 6, 6))


@pytest.mark.parametrize("combine", ["concat", "sum", "gated"])
def test_late_fusion_formulas(combine):
    fuse = LateFusion(4, combine)
    t, v = torch.randn(3, 4), torch.randn(3, 4)
    if combine == "concat":
        want = torch.cat([t, v], dim=-1)
    elif combine == "sum":
        want = t + v
    else:
        g = 1 / (1 + torch.exp(-(torch.cat([t, v], -1) @ fuse.gate.weight.T + fuse.gate.bias)))
        want = g * t + (1 - g) * v
    torch.testing.assert_close(fuse(t, v), want)
    assert fuse.out_dim == want.size(-1)


def test_prefix_projector_formula():
    proj = PrefixProjector(6, 4)
    v = torch.randn(2, 5, 6)
    h = v @ proj.fc1.weight.T + proj.fc1.bias
    gelu = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    torch.testing.assert_close(proj(v), gelu @ proj.fc2.weight.T + proj.fc2.bias)


def _attend(q_in, kv_in, attn):
    """softmax(Q K^T / sqrt(d_h)) V per head, then W_O: the plain multi-head formula."""
    b, tq, _ = q_in.shape
    h, dh = attn.n_head, attn.head_dim
    q = (q_in @ attn.q_proj.weight.T + attn.q_proj.bias).view(b, tq, h, dh).transpose(1, 2)
    k = (kv_in @ attn.k_proj.weight.T + attn.k_proj.bias).view(b, -1, h, dh).transpose(1, 2)
    v = (kv_in @ attn.v_proj.weight.T + attn.v_proj.bias).view(b, -1, h, dh).transpose(1, 2)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
    z = (w @ v).transpose(1, 2).reshape(b, tq, h * dh)
    return z @ attn.o_proj.weight.T + attn.o_proj.bias


def test_cross_fusion_is_text_attending_to_image_features():
    cfg = tiny(norm_placement="pre", fusion="cross")
    fuse = CrossFusion(cfg, causal=False).eval()
    for p in fuse.parameters():  # move off the identity-like default init of the norms
        torch.nn.init.normal_(p, 0.0, 0.3)
    text, image = torch.randn(2, 5, 16), torch.randn(2, 4, 16)
    blk = fuse.stack.layers[0]
    # h <- h + SelfAttn(LN(h)); h <- h + CrossAttn(LN(h), V); h <- h + MLP(LN(h)); final LN
    h = text + _attend(blk.attn_norm(text), blk.attn_norm(text), blk.attn)
    h = h + _attend(blk.cross_norm(h), image, blk.cross_attn)
    h = h + blk.mlp(blk.mlp_norm(h))
    want = fuse.stack.norm(h)
    torch.testing.assert_close(fuse(text, None, image), want, atol=1e-5, rtol=1e-5)


def test_early_fusion_runs_text_then_patches_as_one_sequence():
    cfg = tiny(fusion="early")
    model = FusionModel(cfg).eval()
    ids = torch.randint(0, 40, (2, 5))
    px = torch.randn(2, 1, 8, 8)
    core = model.core
    x = core.embed(ids, torch.arange(5).expand(2, 5))
    seq = torch.cat([x, model.image.patches(px)], dim=1)  # X = [x ; V_patches]
    want = core.encoder(seq).hidden[:, :5]
    torch.testing.assert_close(model(ids, pixel_values=px).hidden, want)
    # the text's [CLS] sees the image: another image, another prediction
    other = model(ids, pixel_values=torch.randn(2, 1, 8, 8)).logits
    assert not torch.allclose(other, model(ids, pixel_values=px).logits)


def test_prefix_fusion_puts_projected_image_features_before_the_text_of_a_decoder():
    cfg = tiny(arch="decoder", pos="rope", heads=("lm",), fusion="prefix", n_image_layer=1)
    model = FusionModel(cfg).eval()
    ids, px = torch.randint(0, 40, (2, 5)), torch.randn(2, 1, 8, 8)
    core = model.core
    p = model.projector(model.image(px))  # P = W2 GELU(W1 v)
    seq = torch.cat([p, core.embed(ids, torch.arange(5).expand(2, 5))], dim=1)  # [P ; x]
    h = core.decoder(seq, position_ids=torch.arange(9)[None]).hidden[:, 4:]
    torch.testing.assert_close(model(ids, pixel_values=px).logits, core.heads(h, None).logits)


def test_multi_positive_contrastive_loss():
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    distinct = torch.arange(6)
    torch.testing.assert_close(
        multi_positive_contrastive_loss(a, b, distinct, 0.1), in_batch_contrastive_loss(a, b, 0.1)
    )
    groups = torch.tensor([0, 1, 0, 2, 1, 0])
    an, bn = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    total = 0.0
    for i in range(6):
        row = torch.softmax(an[i] @ bn.T / 0.1, dim=-1)
        total -= math.log(sum(float(row[j]) for j in range(6) if groups[j] == groups[i]))
    loss = multi_positive_contrastive_loss(a, b, groups, 0.1)
    assert abs(float(loss) - total / 6) < 1e-5


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        (dict(fusion="late", heads=("lm",), arch="decoder"), "late fusion"),
        (dict(fusion="early", heads=()), "two separate"),
        (dict(fusion="prefix", heads=("lm",)), "do not fit arch='encoder'"),
    ],
)
def test_combinations_that_do_not_exist_get_one_sentence(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        FusionModel(tiny(**kw))


def test_config_checks_the_image_fields():
    with pytest.raises(ConfigError, match="not a multiple of patch_size"):
        tiny(patch_size=3)
    with pytest.raises(ConfigError, match="needs images"):
        tiny(image_size=None)


def test_fresh_patch_embeddings_carry_the_image_not_the_bias():
    """At initialisation two different images must give clearly different patch tokens (a conv
    bias drawn from U(+-1/sqrt(C p^2)) used to swamp 2x2 grey patches)."""
    pe = PatchEmbedding(tiny(patch_size=2))
    a, b = torch.rand(1, 1, 8, 8) * 2 - 1, torch.rand(1, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        za, zb = pe(a), pe(b)
    assert float((za - zb).abs().mean()) > 0.5 * float(za.abs().mean())
