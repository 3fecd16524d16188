"""The run's plan: the values derived from the configuration and the world, built once.

:class:`RunPlan` is built after the process groups exist and the tokenizer and the ``--load``
checkpoint's record are known (``mindspeed_llm.runtime.model.plan_run``): the world, this process's
rank and device, the parallel layout (data-parallel size, micro-batches per step, virtual pipeline
stages, layers per stage), the parameter dtype, the padded vocabulary and the model config completed
by what the checkpoint recorded, with the HF record fields saved checkpoints carry. Nothing writes
them back into the parsed flags: ``config/namespace.py`` derives Megatron's namespace from the
configuration and the plan.

The layout rules are plain functions of the flags' values (:func:`parallel_layout` and the four it
calls): validation runs them before the process group starts, so a launch that cannot be laid out
fails at once on every rank, with the same messages. Torch-free at import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mindspeed_llm.config.flags import ArgumentError, str2list
from mindspeed_llm.config.groups import RunConfig, frozen_value


# ---- the parallel layout -----------------------------------------------------------------------------------
def data_parallel_size(world_size: int, tp: int, pp: int, cp: int) -> int:
    """The data-parallel size: what the world leaves after TP x PP x CP."""
    if world_size % (tp * pp * cp):
        cp_part = f" x --context-parallel-size {cp}" if cp > 1 else ""
        raise ArgumentError(
            f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} x "
            f"--pipeline-model-parallel-size {pp}{cp_part}: launch a multiple of {tp * pp * cp} "
            "processes"
        )
    return world_size // (tp * pp * cp)


def stage_layers(num_layer_list: str | None, num_layers: int, pp: int,
                 layers_per_virtual_stage: int | None) -> list[int] | None:
    """Layers per pipeline stage of --num-layer-list (None: the even split, which needs PP to divide the
    layers)."""
    if num_layer_list:
        counts = str2list(num_layer_list)
        if len(counts) != pp or sum(counts) != num_layers:
            raise ArgumentError(f"--num-layer-list {num_layer_list} must have {pp} entries (one per pipeline "
                                f"stage) that add up to --num-layers {num_layers}")
        if layers_per_virtual_stage:
            raise ArgumentError(
                "--num-layer-list cannot be combined with --num-layers-per-virtual-pipeline-stage"
            )
        return counts
    if num_layers % pp:
        raise ArgumentError(f"--num-layers {num_layers} is not divisible by --pipeline-model-parallel-size "
                            f"{pp}: change PP or give --num-layer-list (e.g. uneven layers per stage)")
    return None


def virtual_stages(num_layers: int, pp: int, layers_per_virtual_stage: int | None) -> int | None:
    """Virtual pipeline stages per stage (--num-layers-per-virtual-pipeline-stage), None without."""
    if not layers_per_virtual_stage:
        return None
    if pp < 2:
        raise ArgumentError(
            "--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size >= 2"
        )
    per_stage = num_layers // pp
    if per_stage % layers_per_virtual_stage:
        raise ArgumentError(f"{per_stage} layers per pipeline stage are not divisible by "
                            f"--num-layers-per-virtual-pipeline-stage {layers_per_virtual_stage}")
    return per_stage // layers_per_virtual_stage


def micro_batches(
    global_batch_size: int,
    micro_batch_size: int,
    dp: int,
    *,
    world_size: int,
    tp: int,
    pp: int,
    cp: int,
    virtual: int | None,
) -> int:
    """Micro-batches per step and data-parallel rank."""
    if global_batch_size % (micro_batch_size * dp):
        raise ArgumentError(f"--global-batch-size {global_batch_size} is not divisible by --micro-batch-size "
                            f"{micro_batch_size} x data-parallel size {dp} (= world {world_size} / "
                            f"(TP {tp} x PP {pp}{f' x CP {cp}' if cp > 1 else ''})): use a multiple of "
                            f"{micro_batch_size * dp}")
    count = global_batch_size // (micro_batch_size * dp)
    if virtual and count % pp:
        raise ArgumentError(f"the interleaved pipeline schedule needs the number of micro-batches "
                            f"({count}) to be a multiple of --pipeline-model-parallel-size {pp}")
    return count


@dataclass(frozen=True)
class ParallelLayout:
    """How the world is split and a step is cut (known before the process groups exist)."""

    world_size: int
    data_parallel_size: int
    num_microbatches: int
    virtual_pipeline_model_parallel_size: int | None
    num_layer_list_parsed: tuple[int, ...] | None


def parallel_layout(config: RunConfig, world_size: int) -> ParallelLayout:
    """The layout of a validated configuration on ``world_size`` processes."""
    par, model, training = config.parallel, config.model, config.training
    tp, pp, cp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size, par.context_parallel_size
    dp = data_parallel_size(world_size, tp, pp, cp)
    counts = stage_layers(par.num_layer_list, model.num_layers, pp, par.num_layers_per_virtual_pipeline_stage)
    virtual = virtual_stages(model.num_layers, pp, par.num_layers_per_virtual_pipeline_stage)
    micro = micro_batches(
        training.global_batch_size,
        training.micro_batch_size,
        dp,
        world_size=world_size,
        tp=tp,
        pp=pp,
        cp=cp,
        virtual=virtual,
    )
    return ParallelLayout(world_size, dp, micro, virtual, None if counts is None else tuple(counts))


# ---- the plan ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunPlan:
    """Derived values of one run (names as Megatron's namespace spells them, see :meth:`namespace_values`)."""

    world_size: int
    rank: int
    device: str
    data_parallel_size: int
    num_microbatches: int
    virtual_pipeline_model_parallel_size: int | None
    num_layer_list_parsed: tuple[int, ...] | None
    params_dtype: Any  # torch.dtype
    padded_vocab_size: int
    model_config: Any  # models.families.ModelConfig: the flags completed by what the checkpoint recorded
    hf_config: Mapping[
        str, Any
    ]  # recorded in saved checkpoints (convert_ckpt.py mg->hf rebuilds config.json)
    hf_architecture: str
    hf_vocab_size: int
    model_type: str | None

    @classmethod
    def build(cls, config: RunConfig, *, world_size: int, rank: int, device: str, model_config: Any,
              padded_vocab_size: int, model_type: Any = None) -> RunPlan:
        """The plan of ``config`` on this world, for a settled model config and padded vocabulary."""
        layout = parallel_layout(config, world_size)
        return cls(
            world_size=layout.world_size,
            rank=rank,
            device=device,
            data_parallel_size=layout.data_parallel_size,
            num_microbatches=layout.num_microbatches,
            virtual_pipeline_model_parallel_size=layout.virtual_pipeline_model_parallel_size,
            num_layer_list_parsed=layout.num_layer_list_parsed,
            params_dtype=config.precision.params_dtype,
            padded_vocab_size=padded_vocab_size,
            model_config=model_config,
            hf_config=frozen_value(model_config.to_hf_config()),
            hf_architecture=model_config.architecture,
            hf_vocab_size=model_config.vocab_size,
            model_type=None if model_type is None else getattr(model_type, "name", str(model_type)),
        )

    def namespace_values(self) -> dict[str, Any]:
        """The plan's fields under their namespace names (the ModelConfig object itself is not one of
        them)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "model_config"}
