"""LoRA: parity with Hugging Face `peft`, merge = unmerged, exact unmerge, adapters on disk.

Reference models are random-initialised from tiny configs (never downloaded), converted with
`lmforge.interop.import_hf`; peft's LoRA and lmforge's get the same A and B.
"""

from __future__ import annotations

import re

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.errors import AdapterError
from lmforge.interop import import_hf
from lmforge.interop.hf import family_of
from lmforge.models import Transformer, load_model, save_model
from lmforge.peft import (
    ADAPTER_WEIGHTS,
    LoRAConfig,
    LoRALinear,
    apply_lora,
    count_trainable,
    load_adapter,
    lora_modules,
    merge_lora,
    save_adapter,
    set_lora,
    trainable_report,
)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # from inside transformers

B, T = 2, 12


def tiny(preset: str = "llama-tiny", seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.from_preset(preset, dropout=0.0, attn_dropout=0.0, **kw))
    with torch.no_grad():  # non-trivial biases and gains
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def ids(vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def randomize_lora(model: torch.nn.Module, seed: int = 2) -> None:
    """Give every B a non-zero value, so the LoRA path shows up in the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(0.1 * torch.randn(m.lora_B.shape, generator=gen))


# ------------------------------------------------------------------ parity with peft
def _hf_models():
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        )
    )
    bert = BertModel(
        BertConfig(
            vocab_size=256,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        add_pooling_layer=False,
    )
    return {
        # HF targets, lmforge targets
        "llama": (
            llama,
            ["q_proj", "v_proj", "down_proj"],
            ["*.q_proj", "*.v_proj", "*.down_proj"],
        ),
        "bert": (bert, ["query", "value", "intermediate.dense"], ["q_proj", "v_proj", "up_proj"]),
    }


def _name_map(cfg: ModelConfig) -> dict[str, str]:
    """Hugging Face linear-layer name -> lmforge linear-layer name, from the interop rules."""
    family = family_of(cfg)
    out = {}
    for r in family.rules(cfg):
        if len(r.ours) == 1 and r.theirs.endswith(".weight") and r.ours[0].endswith(".weight"):
            theirs, ours = r.theirs[: -len(".weight")], r.ours[0][: -len(".weight")]
            out[theirs] = ours
            out[theirs.removeprefix(family.base_prefix)] = ours  # a bare base model
    return out


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_same_lora_weights_give_peft_outputs(tmp_path, family):
    hf_model, hf_targets, targets = _hf_models()[family]
    hf_model.eval()
    hf_model.save_pretrained(tmp_path / "hf")
    model = load_model(import_hf(tmp_path / "hf", tmp_path / "lm"))
    r, alpha = 4, 8.0
    lcfg = peft.LoraConfig(
        r=r, lora_alpha=alpha, target_modules=hf_targets, lora_dropout=0.0, init_lora_weights=False
    )
    ref = peft.get_peft_model(hf_model, lcfg).eval()
    apply_lora(model, LoRAConfig(r=r, alpha=alpha, targets=targets))
    names = _name_map(model.cfg)
    ours = lora_modules(model)
    copied = 0
    with torch.no_grad():
        for name, m in hf_model.named_modules():
            if hasattr(m, "lora_A") and "default" in m.lora_A:
                mine = ours[names[name]]
                mine.lora_A.copy_(m.lora_A["default"].weight)
                mine.lora_B.copy_(m.lora_B["default"].weight)
                assert mine.scaling == m.scaling["default"]
                copied += 1
    assert copied == len(ours) == 3 * 2
    assert all(m.lora_B.abs().sum() > 0 for m in ours.values())  # B is not zero
    x = ids(256)

    def main(out):
        if family == "llama":
            return out.logits
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.hidden

    with torch.no_grad():
        theirs, mine = main(ref(input_ids=x)), main(model(x))
        with ref.disable_adapter():
            plain = main(ref(input_ids=x))
    assert (mine - theirs).abs().max() <= 1e-5
    assert (plain - theirs).abs().max() > 1e-3  # the adapters do change the output
    # merged weights agree too
    merged = dict(ref.merge_and_unload().named_modules())
    merge_lora(model)
    compared = 0
    for hf_name, m in merged.items():
        if hf_name in names and names[hf_name] in ours:
            mine_w = model.get_submodule(names[hf_name]).weight
            torch.testing.assert_close(mine_w, m.weight, atol=1e-6, rtol=0)
            compared += 1
    assert compared == len(ours)


# ------------------------------------------------------------------ the layer itself
def test_lora_linear_formula_merge_unmerge_disable():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 24)
    w0, b0 = base.weight.detach().clone(), base.bias.detach().clone()
    layer = LoRALinear(base, r=4, alpha=8.0)
    x = torch.randn(3, 5, 16)
    assert torch.equal(layer(x), base(x))  # B = 0 at the start
    with torch.no_grad():
        layer.lora_B.normal_()
    a, bm = layer.lora_A, layer.lora_B
    expected = x @ w0.T + b0 + 2.0 * (x @ a.T @ bm.T)  # scaling = alpha / r = 2
    unmerged = layer(x)
    torch.testing.assert_close(unmerged, expected, atol=1e-5, rtol=1e-5)
    layer.merge()
    torch.testing.assert_close(layer.weight, w0 + 2.0 * bm @ a, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=1e-5)
    layer.disabled = True
    torch.testing.assert_close(layer(x), x @ w0.T + b0, atol=1e-5, rtol=1e-5)
    layer.disabled = False
    layer.unmerge()
    torch.testing.assert_close(layer.weight, w0, atol=1e-6, rtol=0)
    layer.disabled = True
    assert torch.equal(layer(x), base(x))
    # the state dict keeps the base keys
    assert set(layer.state_dict()) == {"weight", "bias", "lora_A", "lora_B"}


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt-tiny", "bert-tiny", "t5-tiny"])
def test_model_merged_equals_unmerged_and_unmerge_restores(preset):
    model = tiny(preset)
    x = ids(model.cfg.vocab_size)
    run = (
        (lambda m: m(x, decoder_input_ids=x))
        if model.cfg.arch == "encoder-decoder"
        else (lambda m: m(x))
    )
    with torch.no_grad():
        base_out = run(model).logits
        before = {k: v.clone() for k, v in model.state_dict().items()}
        apply_lora(model, LoRAConfig(r=4, targets=["*_proj"]))
        assert torch.equal(run(model).logits, base_out)  # B = 0: nothing changes at first
        randomize_lora(model)
        unmerged = run(model).logits
        assert (unmerged - base_out).abs().max() > 1e-3
        set_lora(model, merged=True)
        torch.testing.assert_close(run(model).logits, unmerged, atol=1e-5, rtol=1e-5)
        set_lora(model, disabled=True)
        torch.testing.assert_close(run(model).logits, base_out, atol=1e-5, rtol=1e-5)
        set_lora(model, merged=False, disabled=False)
        for k, v in before.items():
            torch.testing.assert_close(model.state_dict()[k], v, atol=1e-6, rtol=0)
        set_lora(model, disabled=True)  # unmerged and disabled: the base weights, to rounding
        torch.testing.assert_close(run(model).logits, base_out, atol=1e-5, rtol=1e-5)


def test_apply_lora_freezes_base_and_counts_by_formula():
    model = tiny("bert-mini")
    r = 8
    apply_lora(model, LoRAConfig(r=r))
    layers = lora_modules(model)
    assert len(layers) == 2 * model.cfg.n_layer  # q and v of every layer
    formula = sum(r * (m.in_features + m.out_features) for m in layers.values())
    assert count_trainable(model) == formula == 2 * 4 * 8 * (256 + 256)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(re.search(r"\.lora_[AB]$", n) for n in trainable)
    report = trainable_report(model)
    total = model.num_parameters()
    pct = 100 * formula / total
    assert pct < 1.0
    assert (
        report.splitlines()[0] == f"trainable 32.8K of {total / 1e6:.1f}M parameters ({pct:.2f}%)"
    )
    assert "encoder.layers.*.attn.q_proj" in report


def test_targets_and_modules_to_save():
    model = tiny("bert-tiny", heads=("classify",))
    apply_lora(
        model,
        LoRAConfig(targets=["re:encoder\\.layers\\.1\\..*"], modules_to_save=["heads.classifier"]),
    )
    assert sorted(lora_modules(model)) == [
        "encoder.layers.1.attn.k_proj",
        "encoder.layers.1.attn.o_proj",
        "encoder.layers.1.attn.q_proj",
        "encoder.layers.1.attn.v_proj",
        "encoder.layers.1.mlp.down_proj",
        "encoder.layers.1.mlp.up_proj",
    ]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"heads.classifier.weight", "heads.classifier.bias"} <= trainable


def test_clear_errors():
    with pytest.raises(
        AdapterError, match=r"'\*\.qkv' matches no linear layer; .*decoder\.layers\.0\.attn\.q_proj"
    ):
        apply_lora(tiny("gpt-tiny"), LoRAConfig(targets=["*.qkv"]))
    with pytest.raises(AdapterError, match="tied"):
        apply_lora(tiny("gpt-tiny"), LoRAConfig(targets=["heads.lm_head"]))
    with pytest.raises(AdapterError, match="rank"):
        LoRAConfig(r=0)
    model = apply_lora(tiny("gpt-tiny"))
    with pytest.raises(AdapterError, match="already has LoRA"):
        apply_lora(model)
    with pytest.raises(AdapterError, match="modules_to_save entry 'nope'"):
        apply_lora(tiny("gpt-tiny"), LoRAConfig(modules_to_save=["nope"]))


# ------------------------------------------------------------------ on disk
def test_adapter_is_small_and_loads_onto_a_fresh_base(tmp_path):
    model = tiny("llama-tiny")
    save_model(model, tmp_path / "base")
    apply_lora(model, LoRAConfig(r=4, alpha=16))
    randomize_lora(model)
    x = ids(model.cfg.vocab_size)
    with torch.no_grad():
        want = model(x).logits
    save_adapter(model, tmp_path / "adapter")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "adapter" / ADAPTER_WEIGHTS))
    assert set(saved) == {f"{n}.{ab}" for n in lora_modules(model) for ab in ("lora_A", "lora_B")}
    small = (tmp_path / "adapter" / ADAPTER_WEIGHTS).stat().st_size
    full = (tmp_path / "base" / "model.safetensors").stat().st_size
    assert small < 0.1 * full
    fresh = load_adapter(load_model(tmp_path / "base"), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, want)
    assert count_trainable(fresh) == count_trainable(model)
    # the merged export is a plain model that loads anywhere
    merge_lora(fresh)
    assert not lora_modules(fresh)
    save_model(fresh, tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(
            load_model(tmp_path / "merged")(x).logits, want, atol=1e-5, rtol=1e-5
        )


def test_load_adapter_checks_the_base(tmp_path):
    model = apply_lora(tiny("llama-tiny"))
    save_adapter(model, tmp_path / "adapter")
    with pytest.raises(AdapterError, match="n_layer=2, but this model has n_layer=3"):
        load_adapter(tiny("llama-tiny", n_layer=3), tmp_path / "adapter")
    with pytest.raises(AdapterError, match="not an lmforge adapter"):
        load_adapter(tiny("llama-tiny"), tmp_path)
    # dropout differences do not matter
    load_adapter(tiny("llama-tiny").train(), tmp_path / "adapter")
    with pytest.raises(AdapterError, match="no adapter to save"):
        save_adapter(tiny("llama-tiny"), tmp_path / "none")
