"""hf->mg, mg->hf and mg->mg conversion, streaming one output pipeline stage at a time."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from mindspeed_llm.convert.errors import CheckpointError, DamagedCheckpointError
from mindspeed_llm.convert.hf_io import HfShardWriter, copy_tokenizer_files
from mindspeed_llm.convert.mapping import (
    EMBEDDING,
    FINAL_NORM,
    GROUPED_FC1,
    GROUPED_FC2,
    OUTPUT_EXTRA_STATE,
    OUTPUT_LAYER,
    Split,
    group_experts,
    hf_to_mcore,
    is_moe_layer,
    layer_extra_states,
    layer_mappings,
    layers_per_stage,
    mcore_to_hf,
    pad_vocab,
    padded_vocab_size,
    shard,
    stage_layers,
)
from mindspeed_llm.convert.sources import HfSource, MgSource, open_mg_source
from mindspeed_llm.convert.target import (
    EXPORT_MARKER,
    MG2HF,
    check_disjoint,
    check_replace,
    is_hf_export,
    is_hf_folder,
    mark_hf_export,
    staging_dir,
)
from mindspeed_llm.lora.adapter import Adapter, AdapterCollector, check_fits
from mindspeed_llm.lora.config import check_recorded
from mindspeed_llm.lora.keys import holds_adapter, holds_only_adapter
from mindspeed_llm.lora.merge import MergedSource
from mindspeed_llm.lora.peft import ADAPTER_CONFIG, read_peft_adapter, write_peft_adapter
from mindspeed_llm.models.families import ModelConfig, check_model_type_hf, dtype_hf_name
from mindspeed_llm.runtime.checkpoint import layout, torch_format
from mindspeed_llm.runtime.checkpoint.layout import RELEASE
from mindspeed_llm.runtime.checkpoint.record import (
    CheckpointRecord,
    LayoutRecord,
    ModelRecord,
    ProgressRecord,
)

HF_TO_MG_ITERATION = 1


@dataclass
class ConvertOptions:
    """Everything ``convert_ckpt.py`` passes down (flag names in comments)."""

    load_model_type: str  # --load-model-type hf|mg
    save_model_type: str  # --save-model-type hf|mg
    load_dir: str  # --load-dir
    save_dir: str  # --save-dir
    target_tp: int = 1  # --target-tensor-parallel-size
    target_pp: int = 1  # --target-pipeline-parallel-size
    target_ep: int = 1  # --target-expert-parallel-size (MoE)
    target_etp: int | None = None  # --expert-tensor-parallel-size (MoE; None: the target TP)
    moe_grouped_gemm: bool = False  # --moe-grouped-gemm: experts as megatron's grouped weight1/weight2
    num_layer_list: list[int] | None = None  # --num-layer-list 6,8,8,6
    params_dtype: torch.dtype | None = None  # --params-dtype (None: keep the source's)
    make_vocab_size_divisible_by: int = 1  # --make-vocab-size-divisible-by
    padded_vocab_size: int | None = None  # --padded-vocab-size
    add_qkv_bias: bool | None = None  # --add-qkv-bias (hf sources: must match the weights)
    model_type_hf: str | None = None  # --model-type-hf
    hf_dir: str | None = None  # --hf-dir (mg->hf: config/tokenizer source)
    tokenizer_model: str | None = None  # --tokenizer-model (recorded in args)
    iteration: int | str | None = None  # --load-iteration (mg sources; default: the tracker's)
    overwrite: bool = False  # --overwrite (an earlier output of the same kind)
    overwrite_training_checkpoint: bool = False  # --overwrite-training-checkpoint
    overwrite_hf_model: bool = False  # --overwrite-hf-model
    max_shard_size: int = 5 * 1024**3  # --max-shard-size (hf output)
    progress: bool = True
    lora_load: str | None = (
        None  # --lora-load: hf->mg a peft adapter folder; mg->* a Megatron adapter checkpoint
    )
    save_lora_to_hf: bool = False  # --save-lora-to-hf: mg->hf writes the adapter as a peft folder
    # --lora-r / --lora-alpha / --lora-target-modules as given, by LoraConfig field: checked against the
    # adapter (mindspeed_llm.lora.config.check_recorded)
    lora_expected: dict[str, object] = field(default_factory=dict)


# ---- checks shared by every direction ------------------------------------------------------------------
def check_parallel(cfg: ModelConfig, tp: int, pp: int, num_layer_list: list[int] | None) -> list[int]:
    """Validate TP/PP against the model; return the layers per stage."""
    if tp < 1 or pp < 1:
        raise CheckpointError(
            "--target-tensor-parallel-size and --target-pipeline-parallel-size must be >= 1"
        )
    if cfg.num_attention_heads % tp:
        raise CheckpointError(
            f"--target-tensor-parallel-size {tp} does not divide "
            f"num_attention_heads={cfg.num_attention_heads}: pick a divisor"
        )
    if cfg.num_query_groups % tp:
        raise CheckpointError(
            f"--target-tensor-parallel-size {tp} does not divide num_key_value_heads={cfg.num_query_groups}: "
            "pick a divisor"
        )
    if cfg.ffn_hidden_size % tp:
        raise CheckpointError(
            f"--target-tensor-parallel-size {tp} does not divide intermediate_size={cfg.ffn_hidden_size}"
        )
    if num_layer_list:
        if len(num_layer_list) != pp:
            raise CheckpointError(
                f"--num-layer-list has {len(num_layer_list)} entries but --target-pipeline-parallel-size is "
                f"{pp}: give one layer count per stage"
            )
        if sum(num_layer_list) != cfg.num_layers or min(num_layer_list) < 1:
            raise CheckpointError(
                f"--num-layer-list {','.join(map(str, num_layer_list))} sums to {sum(num_layer_list)} but "
                f"the model has {cfg.num_layers} layers (each stage needs >= 1): fix the list"
            )
    elif cfg.num_layers % pp:
        raise CheckpointError(
            f"--target-pipeline-parallel-size {pp} does not divide num_hidden_layers={cfg.num_layers}: pick "
            "a divisor or give --num-layer-list"
        )
    return layers_per_stage(cfg.num_layers, pp, num_layer_list)


def check_expert_parallel(cfg: ModelConfig, tp: int, ep: int, etp: int | None, grouped: bool) -> None:
    """Validate the expert layout (--target-expert-parallel-size, --expert-tensor-parallel-size,
    --moe-grouped-gemm) against the model."""
    if not cfg.num_experts:
        given = [flag for flag, on in (("--target-expert-parallel-size", ep != 1),
                                       ("--expert-tensor-parallel-size", etp not in (None, tp)),
                                       ("--moe-grouped-gemm", grouped)) if on]
        if given:
            raise CheckpointError(f"{' '.join(given)}: {cfg.architecture} has no experts; drop the flag")
        return
    if ep < 1 or cfg.num_experts % ep:
        raise CheckpointError(f"--target-expert-parallel-size {ep} does not divide the model's "
                              f"{cfg.num_experts} experts: pick a divisor")
    if etp not in (None, tp):
        raise CheckpointError(
            f"--expert-tensor-parallel-size {etp} with --target-tensor-parallel-size {tp}: the legacy "
            "checkpoint layout (one file per TP, PP and EP rank) splits the experts over the TP ranks; give "
            f"--expert-tensor-parallel-size {tp} (or leave it out)")
    if cfg.moe_ffn_hidden_size % tp or (cfg.moe_shared_expert_intermediate_size or 0) % tp:
        raise CheckpointError(
            f"--target-tensor-parallel-size {tp} does not divide moe_intermediate_size="
            f"{cfg.moe_ffn_hidden_size} (or the shared expert's {cfg.moe_shared_expert_intermediate_size})")


def target_padded_vocab(cfg: ModelConfig, opts: ConvertOptions) -> int:
    """Padded vocabulary size for the target TP, validated."""
    rows = cfg.vocab_size
    padded = padded_vocab_size(
        rows, opts.target_tp, opts.make_vocab_size_divisible_by, opts.padded_vocab_size
    )
    if padded < rows:
        raise CheckpointError(
            f"--padded-vocab-size {padded} is smaller than the {rows} embedding rows: use at least {rows}"
        )
    if padded % opts.target_tp:
        raise CheckpointError(
            f"--padded-vocab-size {padded} is not divisible by --target-tensor-parallel-size {opts.target_tp}"
        )
    return padded


def checkpoint_record(
    cfg: ModelConfig,
    *,
    tp: int,
    pp: int,
    counts: list[int],
    padded: int,
    opts: ConvertOptions,
    source=None,
    adapter: Adapter | None = None,
    iteration: int | str = HF_TO_MG_ITERATION,
) -> CheckpointRecord:
    """The record every rank file of the output holds: the model (every setting a launch is checked against),
    the target layout, the adapter's settings, and the source's progress (mg->mg) or iteration 1 (hf->mg)."""
    hf_dir = source.record.model.hf_dir if source is not None else os.path.abspath(opts.load_dir)
    model = ModelRecord.from_model_config(cfg, padded_vocab_size=padded,
                                          make_vocab_size_divisible_by=opts.make_vocab_size_divisible_by,
                                          hf_dir=hf_dir, moe_grouped_gemm=opts.moe_grouped_gemm)
    experts = dict(ep=opts.target_ep, etp=tp) if cfg.num_experts else {}
    layout_record = LayoutRecord(tp=tp, pp=pp, num_layer_list=tuple(counts) if len(set(counts)) > 1 else None,
                                 **experts)
    step = 0 if iteration == RELEASE else int(iteration)
    progress = (dataclasses.replace(source.record.progress, iteration=step) if source is not None
                else ProgressRecord(iteration=step))
    lora = adapter.config.recorded() if adapter is not None else None  # what a launch continuing it passes
    return CheckpointRecord(model=model, layout=layout_record, progress=progress, lora=lora)


def provenance_args(opts: ConvertOptions, source=None) -> argparse.Namespace:
    """The Megatron ``args`` the record's values are set on: the source checkpoint's (mg->mg keeps what
    training recorded), else what an hf->mg conversion was given."""
    if source is not None:
        return source.args
    return argparse.Namespace(model_type_hf=opts.model_type_hf, tokenizer_model=opts.tokenizer_model)


# ---- writers -----------------------------------------------------------------------------------------------
def build_stage(source, cfg: ModelConfig, *, tp: int, pp: int, counts: list[int], pp_rank: int, padded: int,
                dtype: torch.dtype, bar=None, adapter=None, ep: int = 1, ep_rank: int = 0,
                grouped: bool = False) -> list[dict]:
    """The rank-local mcore state dicts of every TP rank of one pipeline stage (and EP rank: its experts,
    one MLP each or, ``grouped``, megatron-core's grouped weights)."""
    shards: list[dict] = [{} for _ in range(tp)]
    per_rank = cfg.num_experts // ep if cfg.num_experts else 0

    def put(key: str, split, full: torch.Tensor) -> None:
        for r, part in enumerate(shard(split, full.to(dtype), tp)):
            shards[r][key] = part

    if pp_rank == 0:
        put(EMBEDDING.mcore, EMBEDDING.split, pad_vocab(source.embedding(), padded))
    for local, global_layer in enumerate(stage_layers(counts, pp_rank)):
        rows = layer_mappings(cfg, global_layer)
        for m in rows:
            if not m.expert:
                put(f"decoder.layers.{local}.{m.mcore}", m.split, source.layer(global_layer, m))
        if is_moe_layer(cfg, global_layer):
            fc1, fc2 = ([[] for _ in range(tp)] for _ in range(2))
            for j in range(per_rank):
                for m in (m for m in rows if m.expert):
                    full = source.expert(global_layer, m, ep_rank * per_rank + j)
                    parts = shard(m.split, full.to(dtype), tp)
                    for r, part in enumerate(parts):
                        if grouped:
                            (fc1 if m.split is Split.GATE_UP else fc2)[r].append(part)
                        else:
                            shards[r][f"decoder.layers.{local}.{m.mcore.format(e=j)}"] = part
            if grouped:
                for r in range(tp):
                    w1, w2 = group_experts(fc1[r], fc2[r])
                    shards[r][f"decoder.layers.{local}.{GROUPED_FC1}"] = w1
                    shards[r][f"decoder.layers.{local}.{GROUPED_FC2}"] = w2
        for extra in layer_extra_states(cfg, global_layer, per_rank, grouped):
            for sd in shards:
                sd[f"decoder.layers.{local}.{extra}"] = None
        if bar is not None:
            bar.update(1)
    if pp_rank == pp - 1:
        put(FINAL_NORM.mcore, FINAL_NORM.split, source.final_norm())
        if not cfg.tie_word_embeddings:
            put(OUTPUT_LAYER.mcore, OUTPUT_LAYER.split, pad_vocab(source.output_layer(), padded))
        elif pp > 1:
            # megatron-core's last stage keeps its own copy of the tied embedding.
            put(OUTPUT_LAYER.mcore, OUTPUT_LAYER.split, pad_vocab(source.embedding(), padded))
        for sd in shards:
            sd[OUTPUT_EXTRA_STATE] = None
    if adapter is not None:  # LoRA tensors keep their own dtype (an fp32 adapter on a bf16 base stays fp32)
        for sd, extra in zip(shards, adapter.stage_tensors(stage_layers(counts, pp_rank), tp)):
            sd.update(extra)
    return shards


def write_megatron(source, cfg: ModelConfig, opts: ConvertOptions, *, iteration: int | str,
                   mg_source=None, adapter: Adapter | None = None) -> str:
    """Write ``source`` as a legacy Megatron checkpoint at ``opts.save_dir``; returns the folder.

    ``mg_source``: the Megatron checkpoint read (mg->mg), whose record and args the output continues.
    """
    tp, pp, ep = opts.target_tp, opts.target_pp, opts.target_ep
    counts = check_parallel(cfg, tp, pp, opts.num_layer_list)
    check_expert_parallel(cfg, tp, ep, opts.target_etp, opts.moe_grouped_gemm)
    padded = target_padded_vocab(cfg, opts)
    dtype = opts.params_dtype or source.dtype
    cfg = cfg.replace(params_dtype=dtype)
    record = checkpoint_record(cfg, tp=tp, pp=pp, counts=counts, padded=padded, opts=opts, source=mg_source,
                               adapter=adapter, iteration=iteration)
    base_args = provenance_args(opts, mg_source)
    check_target(opts, opts.save_dir, "mg")
    with staging_dir(opts.save_dir) as tmp:
        for pp_rank in range(pp):
            for ep_rank in range(ep):
                of_ep = f" EP rank {ep_rank + 1}/{ep}" if ep > 1 else ""
                with tqdm(total=counts[pp_rank], desc=f"hf/mg -> mg stage {pp_rank + 1}/{pp}{of_ep}",
                          unit="layer", disable=not opts.progress) as bar:
                    shards = build_stage(source, cfg, tp=tp, pp=pp, counts=counts, pp_rank=pp_rank,
                                         padded=padded, dtype=dtype, bar=bar, adapter=adapter, ep=ep,
                                         ep_rank=ep_rank, grouped=opts.moe_grouped_gemm)
                    for tp_rank in range(tp):
                        torch_format.write_rank_file(tmp, iteration, tp_rank, pp_rank, pp, record, base_args,
                                                     shards[tp_rank], ep_rank=ep_rank)
                        shards[tp_rank] = None  # free this rank's tensors before the next
        if hasattr(source, "check_consumed"):
            source.check_consumed()
        layout.write_tracker(tmp, iteration)
    return os.path.abspath(opts.save_dir)


def write_hf(source, cfg: ModelConfig, save_dir: str, *, dtype: torch.dtype, hf_dir: str | None,
             max_shard_size: int, progress: bool = True, marker: dict | None = None) -> str:
    """Write ``source`` as an HF folder (config, generation config, tokenizer, sharded safetensors).

    Call :func:`mindspeed_llm.convert.target.check_replace` first; ``marker`` is recorded in the
    export marker file (what was converted).
    """
    with staging_dir(save_dir) as tmp:
        writer = HfShardWriter(tmp, max_shard_size)
        writer.add(EMBEDDING.hf[0], source.embedding().to(dtype))
        for layer in tqdm(range(cfg.num_layers), desc="mg -> hf", unit="layer", disable=not progress):
            for m in layer_mappings(cfg, layer):
                # Every expert, from whichever EP rank holds it.
                for e in range(cfg.num_experts) if m.expert else (None,):
                    full = source.expert(layer, m, e) if m.expert else source.layer(layer, m)
                    for name, tensor in zip(m.hf, mcore_to_hf(m, full, cfg)):
                        writer.add(name.format(i=layer, e=e), tensor.to(dtype))
        writer.add(FINAL_NORM.hf[0], source.final_norm().to(dtype))
        if not cfg.tie_word_embeddings:
            writer.add(OUTPUT_LAYER.hf[0], source.output_layer().to(dtype))
        writer.finish()
        hf_config = cfg.to_hf_config()
        if hf_dir and os.path.isfile(os.path.join(hf_dir, "config.json")):
            hf_config = _read_json(os.path.join(hf_dir, "config.json"))
        hf_config.pop("dtype", None)
        hf_config["torch_dtype"] = dtype_hf_name(dtype)
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_config, f, indent=2)
        copied = copy_tokenizer_files(hf_dir, tmp) if hf_dir and os.path.isdir(hf_dir) else []
        if "generation_config.json" not in copied:
            gen = {
                "bos_token_id": cfg.bos_token_id,
                "eos_token_id": cfg.eos_token_id,
                "_from_model_config": True,
            }
            with open(os.path.join(tmp, "generation_config.json"), "w", encoding="utf-8") as f:
                json.dump(gen, f, indent=2)
        mark_hf_export(tmp, marker or {})
    return os.path.abspath(save_dir)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DamagedCheckpointError(f"{path} is not valid JSON ({str(exc).splitlines()[0][:80]})") from None


def check_target(opts: ConvertOptions, target: str, output: str) -> None:
    """The output may replace only an earlier output of its kind (see ``target.py``)."""
    check_replace(target, output, overwrite=opts.overwrite,
                  overwrite_training_checkpoint=opts.overwrite_training_checkpoint,
                  overwrite_hf_model=opts.overwrite_hf_model)


# ---- entry points -----------------------------------------------------------------------------------------
def convert_hf_to_mg(opts: ConvertOptions) -> str:
    """HF folder -> legacy Megatron checkpoint at the target TP/PP; returns the save folder."""
    check_disjoint(opts.save_dir, opts.load_dir)
    source = HfSource(opts.load_dir, add_qkv_bias=bool(opts.add_qkv_bias))
    check_model_type_hf(opts.model_type_hf, source.cfg)
    try:
        rows = BaseRows(source.cfg)
        adapter = read_peft_adapter(opts.lora_load, source.cfg.num_layers, rows) if opts.lora_load else None
        return write_megatron(source, source.cfg, opts, iteration=HF_TO_MG_ITERATION, adapter=adapter)
    finally:
        source.close()


def check_hf_dir(hf_dir: str | None) -> None:
    """A given --hf-dir must hold config.json (it is not silently replaced by the recorded config)."""
    if hf_dir and not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise CheckpointError(
            f"--hf-dir {hf_dir} holds no config.json: point it at the original HF model folder"
        )


def check_mg_flags(source: MgSource, opts: ConvertOptions) -> None:
    """Flags given for an mg source must agree with the checkpoint (they are not needed: it knows)."""
    check_model_type_hf(opts.model_type_hf, source.cfg)
    if opts.add_qkv_bias and not source.cfg.add_qkv_bias:
        raise CheckpointError(
            f"--add-qkv-bias was given but the checkpoint in {opts.load_dir} has no q/k/v biases: drop "
            "--add-qkv-bias"
        )


def convert_mg_to_mg(opts: ConvertOptions) -> str:
    """Reshard a legacy Megatron checkpoint to another TP/PP (same iteration)."""
    check_hf_dir(opts.hf_dir)
    check_disjoint(opts.save_dir, opts.load_dir, config_dir=opts.hf_dir)
    check_not_adapter_only(opts.load_dir, opts.iteration)
    source = open_mg_source(opts.load_dir, iteration=opts.iteration, hf_dir=opts.hf_dir)
    check_mg_flags(source, opts)
    if opts.padded_vocab_size is None and opts.make_vocab_size_divisible_by == 1:
        divisor = getattr(source.args, "make_vocab_size_divisible_by", 1) or 1
        opts = copy.copy(opts)
        opts.make_vocab_size_divisible_by = divisor
    try:
        adapter = mg_adapter(source, opts)
        return write_megatron(source, source.cfg, opts, iteration=source.iteration, mg_source=source,
                              adapter=adapter)
    finally:
        source.close()


def mg_to_hf_target(save_dir: str) -> str:
    """MindSpeed's form: a --save-dir that is an HF model folder means its ``mg2hf/`` subfolder.

    An earlier export of this tool is the target itself (replaced with ``--overwrite``).
    """
    if os.path.isdir(save_dir) and is_hf_folder(save_dir) and not is_hf_export(save_dir):
        return os.path.join(save_dir, MG2HF)
    return save_dir


def convert_mg_to_hf(opts: ConvertOptions) -> str:
    """Legacy Megatron checkpoint (any TP/PP, any iteration) -> HF folder; returns the folder written."""
    check_hf_dir(opts.hf_dir)
    target = mg_to_hf_target(opts.save_dir)
    hf_dir = opts.hf_dir
    if hf_dir is None and target != opts.save_dir:
        hf_dir = opts.save_dir  # MindSpeed's form: --save-dir is the original HF folder
    check_disjoint(target, opts.load_dir, config_dir=hf_dir)
    check_not_adapter_only(opts.load_dir, opts.iteration)
    source = open_mg_source(opts.load_dir, iteration=opts.iteration, hf_dir=hf_dir)
    check_mg_flags(source, opts)
    hf_dir = source.hf_dir
    check_disjoint(target, opts.load_dir, config_dir=hf_dir)
    check_target(opts, target, "hf")
    dtype = opts.params_dtype or source.dtype
    marker = {"load_dir": os.path.abspath(opts.load_dir), "iteration": source.iteration}
    try:
        adapter = mg_adapter(source, opts)
        if opts.save_lora_to_hf:
            if adapter is None:
                raise CheckpointError(
                    f"--save-lora-to-hf: {opts.lora_load or opts.load_dir} holds no LoRA adapter "
                    "tensors: give the adapter checkpoint with --lora-load"
                )
            return write_peft_folder(adapter, source.cfg, target, opts, hf_dir)
        if adapter is not None:
            source = MergedSource(source, adapter, BaseRows(source.cfg))  # merged, in the base's dtype
            marker["lora_load"] = os.path.abspath(opts.lora_load or opts.load_dir)
        return write_hf(
            source,
            source.cfg,
            target,
            dtype=dtype,
            hf_dir=hf_dir,
            max_shard_size=opts.max_shard_size,
            progress=opts.progress,
            marker=marker,
        )
    finally:
        source.close()


def mg_adapter(source, opts: ConvertOptions) -> Adapter | None:
    """The LoRA adapter of an mg source: --lora-load's checkpoint, else the one inside --load-dir (or
    None)."""
    adapter = None
    if opts.lora_load:
        adapter = read_mg_adapter(opts.lora_load, source.cfg)
        if adapter is None:
            raise CheckpointError(
                f"--lora-load {opts.lora_load} holds no LoRA adapter tensors: give the --save folder "
                "of a LoRA run"
            )
    elif isinstance(source, MgSource):
        adapter = read_mg_adapter(opts.load_dir, source.cfg, iteration=source.iteration)
    if adapter is not None:  # before anything is written: every tensor fits the base's layer
        check_fits(adapter, source.cfg, opts.lora_load or opts.load_dir)
    check_recorded(opts.lora_expected, adapter and adapter.config, opts.lora_load or opts.load_dir)
    return adapter


def _chunks(state: dict, path: str) -> list[str]:
    """The model entries of a rank file: ``model``, or ``model0``, ``model1``, ... per virtual stage."""
    if "model" in state:
        return ["model"]
    keys = sorted((k for k in state if re.fullmatch(r"model\d+", k)), key=lambda k: int(k[5:]))
    if not keys:
        raise DamagedCheckpointError(f"{path}: no 'model' (nor model0, model1, ...) entry")
    return keys


def read_mg_adapter(root: str, cfg: ModelConfig, *, iteration: int | str | None = None) -> Adapter | None:
    """The adapter held by a Megatron checkpoint folder (a --lora-ckpt-filter save or a full one), merged over
    TP and PP by the LoRA package; None when the folder holds no adapter tensors."""
    iteration = layout.read_tracker(root) if iteration is None else iteration
    tp, pp = layout.parallel_sizes(root, iteration)
    files = layout.list_rank_dirs(root, iteration)  # EP rank 0's: every EP rank holds the same adapters
    first = layout.load_rank_file(files[0, 0])
    chunk_keys = _chunks(first, files[0, 0])
    if not any(isinstance(first.get(key), dict) and holds_adapter(first[key]) for key in chunk_keys):
        return None  # adapters sit in every layer: none in the first rank file means none at all
    collector = AdapterCollector(tp, root)
    for stage in range(pp * len(chunk_keys)):
        pp_rank, key = stage % pp, chunk_keys[stage // pp]
        states = []
        for t in range(tp):
            path = files[t, pp_rank]
            sd = layout.load_rank_file(path).get(key)
            if not isinstance(sd, dict):
                raise DamagedCheckpointError(f"{path}: no '{key}' state dict")
            states.append(sd)
        collector.add_stage(states)
    return collector.adapter(cfg.num_layers, first.get("args"))


def check_not_adapter_only(root: str, iteration: int | str | None = None) -> None:
    """A --load-dir holding only adapter tensors (a --lora-ckpt-filter save) is no base: say what to pass."""
    if not os.path.isfile(os.path.join(root, layout.TRACKER_FILENAME)) and iteration is None:
        return  # not a legacy checkpoint folder: its reader names the problem
    try:
        iteration = layout.read_tracker(root) if iteration is None else iteration
        found = layout.list_rank_dirs(root, iteration)
        state = layout.load_rank_file(found[min(found)], mmap=True) if found else {}
    except CheckpointError:
        return  # the reader reports it
    models = [sd for name, sd in state.items() if name.startswith("model") and isinstance(sd, dict)]
    if models and all(holds_only_adapter(sd) for sd in models):
        raise CheckpointError(f"--load-dir {root} holds only LoRA adapter tensors (saved with "
                              "--lora-ckpt-filter): pass the base model's checkpoint as --load-dir and this "
                              "folder as --lora-load")


class BaseRows:
    """The base weights' row layout (this mapping's transforms), which the LoRA package's fused B's follow."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self._rows = {m.mcore: m for m in layer_mappings(cfg)}

    def split(self, weight_key: str, fused: torch.Tensor) -> list[torch.Tensor]:
        """Fused rows -> one tensor per HF module."""
        return mcore_to_hf(self._rows[weight_key], fused, self.cfg)

    def join(self, weight_key: str, parts: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`split`."""
        return hf_to_mcore(self._rows[weight_key], parts, self.cfg)


def write_peft_folder(adapter: Adapter, cfg: ModelConfig, target: str, opts: ConvertOptions,
                      hf_dir: str | None) -> str:
    """--save-lora-to-hf: a peft adapter folder (adapter_config.json, adapter_model.safetensors)."""
    if os.path.isdir(target) and os.listdir(target):
        if not (opts.overwrite and os.path.isfile(os.path.join(target, ADAPTER_CONFIG))
                and os.path.isfile(os.path.join(target, EXPORT_MARKER))):
            raise CheckpointError(
                f"--save-dir {target} is not empty: give a new folder (or --overwrite to replace "
                "an adapter this tool exported)"
            )
    with staging_dir(target) as tmp:
        write_peft_adapter(adapter, BaseRows(cfg), tmp, os.path.abspath(hf_dir) if hf_dir else None)
        with open(os.path.join(tmp, EXPORT_MARKER), "w", encoding="utf-8") as f:
            json.dump({"load_dir": os.path.abspath(opts.load_dir), "lora_load": opts.lora_load}, f)
    return os.path.abspath(target)


def convert(opts: ConvertOptions) -> str:
    """Dispatch on (load, save) model types; returns the folder written."""
    pair = (opts.load_model_type, opts.save_model_type)
    if pair == ("hf", "mg"):
        return convert_hf_to_mg(opts)
    if pair == ("mg", "hf"):
        return convert_mg_to_hf(opts)
    if pair == ("mg", "mg"):
        return convert_mg_to_mg(opts)
    raise CheckpointError(
        f"--load-model-type {opts.load_model_type} --save-model-type {opts.save_model_type} is not "
        "supported: use hf->mg, mg->hf or mg->mg"
    )
