"""Preparing the model of a fine-tune: the task's head on a pretrained base, the method's
trainable parts, and a teacher for distillation.

    task      head                                        base arch
    classify  "classify": pooled [CLS] (encoder) or the   encoder or decoder
              last non-pad token (decoder) -> num_labels
    tokens    "tokens": one label per token               encoder or decoder
    sft       the base's "lm" head                         decoder
    seq2seq   the base's "lm" head                         encoder-decoder
    qa        "qa": start/end logits per token             encoder or decoder
    choice    "choice": one score per (question, option)   encoder or decoder

The base weights load into the task model; only the new head (`heads.*`) may be missing, and it
keeps its fresh initialisation. The method then freezes (last-n) or attaches adapters (LoRA,
prompt, prefix), with the new head always trained in full.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from lmforge.config import ModelConfig
from lmforge.data.tasks import TASKS
from lmforge.errors import CheckpointError, ConfigError, did_you_mean
from lmforge.models import Transformer
from lmforge.models.io import WEIGHTS, load_state_dict
from lmforge.peft import (
    LoRAConfig,
    apply_lora,
    apply_prefix_tuning,
    apply_prompt_tuning,
    freeze_all_but_last,
)
from lmforge.recipes.finetuned import load_finetuned, read_task_info
from lmforge.tokenizer import Tokenizer

METHODS = ("full", "last-n", "lora", "prompt-tuning", "prefix-tuning")
PEFT_METHODS = ("lora", "prompt-tuning", "prefix-tuning")
#: peak learning rate by method when none is given (small for full weights, large for prompts)
DEFAULT_LR = {
    "full": 5e-5,
    "last-n": 1e-4,
    "lora": 1e-3,  # measured: docs/results.md (MiniLM, VADER: 1e-3 beat 5e-4 by 1.1 points)
    "prompt-tuning": 3e-2,
    "prefix-tuning": 5e-3,
}
RUNTIME_MODEL_KEYS = {"dropout", "attn_dropout"}  # model fields a fine-tune may change
LABEL_TASKS = ("classify", "tokens")  # tasks with a label set
NEW_HEAD_TASKS = ("classify", "tokens", "qa", "choice")  # tasks that put a new head on the base


@dataclass
class FinetuneConfig:
    """What to fine-tune and how (train-loop settings are `TrainConfig` overrides).

    Attributes:
        task: "classify", "tokens" (BIO tagging), "sft" (prompt/response or chat), "seq2seq",
            "qa" (extractive, SQuAD format) or "choice" (multiple choice).
        method: "full", "last-n", "lora", "prompt-tuning" or "prefix-tuning".
        epochs: passes over the training data (sets max_steps unless that is overridden).
        max_len: longest example in tokens (default: the model's max_seq_len); longer ones are
            cut with a counted warning.
        last_n: blocks trained by "last-n" (with the final norm and the head).
        lora_r, lora_alpha, lora_dropout, lora_targets: LoRA's rank, scale numerator, input
            dropout and the linear layers it adapts (name patterns, see `lmforge.peft`).
        n_tokens: virtual tokens of prompt tuning / prefix length of prefix tuning.
        class_weights: None, "balanced" (w_c = N / (K n_c)) or one weight per label.
        teacher: a model dir to distil from (same tokenizer; for classify/tokens a fine-tuned
            model with the same labels).
        distill_alpha, distill_temperature: a and T of
            L = (1 - a) CE + a T^2 KL(softmax(z_t/T) || softmax(z_s/T)).
        select_metric: the validation number that picks the best model and drives early
            stopping ("macro_f1", "accuracy", "entity_f1", "token_acc", "loss", ...); None picks
            macro_f1 (classify), entity_f1 (tokens with BIO tags) or loss.
        patience: stop after this many evaluations without improvement (None = never).
        dropout: the model's dropout rate while fine-tuning (None keeps the base's).
        doc_stride: qa: context tokens shared by consecutive windows of a long context.
        max_answer_len: qa: the longest predicted answer, in tokens.
        augment: classify only: add this many augmented copies of each training example
            (`lmforge.recipes.augment.augment_training`; validation and test stay as they are).
    """

    task: str = "classify"
    method: str = "full"
    epochs: float = 3.0
    max_len: int | None = None
    last_n: int = 2
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["*.q_proj", "*.v_proj"])
    n_tokens: int = 20
    class_weights: str | list[float] | None = None
    teacher: str | None = None
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    select_metric: str | None = None
    patience: int | None = None
    augment: int = 0
    dropout: float | None = None
    doc_stride: int = 128
    max_answer_len: int = 30

    def __post_init__(self) -> None:
        for name, value, choices in (("task", self.task, TASKS), ("method", self.method, METHODS)):
            if value not in choices:
                raise ConfigError(
                    f"unknown {name} '{value}'{did_you_mean(str(value), choices)}; choose one of "
                    f"{', '.join(choices)}."
                )
        if not self.epochs > 0:
            raise ConfigError(f"epochs must be positive, got {self.epochs}.")
        if self.max_len is not None and self.max_len < 4:
            raise ConfigError(f"max_len must be at least 4 tokens, got {self.max_len}.")
        if not 0.0 <= self.distill_alpha <= 1.0 or not self.distill_temperature > 0:
            raise ConfigError(
                f"need 0 <= distill_alpha <= 1 and distill_temperature > 0, got "
                f"{self.distill_alpha} and {self.distill_temperature}."
            )
        if isinstance(self.class_weights, str) and self.class_weights != "balanced":
            raise ConfigError(
                f"class_weights must be 'balanced' or a list of numbers, got '{self.class_weights}'."
            )
        if self.class_weights is not None and self.task not in LABEL_TASKS:
            raise ConfigError("class_weights apply to the classify and tokens tasks only.")
        if self.teacher is not None and self.task in ("qa", "choice"):
            raise ConfigError(
                f"distillation is not available for the {self.task} task; drop --teacher."
            )
        if self.doc_stride < 0 or self.max_answer_len < 1:
            raise ConfigError(
                f"need doc_stride >= 0 and max_answer_len >= 1, got {self.doc_stride} and "
                f"{self.max_answer_len}."
            )


def task_config(base: ModelConfig, task: str, num_labels: int, name: str) -> ModelConfig:
    """The base config with the task's head: "classify"/"tokens" with num_labels classes; an
    "lm" head (decoder) for sft; an encoder-decoder for seq2seq."""
    if task in NEW_HEAD_TASKS:
        if base.arch == "encoder-decoder":
            raise ConfigError(
                f"the {task} task needs an encoder or decoder model, but {name} is an "
                "encoder-decoder; use --task seq2seq or another base model."
            )
        return base.replace(heads=(task,), num_labels=num_labels if task in LABEL_TASKS else 2)
    wanted = "decoder" if task == "sft" else "encoder-decoder"
    if base.arch != wanted or "lm" not in base.heads:
        raise ConfigError(
            f"the {task} task needs {'a' if task == 'sft' else 'an'} {wanted} model with an 'lm' "
            f"head, but {name} is {'an' if base.arch[0] == 'e' else 'a'} {base.arch} with heads "
            f"{list(base.heads)}; choose a matching base model."
        )
    return base


def load_base(model: Transformer, model_dir: Path, new_head: bool) -> None:
    """Load the base weights; with `new_head`, the task head (`heads.*`) may be absent (it keeps
    its fresh initialisation) and the base's old heads are dropped. Anything else missing is an
    error."""
    path = model_dir / WEIGHTS
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read weights {path} ({e}); the file is damaged.") from None
    expected = model.state_dict()
    if new_head:  # the old heads and a previous task's classifier do not carry over
        state = {
            k: v
            for k, v in state.items()
            if not k.startswith("heads.") or (k in expected and "classifier" not in k)
        }
    load_state_dict(model, state, path, strict=False)
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {
        n for n, _ in model.named_parameters()
    }
    missing = [k for k in expected if k not in state and k not in tied]
    missing = [k for k in missing if not (new_head and k.startswith("heads."))]
    if missing:
        raise CheckpointError(
            f"the weights in {path} lack '{missing[0]}' (and {len(missing) - 1} more) that the "
            "model needs; the base model dir is damaged or its config.json does not match."
        )


def apply_method(model: Transformer, fc: FinetuneConfig) -> None:
    """Freeze or attach adapters as the method says; a new head always trains in full."""
    save = ["heads"] if fc.task in NEW_HEAD_TASKS else []
    if fc.method == "last-n":
        freeze_all_but_last(model, fc.last_n)
    elif fc.method == "lora":
        lora = LoRAConfig(
            r=fc.lora_r,
            alpha=fc.lora_alpha,
            dropout=fc.lora_dropout,
            targets=list(fc.lora_targets),
            modules_to_save=save,
        )
        apply_lora(model, lora)
    elif fc.method == "prompt-tuning":
        apply_prompt_tuning(model, fc.n_tokens, modules_to_save=save)
    elif fc.method == "prefix-tuning":
        apply_prefix_tuning(model, fc.n_tokens, modules_to_save=save)


def load_teacher(path: str | Path, fc: FinetuneConfig, tok: Tokenizer, names: list[str], cfg):
    """The teacher model, checked to share the student's tokenizer and output space."""
    teacher = load_finetuned(path)
    if Tokenizer.load(path).backend.get_vocab() != tok.backend.get_vocab():
        raise ConfigError(
            f"the teacher in {path} uses another tokenizer than the student; distillation "
            "compares outputs token by token, so use a teacher with the same tokenizer."
        )
    if fc.task in ("classify", "tokens"):
        info = read_task_info(path)
        if info is None or info["task"] != fc.task or list(info["labels"]) != names:
            raise ConfigError(
                f"the teacher in {path} is not a {fc.task} model fine-tuned on the same labels "
                f"({', '.join(names[:6])}); fine-tune it first with `lmforge finetune`."
            )
    elif teacher.cfg.arch != cfg.arch or teacher.cfg.vocab_size != cfg.vocab_size:
        raise ConfigError(
            f"the teacher in {path} is {teacher.cfg.arch} with vocab_size "
            f"{teacher.cfg.vocab_size}; distilling this {cfg.arch} needs the same kind and "
            f"vocab_size {cfg.vocab_size}."
        )
    return teacher
