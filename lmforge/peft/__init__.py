"""Parameter-efficient fine-tuning: LoRA, prompt tuning, prefix tuning, last-N freezing.

Each method attaches small modules to a built model (no model subclass per method), freezes the
rest, and records its config on the model; `save_adapter` writes only the adapter's tensors and
`load_adapter` puts them back onto the same base.

Example:
    >>> from lmforge.peft import LoRAConfig, apply_lora, save_adapter, trainable_report
    >>> apply_lora(model, LoRAConfig(r=8, alpha=16, targets=["*.q_proj", "*.v_proj"]))
    >>> print(trainable_report(model))   # trainable 16.4K of 1.2M parameters (1.37%) ...
    >>> fit(model, causal_lm_loss, data, None, train_cfg, "run")   # trains A and B only
    >>> save_adapter(model, "run/adapter")                          # a small file
"""

from lmforge.peft.adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    adapter_state,
    is_adapter_dir,
    load_adapter,
    read_adapter_config,
    save_adapter,
)
from lmforge.peft.base import adapter_parameter_names, freeze_base, peft_configs
from lmforge.peft.freeze import (
    count_parameters,
    count_trainable,
    freeze_all_but_last,
    trainable_report,
)
from lmforge.peft.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    lora_modules,
    merge_lora,
    set_lora,
)
from lmforge.peft.prompt import (
    Prefix,
    PrefixConfig,
    PromptConfig,
    SoftPrompt,
    apply_prefix_tuning,
    apply_prompt_tuning,
    fold_prefix,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "LoRAConfig",
    "LoRALinear",
    "Prefix",
    "PrefixConfig",
    "PromptConfig",
    "SoftPrompt",
    "adapter_parameter_names",
    "adapter_state",
    "apply_lora",
    "apply_prefix_tuning",
    "apply_prompt_tuning",
    "count_parameters",
    "count_trainable",
    "fold_prefix",
    "freeze_all_but_last",
    "freeze_base",
    "is_adapter_dir",
    "load_adapter",
    "lora_modules",
    "merge_lora",
    "peft_configs",
    "read_adapter_config",
    "save_adapter",
    "set_lora",
    "trainable_report",
]
