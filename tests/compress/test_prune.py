"""Pruning against the plain rules: magnitude masks, structured shrinking, head importance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lmforge.compress.prune import (
    attach_masks,
    cubic_schedule,
    magnitude_masks,
    magnitude_prune,
    prunable_linears,
    remove_masks,
    sparsity_of,
)
from lmforge.compress.structured import (
    gradient_scores,
    group_scores,
    keep_counts,
    magnitude_scores,
    select,
    shrink,
    structured_prune,
)
from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.models import Transformer, load_model, save_model
from lmforge.objectives import causal_lm_loss

NO_DROPOUT = {"dropout": 0.0, "attn_dropout": 0.0}


def build(preset: str, seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.from_preset(preset, **NO_DROPOUT, **kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def ids(cfg: ModelConfig, b: int = 2, t: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- magnitude
def test_layer_masks_follow_the_plain_threshold_rule():
    model = build("gpt-tiny")
    masks = magnitude_masks(model, 0.3, "layer")
    for name, m in prunable_linears(model).items():
        w = m.weight.detach().abs().flatten()
        k = round(0.3 * w.numel())
        t = torch.sort(w).values[k - 1]  # the k-th smallest magnitude
        torch.testing.assert_close(masks[name], (m.weight.abs() > t))
        assert int((~masks[name]).sum()) == k


def test_global_mask_uses_one_threshold_over_all_layers():
    model = build("gpt-tiny")
    masks = magnitude_masks(model, 0.5, "global")
    linears = prunable_linears(model)
    every = torch.cat([m.weight.detach().abs().flatten() for m in linears.values()])
    k = round(0.5 * every.numel())
    t = torch.sort(every).values[k - 1]
    for name, m in linears.items():
        torch.testing.assert_close(masks[name], m.weight.abs() > t)
    per_layer = [float((~masks[n]).float().mean()) for n in linears]
    assert max(per_layer) - min(per_layer) > 0.01  # layers differ, unlike per-layer pruning
    assert "embed.tok" not in " ".join(masks) and all(".layers." in n for n in masks)


def test_masks_survive_optimizer_steps_and_are_folded_on_save(tmp_path):
    model = build("gpt-tiny").train()
    masks = magnitude_prune(model, 0.6)
    assert abs(sparsity_of(model) - 0.6) < 0.01
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = ids(model.cfg)
    for _ in range(3):
        loss = causal_lm_loss(model, {"input_ids": x, "labels": x}).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    # the step moved the masked weights; the state dict (what a checkpoint holds) is masked
    save_model(model, tmp_path)
    stored = load_file(str(tmp_path / "model.safetensors"))
    for name, mask in masks.items():
        assert bool((stored[f"{name}.weight"][~mask] == 0).all()), name
    remove_masks(model)
    assert abs(sparsity_of(load_model(tmp_path)) - 0.6) < 0.01
    assert not any(hasattr(m, "_lmforge_prune") for m in model.modules())


def test_masked_forward_is_the_forward_of_masked_weights():
    model = build("llama-tiny")
    x = ids(model.cfg)
    masks = magnitude_masks(model, 0.5)
    reference = build("llama-tiny")
    with torch.no_grad():
        for name, m in prunable_linears(reference).items():
            m.weight.mul_(masks[name])
    attach_masks(model, masks)
    torch.testing.assert_close(model(x).logits, reference(x).logits)


def test_cubic_schedule_and_bad_sparsity():
    s = cubic_schedule(0.8, 4)
    assert s[-1] == pytest.approx(0.8) and s == sorted(s)
    assert s[0] == pytest.approx(0.8 - 0.8 * (1 - 1 / 4) ** 3)
    with pytest.raises(ConfigError, match="sparsity"):
        magnitude_masks(build("gpt-tiny"), 1.0)


# ----------------------------------------------------------------------------- structured
def zeroed_reference(model: Transformer, neurons, q_heads):
    """The unpruned model with the removed neurons' activations and heads' outputs set to 0."""
    stack = model.decoder if model.cfg.arch != "encoder" else model.encoder
    handles = []
    for i, block in enumerate(stack.layers):
        attn = block.attn
        head_keep = torch.zeros(attn.n_head)
        head_keep[q_heads[i]] = 1.0
        neuron_keep = torch.zeros(block.mlp.down_proj.in_features)
        neuron_keep[neurons[i]] = 1.0

        def o_hook(_m, args, keep=head_keep, n=attn.n_head):
            b, t, _ = args[0].shape
            return (args[0].view(b, t, n, -1) * keep[:, None]).view(b, t, -1)

        handles.append(attn.o_proj.register_forward_pre_hook(o_hook))
        handles.append(
            block.mlp.down_proj.register_forward_pre_hook(lambda _m, a, k=neuron_keep: a[0] * k)
        )
    return handles


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny", "bert-tiny"])
def test_shrunk_model_equals_the_model_with_units_zeroed(preset, tmp_path):
    kw = {"heads": ("classify",)} if preset == "bert-tiny" else {}
    model = build(preset, **kw)
    cfg = model.cfg
    group = cfg.n_head // cfg.n_kv_head
    neurons = [torch.tensor([0, 3, 5, 8, 13]) + i for i in range(cfg.n_layer)]
    kv = [torch.tensor([i % cfg.n_kv_head]) for i in range(cfg.n_layer)]
    pruned = shrink(model, neurons, kv)
    q_heads = [torch.arange(g.item() * group, (g.item() + 1) * group) for g in kv]
    x = ids(cfg)
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    handles = zeroed_reference(model, neurons, q_heads)
    expected = model(x, attention_mask=mask).logits
    for h in handles:
        h.remove()
    torch.testing.assert_close(pruned(x, attention_mask=mask).logits, expected)
    assert pruned.cfg.layer_d_ff == [5] * cfg.n_layer
    assert pruned.cfg.layer_n_head == [group] * cfg.n_layer
    assert pruned.cfg.layer_n_kv_head == [1] * cfg.n_layer
    assert pruned.num_parameters() < model.num_parameters()
    save_model(pruned, tmp_path)  # a normal model dir that loads back
    torch.testing.assert_close(load_model(tmp_path)(x, attention_mask=mask).logits, expected)


def test_pruned_decoder_generates_with_a_kv_cache_like_without():
    model = build("llama-tiny")  # grouped-query attention: 4 query heads on 2 key/value heads
    pruned = structured_prune(model, ffn_fraction=0.5, head_fraction=0.5)
    assert pruned.cfg.layer_n_kv_head == [1] * model.cfg.n_layer
    assert pruned.cfg.layer_n_head == [2] * model.cfg.n_layer
    x = ids(model.cfg, t=8)
    full = pruned(x).logits
    cache = pruned.new_cache(2, 16)
    first = pruned(x[:, :5], cache=cache).logits
    rest = pruned(x[:, 5:], cache=cache).logits
    torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-5, rtol=1e-4)


def test_magnitude_scores_follow_the_formula():
    model = build("llama-tiny")
    neurons, heads = magnitude_scores(model)
    mlp, attn = model.decoder.layers[1].mlp, model.decoder.layers[1].attn
    j, h, hd = 7, 2, attn.head_dim
    w_in = torch.cat([mlp.up_proj.weight[j], mlp.gate_proj.weight[j]])
    expected = w_in.norm() * mlp.down_proj.weight[:, j].norm()
    torch.testing.assert_close(neurons[1][j], expected.detach())
    q = attn.q_proj.weight[h * hd : (h + 1) * hd]
    o = attn.o_proj.weight[:, h * hd : (h + 1) * hd]
    torch.testing.assert_close(heads[1][h], (q.norm() * o.norm()).detach())
    torch.testing.assert_close(group_scores(heads[1], 2), heads[1].view(2, 2).sum(1))


def double_loss(model, batch):
    """Mean next-token cross-entropy in float64 (finite differences need the precision)."""
    logits = model(batch["input_ids"]).logits[:, :-1]
    target = batch["input_ids"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1))


def test_gradient_head_importance_matches_finite_differences():
    """I_h = sum_x |dL(x)/d xi_h|, checked per example against (L(1+e) - L(1-e)) / 2e."""
    model = build("gpt-tiny").double()
    x = ids(model.cfg, b=2, t=6)
    neurons, heads = gradient_scores(model, [{"input_ids": x}], double_loss)
    layer, head, eps = 1, 1, 1e-5
    attn = model.decoder.layers[layer].attn

    def loss_with_gate(value: float, row: int) -> float:
        def hook(_m, args):
            b, t, _ = args[0].shape
            out = args[0].view(b, t, attn.n_head, -1).clone()
            out[:, :, head] *= value
            return out.view(b, t, -1)

        handle = attn.o_proj.register_forward_pre_hook(hook)
        with torch.no_grad():
            loss = double_loss(model, {"input_ids": x[row : row + 1]})
        handle.remove()
        return float(loss)

    expected = sum(
        abs(loss_with_gate(1 + eps, r) - loss_with_gate(1 - eps, r)) / (2 * eps) for r in range(2)
    )
    assert float(heads[layer][head]) == pytest.approx(expected, rel=1e-5)
    assert all(float(n.sum()) > 0 for n in neurons)


def test_selection_layer_and_global():
    scores = [torch.tensor([3.0, 1.0, 2.0, 0.5]), torch.tensor([10.0, 8.0, 0.2, 9.0])]
    assert keep_counts([4, 4], 0.5) == [2, 2]
    assert keep_counts([4], 0.99) == [1]  # a block keeps at least one unit
    layer = select(scores, [2, 2], "layer")
    assert [s.tolist() for s in layer] == [[0, 2], [0, 3]]
    glob = select(scores, [2, 2], "global", normalize=False)
    assert [s.tolist() for s in glob] == [[0], [0, 1, 3]]
    low = [torch.tensor([0.1, 0.2]), torch.tensor([5.0, 6.0])]
    assert [s.tolist() for s in select(low, [1, 1], "global", normalize=False)] == [[1], [1]]


def test_gradient_structured_prune_shrinks_and_needs_data():
    model = build("gpt-tiny")
    x = ids(model.cfg, b=4, t=12)
    batches = [{"input_ids": x, "labels": x}]
    pruned = structured_prune(model, 0.5, 0.25, importance="gradient", batches=batches,
                              loss_fn=causal_lm_loss)  # fmt: skip
    assert pruned.cfg.layer_d_ff == [keep_counts([model.cfg.d_ff], 0.5)[0]] * model.cfg.n_layer
    with pytest.raises(ConfigError, match="needs data"):
        structured_prune(model, 0.5, importance="gradient")


def test_config_validates_per_layer_sizes():
    cfg = ModelConfig.from_preset("gpt-tiny")
    with pytest.raises(ConfigError, match="n_layer"):
        cfg.replace(layer_d_ff=[8])
    with pytest.raises(ConfigError, match="encoder or decoder"):
        ModelConfig.from_preset("t5-tiny", layer_d_ff=[8] * 2)
    with pytest.raises(ConfigError, match="alibi"):
        ModelConfig.from_preset("gpt-tiny", pos="alibi", layer_n_head=[1] * cfg.n_layer)
    assert "layer_d_ff" not in cfg.to_dict()  # uniform configs are stored as before


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_decode_step_runs_a_pruned_model_like_its_full_forward(backend):
    """Blocks with different key/value head counts: the one decode step (each layer's own cache
    buffer) gives the logits of a full forward over the grown rows, left padding included."""
    from lmforge.generate.core import prefill
    from lmforge.generate.inputs import pad

    model = build("llama-tiny")  # 4 query heads on 2 key/value heads per block
    kv = [torch.tensor([0]), torch.tensor([0, 1])]  # block 0 keeps one group, block 1 both
    pruned = shrink(model, None, kv)
    assert pruned.cfg.layer_n_kv_head == [1, 2]
    pruned.set_attention_backend(backend)
    rows = [[5, 6, 7, 8], [3, 4]]
    ids, mask = pad(rows, 0, torch.device("cpu"))
    with torch.inference_mode():
        cache = pruned.new_cache(2, ids.size(1) + 5)
        logits = prefill(pruned, ids, mask, cache)
        for _ in range(5):
            token = logits.argmax(-1)
            for r, t in zip(rows, token.tolist(), strict=True):
                r.append(t)
            logits = pruned.decode_step(token[:, None], cache)
            want = torch.stack([pruned(torch.tensor([r])).logits[0, -1] for r in rows])
            torch.testing.assert_close(logits, want.float(), rtol=1e-4, atol=1e-4)
