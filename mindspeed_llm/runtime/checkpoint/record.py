"""What a checkpoint says about its model and run: one versioned record, written and read by every tool.

The converter, the trainer and inference write and read the same :class:`CheckpointRecord`:

- ``model``: the HF config and architecture it came from, the vocabulary rows that are real and the
  padded rows saved, and the model-defining settings under their Megatron flag names (what a launch
  is checked against);
- ``layout``: TP, PP, the layers per pipeline stage, the virtual pipeline stages;
- ``lora``: the adapter's settings, when the checkpoint holds one: the LoRA feature's own
  :class:`~mindspeed_llm.lora.config.LoraConfig` (its :meth:`~LoraConfig.to_record` in the files);
- ``progress``: iteration, consumed samples, FLOPs.

A file holds it as a plain dict under :data:`RECORD_KEY` (``torch.load(weights_only=True)`` reads
it), beside the Megatron-LM entries that Megatron-LM and MindSpeed-LLM read: ``args`` (a Namespace),
``checkpoint_version``, ``iteration``, ``num_floating_point_operations_so_far``. Both are made from the
record in one place, :func:`file_header`; ``args`` from :meth:`CheckpointRecord.megatron_args`.
A file without a record (written before it existed, or by Megatron-LM) is read from its ``args``
(:meth:`CheckpointRecord.from_megatron_args`); a record of a later :data:`RECORD_VERSION` is refused.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mindspeed_llm.config.groups import checked_model_settings
from mindspeed_llm.lora.config import LoraConfig
from mindspeed_llm.models.families import ROPE_SCALING_FLAGS, rope_scaling_to_flags
from mindspeed_llm.runtime.checkpoint.errors import CheckpointError, DamagedCheckpointError

RECORD_VERSION = 1
RECORD_KEY = "checkpoint_record"
CHECKPOINT_VERSION = 3.0  # Megatron-LM's ``checkpoint_version`` of the files written here

ROPE_SETTINGS = tuple(attr for attr, _ in ROPE_SCALING_FLAGS)
# The model-defining settings a checkpoint records, by Megatron flag attribute (``--`` + dashes): a launch
# that contradicts one of them is refused (``launch.check_checkpoint_args``). Which they are is the
# configuration's (``checked=True`` fields of config/groups.py); the bias is recorded as Megatron-LM's
# ``add_bias_linear``, and the RoPE scaling as one scaling.
MODEL_SETTINGS = (*checked_model_settings(), "add_bias_linear", *ROPE_SETTINGS)
_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_PLAIN = (bool, int, float, str, type(None), torch.dtype)


@dataclass(frozen=True)
class ModelRecord:
    """The model a checkpoint holds."""

    hf_config: Mapping[str, Any] | None = (
        None  # the HF config.json it is (to_hf_config), for mg->hf and checks
    )
    hf_architecture: str | None = None
    hf_vocab_size: int | None = None  # embedding rows that are real vocabulary (the HF embedding's rows)
    padded_vocab_size: int | None = None  # embedding rows saved, padding included
    make_vocab_size_divisible_by: int | None = None
    max_position_embeddings: int | None = None
    params_dtype: str | None = None  # fp32 | bf16 | fp16
    hf_dir: str | None = None  # the HF folder it was converted from (mg->hf's default --hf-dir)
    settings: Mapping[str, Any] = field(default_factory=dict)  # MODEL_SETTINGS recorded (a subset)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.settings) - set(MODEL_SETTINGS))
        if unknown:
            raise ValueError(
                f"unknown model settings {unknown}: a record holds only {', '.join(MODEL_SETTINGS)}"
            )
        object.__setattr__(self, "settings", types.MappingProxyType(dict(self.settings)))
        if self.hf_config is not None:
            object.__setattr__(self, "hf_config", types.MappingProxyType(copy.deepcopy(dict(self.hf_config))))

    @classmethod
    def from_model_config(cls, cfg, *, padded_vocab_size: int, make_vocab_size_divisible_by: int,
                          hf_dir: str | None = None, moe_grouped_gemm: bool = False) -> ModelRecord:
        """The record of a :class:`~mindspeed_llm.models.families.ModelConfig` (what the converter writes;
        ``moe_grouped_gemm``: the experts are held as grouped weights)."""
        settings = dict(
            num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, ffn_hidden_size=cfg.ffn_hidden_size,
            num_attention_heads=cfg.num_attention_heads, num_query_groups=cfg.num_query_groups,
            kv_channels=cfg.kv_channels, position_embedding_type="rope", rotary_base=cfg.rotary_base,
            normalization="RMSNorm", norm_epsilon=cfg.norm_epsilon, swiglu=True, add_bias_linear=False,
            add_qkv_bias=cfg.add_qkv_bias, qk_layernorm=cfg.qk_layernorm,
            untie_embeddings_and_output_weights=not cfg.tie_word_embeddings,
            **rope_scaling_to_flags(cfg.rope_scaling),
        )
        if cfg.num_experts:
            settings.update(
                num_experts=cfg.num_experts, moe_router_topk=cfg.moe_router_topk,
                moe_ffn_hidden_size=cfg.moe_ffn_hidden_size,
                moe_router_pre_softmax=cfg.moe_router_pre_softmax,
                moe_shared_expert_intermediate_size=cfg.moe_shared_expert_intermediate_size,
                moe_shared_expert_gate=cfg.moe_shared_expert_gate, moe_layer_freq=list(cfg.moe_layers()),
                moe_grouped_gemm=bool(moe_grouped_gemm),
            )
        return cls(
            hf_config=cfg.to_hf_config(),
            hf_architecture=cfg.architecture,
            hf_vocab_size=cfg.vocab_size,
            padded_vocab_size=padded_vocab_size,
            make_vocab_size_divisible_by=make_vocab_size_divisible_by,
            max_position_embeddings=cfg.max_position_embeddings,
            params_dtype=dtype_name(cfg.params_dtype),
            hf_dir=hf_dir,
            settings=settings,
        )


@dataclass(frozen=True)
class LayoutRecord:
    """How the model is split over the files."""

    tp: int | None = None  # tensor-parallel size
    pp: int | None = None  # pipeline-parallel size
    num_layer_list: tuple[int, ...] | None = None  # layers per pipeline stage; None: even
    vpp: int | None = None  # virtual pipeline stages (model chunks) per pipeline rank; None: one
    ep: int | None = None  # expert-parallel size (MoE); None: 1 or not recorded
    etp: int | None = None  # expert tensor-parallel size (MoE); None: the TP size or not recorded


@dataclass(frozen=True)
class ProgressRecord:
    """Where the run stood when it saved."""

    iteration: int = 0
    consumed_train_samples: int = 0
    consumed_valid_samples: int = 0
    floating_point_operations_so_far: float = 0.0


@dataclass(frozen=True)
class CheckpointRecord:
    """What a checkpoint says about its model and run (schema :data:`RECORD_VERSION`)."""

    model: ModelRecord
    layout: LayoutRecord
    progress: ProgressRecord = ProgressRecord()
    lora: LoraConfig | None = None  # the adapter's settings (LoraConfig.recorded()), when it holds one
    version: int = RECORD_VERSION

    def __post_init__(self) -> None:
        if self.lora is not None:  # the adapter's settings only: the run's seed and --lora-load are not its
            object.__setattr__(self, "lora", self.lora.recorded())

    def replace(self, **changes) -> CheckpointRecord:
        """A copy with some sections replaced."""
        return dataclasses.replace(self, **changes)

    # ---- plain dict (in the files) -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain data (what ``torch.load(weights_only=True)`` and JSON read back)."""
        model = {f.name: _plain_copy(getattr(self.model, f.name)) for f in dataclasses.fields(ModelRecord)}
        layout = dataclasses.asdict(self.layout)
        layout["num_layer_list"] = list(self.layout.num_layer_list) if self.layout.num_layer_list else None
        lora = self.lora.to_record() if self.lora is not None else None
        return {"version": self.version, "model": model, "layout": layout, "lora": lora,
                "progress": dataclasses.asdict(self.progress)}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> CheckpointRecord:
        """Read what :meth:`to_dict` wrote; ``where`` (the file) names it in errors. Later versions are
        refused."""
        if not isinstance(data, dict) or not isinstance(data.get("version"), int):
            raise DamagedCheckpointError(
                f"{where}: its {RECORD_KEY} is not a versioned record: the file is damaged"
            )
        version = data["version"]
        if version > RECORD_VERSION:
            raise CheckpointError(
                f"{where} holds a checkpoint record of version {version}; this mindspeed_llm reads versions "
                f"up to {RECORD_VERSION}: load it with the newer mindspeed_llm that wrote it"
            )
        try:
            layout = dict(data["layout"])
            if layout.get("num_layer_list"):
                layout["num_layer_list"] = tuple(int(n) for n in layout["num_layer_list"])
            lora = data.get("lora")
            lora = LoraConfig.from_record(lora) if lora is not None else None
            return cls(model=ModelRecord(**data["model"]), layout=LayoutRecord(**layout),
                       progress=ProgressRecord(**data["progress"]), lora=lora, version=version)
        except (KeyError, TypeError, ValueError) as exc:
            raise DamagedCheckpointError(
                f"{where}: its {RECORD_KEY} (version {version}) does not fit the schema "
                f"({exc}): the file is damaged"
            ) from None

    # ---- Megatron-LM's args --------------------------------------------------------------------------------
    @classmethod
    def from_megatron_args(cls, args: argparse.Namespace | None, *, iteration: int = 0, flops: float = 0.0,
                           where: str = "the checkpoint") -> CheckpointRecord:
        """The record a Megatron ``args`` Namespace implies (a run's flags, or a file written without a
        record)."""
        args = args if args is not None else argparse.Namespace()
        lora = LoraConfig.from_recorded_args(args)
        hf_config = getattr(args, "hf_config", None)
        model = ModelRecord(
            hf_config=dict(hf_config) if hf_config else None,
            hf_architecture=getattr(args, "hf_architecture", None),
            hf_vocab_size=getattr(args, "hf_vocab_size", None),
            padded_vocab_size=getattr(args, "padded_vocab_size", None),
            make_vocab_size_divisible_by=getattr(args, "make_vocab_size_divisible_by", None),
            max_position_embeddings=getattr(args, "max_position_embeddings", None),
            params_dtype=dtype_name(getattr(args, "params_dtype", None)),
            hf_dir=getattr(args, "hf_dir", None),
            settings=_recorded_settings(args),
        )
        moe = bool(getattr(args, "num_experts", None))  # a dense model has no expert layout (as converted)
        layout = LayoutRecord(tp=getattr(args, "tensor_model_parallel_size", None),
                              pp=getattr(args, "pipeline_model_parallel_size", None),
                              num_layer_list=_layer_list(getattr(args, "num_layer_list", None), where),
                              vpp=getattr(args, "virtual_pipeline_model_parallel_size", None),
                              ep=getattr(args, "expert_model_parallel_size", None) if moe else None,
                              etp=getattr(args, "expert_tensor_parallel_size", None) if moe else None)
        progress = ProgressRecord(iteration=int(iteration or 0),
                                  consumed_train_samples=int(getattr(args, "consumed_train_samples", 0) or 0),
                                  consumed_valid_samples=int(getattr(args, "consumed_valid_samples", 0) or 0),
                                  floating_point_operations_so_far=float(flops or 0.0))
        return cls(model=model, layout=layout, progress=progress, lora=lora)

    def megatron_args(self, base: argparse.Namespace | None = None) -> argparse.Namespace:
        """Megatron-LM's ``args`` for the files: ``base`` (a copy) with every recorded value set on it.

        The one place a checkpoint's Namespace is made: the trainer passes its run's plain arguments, the
        converter the source checkpoint's (mg->mg) or its provenance (hf->mg).
        """
        m, layout, progress = self.model, self.layout, self.progress
        kept = vars(copy.deepcopy(base)) if base is not None else {}
        values = dict(m.settings)
        values.update(
            hf_config=_plain_copy(m.hf_config),
            hf_architecture=m.hf_architecture,
            hf_vocab_size=m.hf_vocab_size,
            padded_vocab_size=m.padded_vocab_size,
            make_vocab_size_divisible_by=m.make_vocab_size_divisible_by,
            max_position_embeddings=m.max_position_embeddings,
            hf_dir=m.hf_dir,
            tensor_model_parallel_size=layout.tp,
            pipeline_model_parallel_size=layout.pp,
            num_layer_list=",".join(map(str, layout.num_layer_list)) if layout.num_layer_list else None,
            virtual_pipeline_model_parallel_size=layout.vpp,
            consumed_train_samples=progress.consumed_train_samples,
            consumed_valid_samples=progress.consumed_valid_samples,
        )
        if layout.ep is not None:  # MoE layouts (a record without them keeps the base's)
            values.update(expert_model_parallel_size=layout.ep, expert_tensor_parallel_size=layout.etp)
        if m.params_dtype is not None:
            dtype = parse_dtype_name(m.params_dtype)
            values.update(params_dtype=dtype, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16)
        if self.lora is not None:
            values.update(self.lora.checkpoint_args())
        # Megatron-LM flags the record implies; a base that has them keeps its own.
        implied = {"use_mcore_models": True}
        if "num_query_groups" in m.settings:
            implied["group_query_attention"] = m.settings["num_query_groups"] != m.settings.get(
                "num_attention_heads"
            )
        return argparse.Namespace(**{**implied, **kept, **values})


# ---- the header of a file ----------------------------------------------------------------------------------
def file_header(record: CheckpointRecord, base_args: argparse.Namespace | None = None) -> dict:
    """The entries every checkpoint file carries (rank file or ``common.pt``): Megatron-LM's and the
    record."""
    return {"args": record.megatron_args(base_args), "checkpoint_version": CHECKPOINT_VERSION,
            "iteration": record.progress.iteration,
            "num_floating_point_operations_so_far": record.progress.floating_point_operations_so_far,
            RECORD_KEY: record.to_dict()}


def read_header(state: dict, where: str, iteration: int = 0) -> CheckpointRecord:
    """The record of a loaded file (rank file or ``common.pt``); from its ``args`` when it has none.

    ``iteration`` (its folder's) stands in for a file without an ``iteration`` entry.
    """
    if RECORD_KEY in state:
        return CheckpointRecord.from_dict(state[RECORD_KEY], where)
    args = state.get("args")
    if args is not None and not isinstance(args, argparse.Namespace):
        raise DamagedCheckpointError(f"{where}: 'args' is a {type(args).__name__}, not a Namespace")
    return CheckpointRecord.from_megatron_args(args, iteration=state.get("iteration", iteration),
                                               flops=state.get("num_floating_point_operations_so_far", 0.0),
                                               where=where)


# ---- helpers -----------------------------------------------------------------------------------------------
def plain_args(args: argparse.Namespace) -> argparse.Namespace:
    """The plain-data part of ``args`` (what ``torch.load(weights_only=True)`` can read back)."""
    return argparse.Namespace(**{k: v for k, v in vars(args).items() if not k.startswith("_") and _plain(v)})


def dtype_name(dtype: Any) -> str | None:
    """``torch.bfloat16`` / ``"bfloat16"`` -> ``"bf16"`` (None for None or a dtype the record does not
    know)."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        try:
            dtype = parse_dtype_name(str(dtype))
        except ValueError:
            return None
    return _DTYPES.get(dtype)


def parse_dtype_name(name: str) -> torch.dtype:
    """``"bf16"`` -> ``torch.bfloat16`` (and the spellings :func:`~mindspeed_llm.models.families.parse_dtype`
    reads)."""
    from mindspeed_llm.models.families import parse_dtype

    return parse_dtype(name)


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _plain_copy(value: Any) -> Any:
    """A deep copy with mappings as plain dicts (MappingProxyType is not plain data)."""
    if isinstance(value, Mapping):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain_copy(v) for v in value)
    return value


def _layer_list(value: Any, where: str) -> tuple[int, ...] | None:
    """``"6,8,8,6"`` (or a list) -> (6, 8, 8, 6); None or empty -> None."""
    if not value:
        return None
    try:
        parts = value if isinstance(value, (list, tuple)) else str(value).replace(" ", "").split(",")
        return tuple(int(n) for n in parts if str(n))
    except ValueError:
        raise DamagedCheckpointError(
            f"{where}: its args hold num_layer_list={value!r}, not a comma-separated list "
            "of layer counts: the file is damaged"
        ) from None


def _recorded_settings(args: argparse.Namespace) -> dict:
    """The model-defining settings ``args`` holds.

    Older conversions recorded only the HF config for RoPE and the norm: those settings are read from it.
    """
    found = {attr: getattr(args, attr) for attr in MODEL_SETTINGS
             if (attr in vars(args) if attr == "add_bias_linear" else hasattr(args, attr))}
    if any(attr in found for attr in ROPE_SETTINGS):
        # The RoPE scaling is one setting: a file written before a scaling flag existed had it unset
        # (YaRN and LongRoPE were refused then), so its absent parts are None, as the converter records them.
        found.update({attr: None for attr in ROPE_SETTINGS if attr not in found})
    hf_config = getattr(args, "hf_config", None)
    if hf_config and not hasattr(args, "rope_scaling_type"):
        from mindspeed_llm.models.families import ModelConfig

        try:
            cfg = ModelConfig.from_hf_config(dict(hf_config))
        except Exception:  # noqa: BLE001 - an unreadable HF config just records less
            return found
        found.update(rope_scaling_to_flags(cfg.rope_scaling))
        found.setdefault("rotary_base", cfg.rotary_base)
        found.setdefault("norm_epsilon", cfg.norm_epsilon)
    return found
