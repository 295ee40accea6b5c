"""Parity with Hugging Face transformers: same weights, same logits (fp32, max abs diff <= 1e-4).

Reference models are random-initialised from tiny configs (never downloaded), saved with
`save_pretrained`, converted with `import_hf`, and compared in eval mode; `export_hf` output is
loaded back with `from_pretrained` and compared again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402

from lmforge.config import ModelConfig  # noqa: E402
from lmforge.errors import CheckpointError  # noqa: E402
from lmforge.interop import config_from_hf, config_to_hf, export_hf, import_hf  # noqa: E402
from lmforge.models import Transformer, load_model  # noqa: E402
from lmforge.models.positions import rope_inv_freq  # noqa: E402

transformers.logging.set_verbosity_error()
ATOL = 1e-4
VOCAB = 256


# ------------------------------------------------------------------ helpers
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (biases and norm gains too) a distinct random value, so a wrong
    mapping of any tensor shows up in the logits; HF's init leaves biases 0 and gains 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            is_gain = p.dim() == 1 and ("norm" in name.lower() or ".ln_" in name)
            p.copy_(1.0 + 0.2 * noise if is_gain else 0.1 * noise)
    return model.eval()


def convert(hf_model, tmp_path: Path) -> Transformer:
    hf_model.save_pretrained(tmp_path / "hf")
    return load_model(import_hf(tmp_path / "hf", tmp_path / "lmforge"))


def reload_exported(tmp_path: Path, cls):
    """export_hf the converted lmforge dir and load it back with transformers."""
    return hf_load(cls, export_hf(tmp_path / "lmforge", tmp_path / "exported"))


def hf_load(cls, path: Path):
    """from_pretrained, insisting that every tensor is found, expected and of the right shape."""
    model, info = cls.from_pretrained(path, output_loading_info=True)
    missing = [k for k in info["missing_keys"] if not k.startswith("pooler.")]  # BertModel's
    assert not missing and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def close(ours: torch.Tensor, theirs: torch.Tensor, where: torch.Tensor | None = None) -> None:
    if where is not None:
        ours, theirs = ours[where.bool()], theirs[where.bool()]
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ GPT-2
@torch.no_grad()
def test_gpt2_lm_head_parity_with_padding_and_export(tmp_path):
    hf = randomize(
        GPT2LMHeadModel(
            GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64)
        )
    )
    ours = convert(hf, tmp_path)
    x = ids(2, 12)
    close(ours(x).logits, hf(x).logits)
    # right padding: HF's default positions are 0..T-1, the same as lmforge's for real tokens
    mask = torch.ones_like(x)
    mask[1, 8:] = 0
    close(ours(x, attention_mask=mask).logits, hf(x, attention_mask=mask).logits, mask)
    # left padding: lmforge skips pads in positions; HF is told the same positions explicitly
    mask = torch.ones_like(x)
    mask[0, :4] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    theirs = hf(x, attention_mask=mask, position_ids=pos).logits
    close(ours(x, attention_mask=mask).logits, theirs, mask)
    back = reload_exported(tmp_path, GPT2LMHeadModel)
    close(back(x).logits, hf(x).logits)


# ------------------------------------------------------------------ Llama
def llama_config(rope: dict | None, max_pos: int = 32, **kw) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        max_position_embeddings=max_pos,
        rope_parameters={"rope_theta": 10000.0, **(rope or {"rope_type": "default"})},
        **kw,
    )


ROPES = {
    "default": (None, 32, 20),
    "linear": ({"rope_type": "linear", "factor": 2.0}, 32, 20),
    # dynamic NTK only changes the base past max_position_embeddings: go past it
    "dynamic": ({"rope_type": "dynamic", "factor": 2.0}, 32, 48),
    # original 2048 puts yarn's ramp inside head_dim 16 (dims 2..6 of 8), not at its edge
    "yarn": (
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048},
        8192,
        40,
    ),
    # original 64 puts head_dim 16's wavelengths in all three llama3 regimes (kept, ramp, scaled)
    "llama3": (
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        512,
        24,
    ),
}


@torch.no_grad()
@pytest.mark.parametrize("kind", list(ROPES))
def test_llama_gqa_rope_parity_and_export(tmp_path, kind):
    rope, max_pos, length = ROPES[kind]
    hf = randomize(LlamaForCausalLM(llama_config(rope, max_pos)))
    ours = convert(hf, tmp_path)
    assert ours.cfg.n_kv_head == 2 and ours.cfg.rope_scaling == (None if rope is None else kind)
    x = ids(2, length)
    expected = hf(x).logits
    close(ours(x).logits, expected)
    back = reload_exported(tmp_path, LlamaForCausalLM)
    assert back.config.rope_parameters["rope_type"] == kind
    close(back(x).logits, expected)


@torch.no_grad()
def test_llama_left_padding_and_tied_embeddings(tmp_path):
    hf = randomize(LlamaForCausalLM(llama_config(None, tie_word_embeddings=True)))
    ours = convert(hf, tmp_path)
    assert ours.cfg.tie_embeddings
    x = ids(2, 10)
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    theirs = hf(x, attention_mask=mask, position_ids=pos).logits
    close(ours(x, attention_mask=mask).logits, theirs, mask)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "default"},
        {"rope_type": "linear", "factor": 3.0},
        {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096},
        {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "beta_fast": 16.0,
            "beta_slow": 2.0,
            "mscale": 0.707,
            "mscale_all_dim": 1.0,
        },
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ],
)
def test_rope_inv_freq_matches_transformers(rope):
    hf_cfg = LlamaConfig(
        hidden_size=256,
        num_attention_heads=4,
        max_position_embeddings=256,
        rope_parameters={"rope_theta": 50000.0, **rope},
    )
    if rope["rope_type"] == "default":
        theirs, their_factor = LlamaRotaryEmbedding.compute_default_rope_parameters(hf_cfg)
    else:
        theirs, their_factor = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf_cfg, "cpu")
    ours, our_factor = rope_inv_freq(config_from_hf(hf_cfg.to_dict()))
    torch.testing.assert_close(ours, theirs, atol=0, rtol=1e-6)
    assert our_factor == pytest.approx(their_factor, rel=1e-6)


def test_dynamic_inv_freq_matches_transformers_past_max_len():
    hf_cfg = llama_config({"rope_type": "dynamic", "factor": 4.0}, max_pos=32)
    theirs, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf_cfg, "cpu", seq_len=100)
    ours, _ = rope_inv_freq(config_from_hf(hf_cfg.to_dict()), seq_len=100)
    torch.testing.assert_close(ours, theirs, atol=0, rtol=1e-5)


def test_llama_rope_config_read_in_both_transformers_layouts():
    new = llama_config({"rope_type": "linear", "factor": 2.0}).to_dict()
    old = {k: v for k, v in new.items() if k != "rope_parameters"}
    old.update(rope_theta=10000.0, rope_scaling={"type": "linear", "factor": 2.0})
    assert config_from_hf(new) == config_from_hf(old)
    assert config_to_hf(config_from_hf(new))["rope_scaling"] == {
        "rope_type": "linear",
        "factor": 2.0,
    }


# ------------------------------------------------------------------ BERT
def bert_config(**kw) -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        **kw,
    )


def bert_inputs():
    x = ids(2, 14)
    types = torch.zeros_like(x)
    types[:, 7:] = 1  # sentence B
    mask = torch.ones_like(x)
    mask[1, 10:] = 0
    return x, types, mask


@torch.no_grad()
def test_bert_pretraining_mlm_and_nsp_parity_and_export(tmp_path):
    hf = randomize(BertForPreTraining(bert_config()))
    ours = convert(hf, tmp_path)
    assert ours.cfg.heads == ("mlm", "nsp")
    x, types, mask = bert_inputs()
    theirs = hf(input_ids=x, token_type_ids=types, attention_mask=mask)
    out = ours(x, attention_mask=mask, token_type_ids=types)
    close(out.logits, theirs.prediction_logits, mask)
    close(out.nsp_logits, theirs.seq_relationship_logits)
    back = reload_exported(tmp_path, BertForPreTraining)
    again = back(input_ids=x, token_type_ids=types, attention_mask=mask)
    close(again.prediction_logits, theirs.prediction_logits, mask)
    close(again.seq_relationship_logits, theirs.seq_relationship_logits)


@torch.no_grad()
def test_bert_sequence_classification_parity_and_export(tmp_path):
    hf = randomize(BertForSequenceClassification(bert_config(num_labels=3)))
    ours = convert(hf, tmp_path)
    assert ours.cfg.heads == ("classify",) and ours.cfg.num_labels == 3
    x, types, mask = bert_inputs()
    theirs = hf(input_ids=x, token_type_ids=types, attention_mask=mask).logits
    close(ours(x, attention_mask=mask, token_type_ids=types).logits, theirs)
    back = reload_exported(tmp_path, BertForSequenceClassification)
    close(back(input_ids=x, token_type_ids=types, attention_mask=mask).logits, theirs)


@torch.no_grad()
def test_bare_bert_model_imports_as_encoder_without_heads(tmp_path):
    hf = randomize(BertModel(bert_config()))
    ours = convert(hf, tmp_path)
    assert ours.cfg.heads == ()
    x, types, mask = bert_inputs()
    out = ours(x, attention_mask=mask, token_type_ids=types)
    assert out.logits is None
    theirs = hf(input_ids=x, token_type_ids=types, attention_mask=mask).last_hidden_state
    close(out.hidden, theirs, mask)
    back = reload_exported(tmp_path, BertModel)
    close(
        back(input_ids=x, token_type_ids=types, attention_mask=mask).last_hidden_state, theirs, mask
    )


# ------------------------------------------------------------------ T5
def t5_model(version: str) -> T5ForConditionalGeneration:
    gated = version == "v1.1"
    cfg = T5Config(
        vocab_size=VOCAB,
        d_model=64,
        d_kv=16,
        d_ff=96,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=not gated,
    )
    model = T5ForConditionalGeneration(cfg)
    if gated:  # T5 v1.1 has its own LM head (transformers 5 ties it unless the values differ)
        model.lm_head.weight = torch.nn.Parameter(torch.empty(VOCAB, 64))
    return randomize(model)


@torch.no_grad()
@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_t5_conditional_generation_parity_and_export(tmp_path, version):
    hf = t5_model(version)
    ours = convert(hf, tmp_path)
    cfg = ours.cfg
    if version == "v1.0":
        assert cfg.tie_embeddings and cfg.tied_logit_scale and cfg.mlp == "mlp"
    else:
        assert not cfg.tie_embeddings and (cfg.mlp, cfg.activation) == ("glu", "gelu_tanh")
    assert cfg.decoder_start_id == 0 and cfg.n_decoder_layer == 3
    src = ids(2, 30)  # longer than max_distance: the logarithmic buckets are used
    mask = torch.ones_like(src)
    mask[1, 22:] = 0
    tgt = ids(2, 25, seed=2)
    theirs = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
    close(ours(src, attention_mask=mask, decoder_input_ids=tgt).logits, theirs)
    back = reload_exported(tmp_path, T5ForConditionalGeneration)
    close(back(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits, theirs)


# ------------------------------------------------------------------ bare base models
@torch.no_grad()
@pytest.mark.parametrize("arch", ["GPT2Model", "LlamaModel", "T5Model"])
def test_bare_base_models_give_the_same_hidden_states(tmp_path, arch):
    """Base models without a head (stored without the "transformer."/"model." prefix)."""
    configs = {
        "GPT2Model": GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64),
        "LlamaModel": llama_config(None),
        "T5Model": t5_model("v1.0").config,
    }
    hf = randomize(getattr(transformers, arch)(configs[arch]))
    ours = convert(hf, tmp_path)
    assert ours.cfg.heads == ()
    x = ids(2, 12)
    if arch == "T5Model":
        out, theirs = ours(x, decoder_input_ids=x), hf(input_ids=x, decoder_input_ids=x)
    else:
        out, theirs = ours(x), hf(input_ids=x)
    assert out.logits is None
    close(out.hidden, theirs.last_hidden_state)
    back = reload_exported(tmp_path, getattr(transformers, arch))
    again = back(input_ids=x, decoder_input_ids=x) if arch == "T5Model" else back(input_ids=x)
    close(again.last_hidden_state, theirs.last_hidden_state)


# ------------------------------------------------------------------ files and errors
@torch.no_grad()
def test_sharded_checkpoint_and_tokenizer_files_are_read(tmp_path):
    hf = randomize(
        GPT2LMHeadModel(
            GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64)
        )
    )
    hf.save_pretrained(tmp_path / "hf", max_shard_size="60KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    (tmp_path / "hf" / "tokenizer_config.json").write_text('{"eos_token": "<eos>"}')
    ours = load_model(import_hf(tmp_path / "hf", tmp_path / "lmforge"))
    assert (tmp_path / "lmforge" / "tokenizer_config.json").is_file()
    x = ids(1, 9)
    close(ours(x).logits, hf(x).logits)
    export_hf(tmp_path / "lmforge", tmp_path / "exported")
    assert (tmp_path / "exported" / "tokenizer_config.json").is_file()


def test_unsupported_architecture_is_named_with_the_supported_list(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]})
    )
    with pytest.raises(
        CheckpointError,
        match="MambaForCausalLM.*GPT2LMHeadModel.*LlamaForCausalLM.*BertForPreTraining.*T5ForConditionalGeneration",
    ):
        import_hf(tmp_path, tmp_path / "out")
    with pytest.raises(CheckpointError, match="'BertForQuestionAnswering' is not supported"):
        config_from_hf({"model_type": "bert", "architectures": ["BertForQuestionAnswering"]})


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path):
    hf = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64)
    )
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["vocab_size"] = 300
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"'transformer\.wte\.weight' has shape \(256, 64\).*\(300, 64\)"
    ):
        import_hf(tmp_path / "hf", tmp_path / "out")


def test_pickle_only_dir_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(GPT2Config(n_layer=1).to_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="pickle"):
        import_hf(tmp_path, tmp_path / "out")


def test_config_without_hf_equivalent_says_why():
    with pytest.raises(CheckpointError, match="no Hugging Face equivalent.*pos='alibi'"):
        config_to_hf(ModelConfig.from_preset("gpt-tiny", pos="alibi"))


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny", "bert-tiny", "t5-tiny"])
def test_lmforge_presets_export_and_load_in_transformers(tmp_path, preset):
    """A model trained in lmforge (here: a fresh preset) exports to HF with the same logits."""
    from lmforge.models import save_model

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset(preset, dropout=0.0, attn_dropout=0.0)).eval()
    save_model(model, tmp_path / "lmforge")
    out = export_hf(tmp_path / "lmforge", tmp_path / "hf")
    arch = json.loads((out / "config.json").read_text())["architectures"][0]
    hf = hf_load(getattr(transformers, arch), out)
    x = torch.randint(0, 512, (2, 10))
    with torch.no_grad():
        if model.cfg.arch == "encoder-decoder":
            ours, theirs = (
                model(x, decoder_input_ids=x).logits,
                hf(input_ids=x, decoder_input_ids=x).logits,
            )
        elif model.cfg.arch == "encoder":
            ours, theirs = model(x).logits, hf(input_ids=x).prediction_logits
        else:
            ours, theirs = model(x).logits, hf(input_ids=x).logits
    close(ours, theirs)
