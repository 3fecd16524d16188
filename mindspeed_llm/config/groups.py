"""The run's configuration: frozen, typed groups built once from the validated flags.

:class:`RunConfig` holds one group per part of a run (model, kernels, parallel, recompute, precision,
optimizer, training, data, instruction, checkpoint, logging, and inference for ``inference.py``).
Every destination of the parser belongs to exactly one group, to a feature's own flags (LoRA:
``mindspeed_llm.lora.config.add_lora_flags``, read by the LoRA module; preference alignment:
``mindspeed_llm.dpo.config.add_dpo_flags``), or to :data:`LAUNCH_ONLY`;
flags an ``extra_args_provider`` adds (Megatron-LM's hook) are kept as given in ``extra``.
``tests/config/test_groups.py`` checks that partition.

A field's metadata says what else follows from it, so that adding a model setting is two edits (its
flag in ``flags.py``, its field here):

- ``checkpoint="fill"`` / ``"force"``: ``--use-checkpoint-args`` takes the ``--load`` checkpoint's value
  (fill: only when the launch left it unset; force: always), Megatron-LM's ``load_args_from_checkpoint``
  rule; :func:`checkpoint_settings`.
- ``checked=True``: a model-defining setting; a launch contradicting the checkpoint's value is refused
  (:func:`checked_model_settings`).
- ``megatron="name"``: passed as it is to megatron-core's ``TransformerConfig.name``
  (:func:`transformer_config`).

The translators to megatron-core's configs and to our ``ModelConfig`` sit beside the groups they read;
they import megatron-core (and torch) only when called, so importing this module loads neither.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mindspeed_llm.config.flags import CONTEXT_PARALLEL_ALGOS, ArgumentError, parser_dests


def setting(*, checkpoint: str | None = None, checked: bool = False, megatron: str | None = None) -> Any:
    """A group field (no default: every field comes from the parsed flags) and what follows from it."""
    if checkpoint not in (None, "fill", "force"):
        raise ValueError(f"checkpoint={checkpoint!r}: use 'fill' or 'force'")
    return field(metadata={"checkpoint": checkpoint, "checked": checked, "megatron": megatron})


# ---- the groups --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelGroup:
    """The model's shape and numerics (``checked`` fields in the order a contradiction is reported)."""

    num_layers: int = setting(checkpoint="fill", checked=True)
    hidden_size: int = setting(checkpoint="fill", checked=True)
    ffn_hidden_size: int = setting(checkpoint="fill", checked=True)
    num_attention_heads: int = setting(checkpoint="fill", checked=True)
    num_query_groups: int = setting(checkpoint="force", checked=True)
    kv_channels: int = setting(checkpoint="fill", checked=True)
    add_qkv_bias: bool = setting(checkpoint="force", checked=True)
    qk_layernorm: bool = setting(checkpoint="force", checked=True)
    untie_embeddings_and_output_weights: bool = setting(checkpoint="force", checked=True)
    position_embedding_type: str = setting(checkpoint="force", checked=True)
    rotary_base: float = setting(checkpoint="force", checked=True)
    rotary_percent: float = setting(checkpoint="force", checked=True)
    normalization: str = setting(checkpoint="force", checked=True)
    norm_epsilon: float = setting(checkpoint="force", checked=True)
    swiglu: bool = setting(checkpoint="force", checked=True)
    group_query_attention: bool = setting(checkpoint="force")
    use_rotary_position_embeddings: bool = setting(checkpoint="force")
    # RoPE scaling (checked against the checkpoint as one scaling: runtime/checkpoint's rope rule).
    rope_scaling_type: str | None = setting(checkpoint="force")
    rope_scaling_factor: float | None = setting(checkpoint="force")
    low_freq_factor: float | None = setting(checkpoint="force")
    high_freq_factor: float | None = setting(checkpoint="force")
    original_max_position_embeddings: int | None = setting(checkpoint="force")
    # Mixture of experts (None experts: a dense model). moe_layer_freq is validated into one 0/1 per layer.
    num_experts: int | None = setting(checkpoint="force", checked=True)
    moe_router_topk: int = setting(checkpoint="force", checked=True)
    moe_ffn_hidden_size: int | None = setting(checkpoint="force", checked=True)
    moe_router_pre_softmax: bool = setting(checkpoint="force", checked=True)
    moe_shared_expert_intermediate_size: int | None = setting(checkpoint="force", checked=True)
    moe_shared_expert_gate: bool = setting(checkpoint="force", checked=True)
    moe_layer_freq: Any = setting(checkpoint="force", checked=True)
    rope_scaling_original_max_position_embeddings: int | None = setting(checkpoint="force")  # yarn, longrope
    rope_scaling_mscale: float | None = setting(checkpoint="force")
    rope_scaling_mscale_all_dim: float | None = setting(checkpoint="force")
    beta_fast: float | None = setting(checkpoint="force")
    beta_slow: float | None = setting(checkpoint="force")
    long_factor: tuple | None = setting(checkpoint="force")
    short_factor: tuple | None = setting(checkpoint="force")
    disable_bias_linear: bool = setting(checkpoint="force")  # checked as the checkpoint's add_bias_linear
    max_position_embeddings: int = setting(checkpoint="fill")
    padded_vocab_size: int | None = setting(checkpoint="fill")  # the flag; the run's value is the plan's
    make_vocab_size_divisible_by: int = setting()
    attention_dropout: float = setting(checkpoint="force", megatron="attention_dropout")
    hidden_dropout: float = setting(checkpoint="force", megatron="hidden_dropout")
    attention_softmax_in_fp32: bool = setting(megatron="attention_softmax_in_fp32")
    init_method_std: float = setting(megatron="init_method_std")
    use_cpu_initialization: bool = setting(megatron="use_cpu_initialization")
    cross_entropy_loss_fusion: bool = setting(megatron="cross_entropy_loss_fusion")
    calculate_per_token_loss: bool = setting(megatron="calculate_per_token_loss")
    transformer_impl: str = setting()
    spec: tuple | None = setting()  # --spec: checked against the family (models/names.LAYER_SPECS)

    def rope_scaling(self, recorded: Mapping | None) -> dict | None:
        """RoPE scaling of the run: the checkpoint's ``recorded`` one exactly, completed or contradicted by
        flags.

        Without ``--rope-scaling-type`` the recorded scaling is used as it is (all of its parameters, e.g. a
        Llama-3.1 ``original_max_position_embeddings``); flags that describe another scaling are refused.
        """
        kind = self.rope_scaling_type
        if kind is None:
            return dict(recorded) if recorded else None
        rec = recorded if recorded and recorded.get("rope_type") == kind else {}
        scaling: dict[str, Any] = {"rope_type": kind, "factor": self.rope_scaling_factor}
        if kind == "llama3":
            scaling.update(
                low_freq_factor=_first(self.low_freq_factor, rec.get("low_freq_factor"), 1.0),
                high_freq_factor=_first(self.high_freq_factor, rec.get("high_freq_factor"), 4.0),
                original_max_position_embeddings=_first(self.original_max_position_embeddings,
                                                        rec.get("original_max_position_embeddings"), 8192))
        elif kind in ("yarn", "longrope"):
            scaling = self._long_context_scaling(kind, rec, check=recorded is None)
        if recorded is not None and scaling != recorded:
            raise ArgumentError(
                f"--rope-scaling-type {kind} gives rope_scaling {scaling} but the --load checkpoint "
                f"records {recorded}: drop the RoPE scaling flags (the checkpoint's are used)"
            )
        return scaling

    def moe_fields(self) -> dict[str, Any]:
        """The ``ModelConfig`` fields of the experts (all unset for a dense model)."""
        if not self.num_experts:
            return dict(num_experts=None, moe_router_topk=None, moe_ffn_hidden_size=None,
                        moe_router_pre_softmax=False, moe_shared_expert_intermediate_size=None,
                        moe_shared_expert_gate=False, moe_layer_freq=None)
        return dict(num_experts=self.num_experts, moe_router_topk=self.moe_router_topk,
                    moe_ffn_hidden_size=self.moe_ffn_hidden_size,
                    moe_router_pre_softmax=self.moe_router_pre_softmax,
                    moe_shared_expert_intermediate_size=self.moe_shared_expert_intermediate_size,
                    moe_shared_expert_gate=self.moe_shared_expert_gate,
                    moe_layer_freq=tuple(self.moe_layer_freq))
    def _long_context_scaling(self, kind: str, rec: Mapping, check: bool) -> dict[str, Any]:
        """YaRN / LongRoPE from the flags, what they leave unset from the checkpoint's same-type scaling."""
        from mindspeed_llm.models.rope_scaling import (
            LONGROPE_KEYS,
            SCALING_FLAGS,
            YARN_KEYS,
            check_scaling,
            says_nothing,
        )

        keys = YARN_KEYS if kind == "yarn" else LONGROPE_KEYS
        scaling = {k: v for k, v in rec.items() if k != "rope_type"}
        for attr, key in (("rope_scaling_factor", "factor"), *SCALING_FLAGS):
            value = getattr(self, attr)
            if value is None:
                continue
            if key not in keys:
                flag = "--" + attr.replace("_", "-")
                raise ArgumentError(f"{flag} does not apply to --rope-scaling-type {kind}")
            scaling[key] = list(value) if isinstance(value, tuple) else value
        for key in ("beta_fast", "beta_slow", "mscale_all_dim", "mscale"):  # (mscale after mscale_all_dim)
            if key in scaling and key not in rec and says_nothing(key, scaling[key], scaling):
                del scaling[key]  # transformers' default, spelled out by the launch
        try:
            if check:  # (a recorded scaling is compared whole instead)
                check_scaling(kind, scaling, self.kv_channels)
        except ValueError as exc:
            raise ArgumentError(f"--rope-scaling-type {kind}: {exc} (flags: --rope-scaling-factor, "
                                "--rope-scaling-original-max-position-embeddings, --long-factor, "
                                "--short-factor)") from None
        return {"rope_type": kind, **scaling}

    def model_config(self, vocab_rows: int, params_dtype: Any, base: Any = None):
        """Our ``ModelConfig`` for these flags (``base``: a checkpoint's config, for HF names and ids)."""
        from mindspeed_llm.models.families import ModelConfig

        recorded = base.rope_scaling if base is not None else None
        if self.rope_scaling_type is None and any(
                v is not None for v in (self.low_freq_factor, self.high_freq_factor,
                                        self.original_max_position_embeddings)):
            raise ArgumentError(
                "--low-freq-factor/--high-freq-factor/--original-max-position-embeddings need "
                "--rope-scaling-type llama3"
            )
        from mindspeed_llm.models.rope_scaling import SCALING_FLAGS

        stray = [attr for attr, _ in SCALING_FLAGS if getattr(self, attr) is not None]
        if self.rope_scaling_type not in ("yarn", "longrope") and stray:
            raise ArgumentError(f"--{stray[0].replace('_', '-')} needs --rope-scaling-type yarn or longrope")
        fields = dict(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            ffn_hidden_size=self.ffn_hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_query_groups=self.num_query_groups,
            kv_channels=self.kv_channels,
            vocab_size=vocab_rows,
            max_position_embeddings=self.max_position_embeddings,
            rotary_base=self.rotary_base,
            rope_scaling=self.rope_scaling(recorded),
            norm_epsilon=self.norm_epsilon,
            add_qkv_bias=self.add_qkv_bias,
            qk_layernorm=self.qk_layernorm,
            tie_word_embeddings=not self.untie_embeddings_and_output_weights,
            params_dtype=params_dtype,
            attention_dropout=self.attention_dropout,
            **self.moe_fields(),
        )
        if base is not None:
            return base.replace(**fields)
        if self.num_experts:
            arch, model_type = (
                ("Qwen3MoeForCausalLM", "qwen3_moe")
                if self.qk_layernorm
                else ("Qwen2MoeForCausalLM", "qwen2_moe")
                if self.add_qkv_bias
                else ("MixtralForCausalLM", "mixtral")
            )
            return ModelConfig(architecture=arch, model_type=model_type, **fields)
        arch, model_type = (
            ("Qwen3ForCausalLM", "qwen3")
            if self.qk_layernorm
            else ("Qwen2ForCausalLM", "qwen2")
            if self.add_qkv_bias
            else ("LlamaForCausalLM", "llama")
        )
        return ModelConfig(architecture=arch, model_type=model_type, **fields)


@dataclass(frozen=True)
class KernelsGroup:
    """Kernel choices: our feature patches (--use-*) and Megatron-LM's fusion switches."""

    use_flash_attn: bool = setting()
    use_fused_rmsnorm: bool = setting()
    use_fused_swiglu: bool = setting()
    use_fused_rotary_pos_emb: bool = setting()
    no_gradient_accumulation_fusion: bool = setting()
    no_masked_softmax_fusion: bool = setting()
    no_bias_dropout_fusion: bool = setting()
    no_bias_swiglu_fusion: bool = setting()
    no_rope_fusion: bool = setting()
    no_async_tensor_model_parallel_allreduce: bool = setting()
    use_fused_ring_attention_update: bool = setting()
    use_cp_send_recv_overlap: bool = setting()
    use_ascend_coc: bool = setting()  # MindSpeed (Ascend): not available, announced (flags)
    loss_compute_mode: str = setting()  # "chunk": the output layer + loss in blocks (patches/features.py)
    loss_chunk_size: int = setting()


@dataclass(frozen=True)
class ParallelGroup:
    """Process-group sizes and layout, and how gradients and parameters travel between them."""

    tensor_model_parallel_size: int = setting(megatron="tensor_model_parallel_size")
    pipeline_model_parallel_size: int = setting(megatron="pipeline_model_parallel_size")
    num_layers_per_virtual_pipeline_stage: int | None = setting()
    num_layer_list: str | None = setting()
    decoder_first_pipeline_num_layers: int | None = setting()
    decoder_last_pipeline_num_layers: int | None = setting()
    context_parallel_size: int = setting(megatron="context_parallel_size")
    context_parallel_algo: str = setting()
    ulysses_degree_in_cp: int | None = setting()
    sequence_parallel: bool = setting(megatron="sequence_parallel")
    expert_model_parallel_size: int = setting(megatron="expert_model_parallel_size")
    expert_tensor_parallel_size: int | None = setting(megatron="expert_tensor_parallel_size")
    use_distributed_optimizer: bool = setting()
    overlap_grad_reduce: bool = setting()
    overlap_param_gather: bool = setting()
    distributed_backend: str | None = setting()
    distributed_timeout_minutes: int = setting()
    no_shared_storage: bool = setting()


@dataclass(frozen=True)
class MoeGroup:
    """Mixture-of-experts routing and expert layout (the experts' shape is the model group's)."""

    moe_router_load_balancing_type: str = setting(megatron="moe_router_load_balancing_type")
    moe_aux_loss_coeff: float = setting(megatron="moe_aux_loss_coeff")
    moe_z_loss_coeff: float | None = setting(megatron="moe_z_loss_coeff")
    moe_token_dispatcher_type: str = setting(megatron="moe_token_dispatcher_type")
    # How the expert weights are held (and named in checkpoints): grouped weight1/weight2 or one MLP each.
    moe_grouped_gemm: bool = setting(checkpoint="force", checked=True, megatron="moe_grouped_gemm")
    moe_permutation_async_comm: bool = setting()
    # MindSpeed-LLM's spellings, folded by validation into the model group's fields.
    norm_topk_prob: bool = setting()
    n_shared_experts: int | None = setting()
    first_k_dense_replace: int | None = setting()


@dataclass(frozen=True)
class RecomputeGroup:
    """Activation recomputation."""

    recompute_granularity: str | None = setting(megatron="recompute_granularity")
    recompute_method: str | None = setting(megatron="recompute_method")
    recompute_num_layers: int | None = setting()
    recompute_activations: bool = setting()


@dataclass(frozen=True)
class PrecisionGroup:
    """Parameter and gradient precision, loss scaling."""

    bf16: bool = setting(megatron="bf16")
    fp16: bool = setting()
    reuse_fp32_param: bool = setting()  # MindSpeed (Ascend): not available, announced (flags)
    accumulate_allreduce_grads_in_fp32: bool = setting()
    loss_scale: float | None = setting()
    initial_loss_scale: float = setting()
    min_loss_scale: float = setting()
    loss_scale_window: float = setting()
    hysteresis: int = setting()

    @property
    def params_dtype(self):
        """torch dtype of the parameters: bf16 with fp32 main parameters in the optimizer, else fp32."""
        import torch

        return torch.bfloat16 if self.bf16 else torch.float32


@dataclass(frozen=True)
class OptimizerGroup:
    """Optimizer, learning-rate and weight-decay schedules."""

    optimizer: str = setting()
    lr: float = setting()
    min_lr: float = setting()
    lr_decay_style: str = setting()
    lr_decay_iters: int | None = setting()
    lr_decay_samples: int | None = setting()
    lr_warmup_samples: int = setting()
    lr_warmup_fraction: float | None = setting()
    lr_warmup_iters: int = setting()
    lr_warmup_init: float = setting()
    lr_wsd_decay_style: str = setting()
    lr_wsd_decay_iters: int | None = setting()
    lr_wsd_decay_samples: int | None = setting()
    weight_decay: float = setting()
    start_weight_decay: float = setting()
    end_weight_decay: float = setting()
    weight_decay_incr_style: str = setting()
    clip_grad: float = setting()
    adam_beta1: float = setting()
    adam_beta2: float = setting()
    adam_eps: float = setting()
    sgd_momentum: float = setting()
    override_opt_param_scheduler: bool = setting()
    use_checkpoint_opt_param_scheduler: bool = setting()


@dataclass(frozen=True)
class TrainingGroup:
    """Batch sizes, length of the run, seed, exit conditions, garbage collection."""

    micro_batch_size: int = setting()
    global_batch_size: int = setting()
    rampup_batch_size: tuple | None = setting()
    train_iters: int = setting()
    train_samples: int | None = setting()
    seed: int = setting()
    exit_interval: int | None = setting()
    exit_duration_in_mins: float | None = setting()
    manual_gc: bool = setting()
    manual_gc_interval: int = setting()
    manual_gc_eval: bool = setting()
    empty_unused_memory_level: int = setting()
    exit_signal_handler: bool = setting()
    check_for_nan_in_loss_and_grad: bool = setting()


@dataclass(frozen=True)
class DataGroup:
    """Data sources, sequence length, tokenizer, data loading."""

    data_path: tuple | None = setting()
    train_data_path: tuple | None = setting()
    valid_data_path: tuple | None = setting()
    test_data_path: tuple | None = setting()
    mock_data: bool = setting()
    dataloader_type: str = setting()
    split: str = setting()
    seq_length: int = setting(checkpoint="fill")
    tokenizer_type: str = setting()
    tokenizer_name_or_path: str | None = setting()
    tokenizer_model: str | None = setting()
    tokenizer_not_use_fast: bool = setting()
    vocab_size: int | None = setting()
    data_cache_path: str | None = setting()
    no_mmap_bin_files: bool = setting()
    reset_position_ids: bool = setting()
    reset_attention_mask: bool = setting()
    eod_mask_loss: bool = setting()
    num_workers: int = setting()
    no_create_attention_mask_in_dataloader: bool = setting()


@dataclass(frozen=True)
class InstructionGroup:
    """Instruction fine-tuning (posttrain_gpt.py --stage sft, MindSpeed-LLM's flags)."""

    stage: str | None = setting()
    is_instruction_dataset: bool = setting()
    prompt_type: str | None = setting()
    no_pad_to_seq_lengths: bool = setting()
    variable_seq_lengths: bool = setting()
    pad_to_multiple_of: int = setting()


@dataclass(frozen=True)
class CheckpointGroup:
    """What is loaded and saved, where, how often, in which format."""

    load: str | None = setting()
    save: str | None = setting()
    save_interval: int | None = setting()
    no_load_optim: bool = setting()
    no_load_rng: bool = setting()
    no_save_optim: bool = setting()
    no_save_rng: bool = setting()
    finetune: bool = setting()
    ckpt_format: str = setting()
    exit_on_missing_checkpoint: bool = setting()
    use_checkpoint_args: bool = setting()
    ckpt_step: int | None = setting()


@dataclass(frozen=True)
class LoggingGroup:
    """Logging and evaluation."""

    log_interval: int = setting()
    log_throughput: bool = setting()
    eval_interval: int = setting()
    eval_iters: int = setting()
    tensorboard_dir: str | None = setting()
    tensorboard_log_interval: int = setting()
    log_params_norm: bool = setting()
    log_num_zeros_in_grad: bool = setting()


@dataclass(frozen=True)
class InferenceGroup:
    """inference.py's generation flags (``flags.add_inference_args``)."""

    task: tuple = setting()
    prompt: tuple | None = setting()
    prompts_file: str | None = setting()
    max_new_tokens: int = setting()
    max_batch_size: int = setting()
    temperature: float | None = setting()
    top_k: int | None = setting()
    top_p: float | None = setting()
    history_turns: int = setting()
    use_kv_cache: bool = setting()


# Flags accepted (or refused) at validation that shape nothing afterwards: they stay in Megatron's namespace
# for readers that look them up, and belong to no group.
LAUNCH_ONLY = ("use_mcore_models", "use_legacy_models", "local_rank")

GROUPS: tuple[tuple[str, type], ...] = (
    ("model", ModelGroup),
    ("kernels", KernelsGroup),
    ("parallel", ParallelGroup),
    ("moe", MoeGroup),
    ("recompute", RecomputeGroup),
    ("precision", PrecisionGroup),
    ("optimizer", OptimizerGroup),
    ("training", TrainingGroup),
    ("data", DataGroup),
    ("instruction", InstructionGroup),
    ("checkpoint", CheckpointGroup),
    ("logging", LoggingGroup),
)


@functools.cache
def lora_dests() -> tuple[str, ...]:
    """The destinations of the LoRA module's flags (``mindspeed_llm.lora.config.add_lora_flags``)."""
    from mindspeed_llm.lora.config import add_lora_flags

    parser = argparse.ArgumentParser(add_help=False)
    add_lora_flags(parser)
    return tuple(parser_dests(parser))


@functools.cache
def from_hf_dests() -> tuple[str, ...]:
    """The destinations of the HF-folder path's flags (``mindspeed_llm.from_hf.config.add_from_hf_flags``)."""
    from mindspeed_llm.from_hf.config import from_hf_dests as dests

    return dests()
def dpo_dests() -> tuple[str, ...]:
    """The destinations of the preference-alignment flags (``mindspeed_llm.dpo.config.add_dpo_flags``)."""
    from mindspeed_llm.dpo.config import add_dpo_flags

    parser = argparse.ArgumentParser(add_help=False)
    add_dpo_flags(parser)
    return tuple(parser_dests(parser))


def frozen_value(value: Any) -> Any:
    """``value`` with lists as tuples and dicts as read-only mappings, all the way down."""
    if isinstance(value, (list, tuple)):
        return tuple(frozen_value(v) for v in value)
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: frozen_value(v) for k, v in value.items()})
    return value


def _group_from(cls: type, values: Mapping[str, Any]):
    return cls(**{f.name: frozen_value(values[f.name]) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class RunConfig:
    """The validated flags of one launch, in groups; ``lora``, ``dpo``, ``launch`` and ``extra`` are
    read-only mappings."""

    model: ModelGroup
    kernels: KernelsGroup
    parallel: ParallelGroup
    moe: MoeGroup
    recompute: RecomputeGroup
    precision: PrecisionGroup
    optimizer: OptimizerGroup
    training: TrainingGroup
    data: DataGroup
    instruction: InstructionGroup
    checkpoint: CheckpointGroup
    logging: LoggingGroup
    inference: InferenceGroup | None
    lora: Mapping[str, Any]
    dpo: Mapping[str, Any]
    launch: Mapping[str, Any]
    extra: Mapping[str, Any]
    from_hf: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        """The groups of a validated namespace (``config.validate.validate_args``'s result)."""
        values = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        missing = [f.name for _, g in GROUPS for f in dataclasses.fields(g) if f.name not in values]
        if missing:
            raise ArgumentError(f"not a training launch's flags: {', '.join(missing)} missing")
        groups = {name: _group_from(cls_, values) for name, cls_ in GROUPS}
        taken = {f.name for _, g in GROUPS for f in dataclasses.fields(g)}
        inference_names = {f.name for f in dataclasses.fields(InferenceGroup)}
        inference = None
        if inference_names <= values.keys():
            inference = _group_from(InferenceGroup, values)
            taken |= inference_names
        lora = {k: values[k] for k in lora_dests() if k in values}
        from_hf = {k: values[k] for k in from_hf_dests() if k in values}
        dpo = {k: values[k] for k in dpo_dests() if k in values}
        launch = {k: values[k] for k in LAUNCH_ONLY if k in values}
        owned = {*taken, *lora, *dpo, *launch, *from_hf}
        extra = {k: v for k, v in values.items() if k not in owned}
        return cls(**groups, inference=inference, lora=frozen_value(lora), dpo=frozen_value(dpo),
                   launch=frozen_value(launch), extra=frozen_value(extra), from_hf=frozen_value(from_hf))

    def values(self) -> dict[str, Any]:
        """Every flag's destination and value (frozen values), whichever group holds it."""
        groups = [getattr(self, name) for name, _ in GROUPS] + ([self.inference] if self.inference else [])
        out = {f.name: getattr(group, f.name) for group in groups for f in dataclasses.fields(group)}
        for mapping in (self.lora, self.dpo, self.from_hf, self.launch, self.extra):
            out.update(mapping)
        return out


def _group_fields():
    for _, cls in GROUPS:
        yield from dataclasses.fields(cls)


def checkpoint_settings(kind: str) -> tuple[str, ...]:
    """Settings ``--use-checkpoint-args`` takes from the checkpoint: ``"fill"`` (when unset) or
    ``"force"``."""
    return tuple(f.name for f in _group_fields() if f.metadata["checkpoint"] == kind)


def checked_model_settings() -> tuple[str, ...]:
    """Model-defining settings a launch must share with the ``--load`` checkpoint it continues."""
    return tuple(f.name for f in _group_fields() if f.metadata["checked"])


# ---- translators to megatron-core's configs ----------------------------------------------------------------
def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _megatron_fields(config: RunConfig) -> dict[str, Any]:
    """The settings marked ``megatron="name"``, under megatron-core's ``TransformerConfig`` names."""
    out = {}
    for name, cls in GROUPS:
        group = getattr(config, name)
        for f in dataclasses.fields(cls):
            if f.metadata["megatron"]:
                out[f.metadata["megatron"]] = getattr(group, f.name)
    return out


def transformer_config(config: RunConfig, plan: Any) -> Any:
    """megatron-core ``TransformerConfig`` of the run: the plan's model config and layout, and the flags."""
    parallel = config.parallel
    overrides: dict[str, Any] = dict(
        _megatron_fields(config),
        virtual_pipeline_model_parallel_size=plan.virtual_pipeline_model_parallel_size,
        params_dtype=plan.params_dtype,
        pipeline_dtype=plan.params_dtype,
        fp16=False,
        gradient_accumulation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        # Megatron-LM's default for --swiglu: megatron's fused SwiGLU (its own forward/backward math;
        # on the CPU its compiled kernels are the eager ones of the ops-cpu patches).
        bias_activation_fusion=not config.kernels.no_bias_swiglu_fusion,
        apply_rope_fusion=False,
        cross_entropy_fusion_impl="native",
        batch_p2p_comm=False,  # gloo, and VPP with batched p2p gives wrong gradients upstream
        recompute_num_layers=(config.recompute.recompute_num_layers
                              if config.recompute.recompute_granularity == "full" else None),
    )
    if (
        parallel.context_parallel_size > 1
    ):  # megatron-core's spelling of the algorithm, read by the attention module
        overrides["cp_comm_type"] = CONTEXT_PARALLEL_ALGOS[parallel.context_parallel_algo]
        if (
            parallel.context_parallel_algo == "hybrid_cp_algo"
        ):  # [Ulysses (a2a), ring (p2p)] sizes, megatron's order
            ulysses = parallel.ulysses_degree_in_cp
            overrides["hierarchical_context_parallel_sizes"] = [
                ulysses,
                parallel.context_parallel_size // ulysses,
            ]
    from mindspeed_llm.patches.features import transformer_config_overrides

    # --use-fused-swiglu routes megatron's MLP through the fused kernel only with bias_activation_fusion.
    overrides.update(transformer_config_overrides(use_fused_swiglu=config.kernels.use_fused_swiglu))
    if plan.num_layer_list_parsed:
        from mindspeed_llm.models.families import pipeline_layout

        layout = pipeline_layout(list(plan.num_layer_list_parsed))
        if layout is not None:
            overrides["pipeline_model_parallel_layout"] = layout
    megatron_config = plan.model_config.to_transformer_config(**overrides)
    # Set after validation, as MindSpeed-LLM does: megatron-core 0.16.1 refuses variable_seq_lengths with its
    # default MoE token dispatcher even for dense models, which have no dispatcher.
    megatron_config.variable_seq_lengths = bool(config.instruction.variable_seq_lengths)
    return megatron_config


def ddp_config(config: RunConfig):
    """megatron-core ``DistributedDataParallelConfig`` (the parallel group, fp32 reduction of the precision
    group)."""
    from megatron.core.distributed import DistributedDataParallelConfig

    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=config.precision.accumulate_allreduce_grads_in_fp32,
        overlap_grad_reduce=config.parallel.overlap_grad_reduce,
        overlap_param_gather=config.parallel.overlap_param_gather,
        use_distributed_optimizer=config.parallel.use_distributed_optimizer,
        check_for_nan_in_grad=False,
    )


def optimizer_config(config: RunConfig):
    """megatron-core ``OptimizerConfig`` (the optimizer group, loss scaling, sharding and zero-count
    logging)."""
    from megatron.core.optimizer import OptimizerConfig

    opt, precision, parallel = config.optimizer, config.precision, config.parallel
    return OptimizerConfig(
        optimizer=opt.optimizer, lr=opt.lr, min_lr=opt.min_lr, weight_decay=opt.weight_decay,
        bf16=precision.bf16, fp16=False, params_dtype=precision.params_dtype,
        loss_scale=precision.loss_scale, initial_loss_scale=precision.initial_loss_scale,
        min_loss_scale=precision.min_loss_scale, loss_scale_window=precision.loss_scale_window,
        hysteresis=precision.hysteresis, adam_beta1=opt.adam_beta1, adam_beta2=opt.adam_beta2,
        adam_eps=opt.adam_eps, sgd_momentum=opt.sgd_momentum,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        overlap_param_gather=parallel.overlap_param_gather, clip_grad=opt.clip_grad,
        log_num_zeros_in_grad=config.logging.log_num_zeros_in_grad,
    )
