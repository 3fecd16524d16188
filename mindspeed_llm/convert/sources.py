"""Where full (TP1, unpadded) mcore tensors come from: an HF folder or a Megatron checkpoint (either format).

Every source hands out one tensor at a time, so a conversion holds at most one output pipeline stage
(plus the source tensors it is reading) in memory. A Megatron checkpoint's files are read through the
checkpoint interface (:mod:`mindspeed_llm.runtime.checkpoint`): :func:`open_mg_source` asks its one
detector which format the folder holds, and the sources take the model from the checkpoint's record.
"""

from __future__ import annotations

import argparse
import os
import re
from collections import OrderedDict

import torch

from mindspeed_llm.convert.errors import CheckpointError, DamagedCheckpointError, check_load_dir
from mindspeed_llm.convert.hf_io import HfReader
from mindspeed_llm.convert.mapping import (
    EMBEDDING,
    FINAL_NORM,
    FUSED_DOWN,
    FUSED_GATE_UP,
    FUSED_ROUTER,
    GROUPED_FC1,
    GROUPED_FC2,
    OUTPUT_LAYER,
    Split,
    TensorMapping,
    Transform,
    expected_hf_names,
    is_moe_layer,
    layer_mappings,
    ungroup_expert,
    unshard,
)
from mindspeed_llm.models.families import ModelConfig, UnsupportedModelError
from mindspeed_llm.runtime.checkpoint import dist_format, layout
from mindspeed_llm.runtime.checkpoint.detect import TORCH_DIST, detect_format
from mindspeed_llm.runtime.checkpoint.record import CheckpointRecord, parse_dtype_name, read_header


def expected_hf_shapes(cfg: ModelConfig, fused: bool = False) -> dict[str, tuple[int, ...]]:
    """Shape of every HF tensor implied by config.json (``fused``: transformers 5's fused experts)."""
    h, d = cfg.hidden_size, cfg.kv_channels
    q, kv, f = cfg.num_attention_heads * d, cfg.num_query_groups * d, cfg.ffn_hidden_size
    per_layer = {
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.q_norm.weight": (d,),
        "self_attn.k_norm.weight": (d,),
        "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (f, h),
        "mlp.up_proj.weight": (f, h),
        "mlp.down_proj.weight": (h, f),
    }
    if cfg.num_experts:
        e, mf, sf = cfg.num_experts, cfg.moe_ffn_hidden_size, cfg.moe_shared_expert_intermediate_size or 0
        per_layer.update({
            "mlp.gate.weight": (e, h), "block_sparse_moe.gate.weight": (e, h),
            "mlp.experts.gate_up_proj": (e, 2 * mf, h), "mlp.experts.down_proj": (e, h, mf),
            "mlp.shared_expert.gate_proj.weight": (sf, h), "mlp.shared_expert.up_proj.weight": (sf, h),
            "mlp.shared_expert.down_proj.weight": (h, sf), "mlp.shared_expert_gate.weight": (1, h),
        })
        for proj, shape in (("gate_proj", (mf, h)), ("up_proj", (mf, h)), ("down_proj", (h, mf)),
                            ("w1", (mf, h)), ("w3", (mf, h)), ("w2", (h, mf))):
            per_layer[f"experts.{proj}.weight"] = shape
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,),
              "lm_head.weight": (cfg.vocab_size, h)}
    for name in expected_hf_names(cfg, fused):
        m = re.fullmatch(r"model\.layers\.\d+\.(.*)", name)
        if m:
            expert = re.fullmatch(r"(?:mlp|block_sparse_moe)\.(experts)\.\d+\.(.*)", m.group(1))
            shapes[name] = per_layer[f"experts.{expert.group(2)}" if expert else m.group(1)]
    return shapes


def _is_fused(cfg: ModelConfig, names: set[str]) -> bool:
    """True when the folder holds transformers 5's fused expert tensors (not the hub's per-expert ones)."""
    moe_layers = [i for i in range(cfg.num_layers) if is_moe_layer(cfg, i)]
    return bool(moe_layers) and FUSED_GATE_UP.format(i=moe_layers[0]) in names


# Tensors of HF folders that hold nothing a model needs: the RoPE frequencies old exports saved as buffers.
_IGNORED_HF = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


class HfSource:
    """Full mcore tensors computed from an HF safetensors folder, read lazily."""

    def __init__(self, folder: str, *, add_qkv_bias: bool | None = None):
        self.reader = HfReader(folder)
        self.folder = folder
        cfg = read_model_config(folder)
        names = self.reader.names()
        has_bias = "model.layers.0.self_attn.q_proj.bias" in names
        if add_qkv_bias is not None:
            if add_qkv_bias and not has_bias:
                raise CheckpointError(
                    f"--add-qkv-bias was given but {folder} has no q/k/v biases "
                    "(model.layers.0.self_attn.q_proj.bias): drop --add-qkv-bias"
                )
            if has_bias and not add_qkv_bias:
                raise CheckpointError(
                    f"{folder} has q/k/v biases (model.layers.0.self_attn.q_proj.bias) but --add-qkv-bias is "
                    "missing: add --add-qkv-bias (Qwen2/Qwen2.5 need it)"
                )
        cfg.add_qkv_bias = has_bias
        if cfg.tie_word_embeddings and "lm_head.weight" in names:
            # Some tied folders also store the head; it must be the embedding, so ignore it.
            pass
        self.fused = _is_fused(cfg, names)
        expected = expected_hf_names(cfg, self.fused)
        missing = [n for n in expected if n not in names]
        if missing:
            shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
            raise CheckpointError(
                f"{folder}: config.json and the weights disagree, missing tensors: {shown}; "
                "check that config.json belongs to these safetensors files"
            )
        if cfg.num_experts:
            # Every tensor is consumed exactly once: a tensor the model has no place for is refused by name
            # (an expert of another layout, a layer more than config.json says), never dropped.
            unused = sorted(names - set(expected) - {OUTPUT_LAYER.hf[0]}
                            - {n for n in names if _IGNORED_HF.fullmatch(n)})
            if unused:
                shown = ", ".join(unused[:8]) + (f" (+{len(unused) - 8} more)" if len(unused) > 8 else "")
                raise CheckpointError(
                    f"{folder}: tensors config.json has no place for: {shown}; check that config.json "
                    "belongs to these safetensors files (nothing is dropped silently)"
                )
        self.expected = expected
        self.consumed: set[str] = set()
        shapes = expected_hf_shapes(cfg, self.fused)
        for name in expected:
            got = self.reader.shape(name)
            if tuple(got) != shapes[name]:
                raise CheckpointError(
                    f"{folder}: tensor {name} has shape {tuple(got)} but config.json implies {shapes[name]}; "
                    "check that config.json belongs to these safetensors files"
                )
        self.cfg = cfg
        self.dtype = self.reader.dtype()
        self.num_layers = cfg.num_layers

    def _get(self, name: str) -> torch.Tensor:
        self.consumed.add(name)
        return self.reader.get(name)

    def embedding(self) -> torch.Tensor:
        """Unpadded word embeddings [vocab rows, hidden]."""
        return self._get(EMBEDDING.hf[0])

    def final_norm(self) -> torch.Tensor:
        """The final RMSNorm weight."""
        return self._get(FINAL_NORM.hf[0])

    def output_layer(self) -> torch.Tensor:
        """Unpadded output layer (untied models)."""
        return self._get(OUTPUT_LAYER.hf[0])

    def expert(self, layer: int, m: TensorMapping, e: int) -> torch.Tensor:
        """Full (TP1) mcore tensor of global expert ``e`` of one expert row ([gate; up] or down)."""
        if self.fused:
            name = (FUSED_GATE_UP if m.transform is Transform.GATE_UP else FUSED_DOWN).format(i=layer)
            shape = self.reader.shape(name)
            out = torch.empty([1, *shape[1:]], dtype=self.reader.entry_dtype(name))
            self.reader.read_rows_into(name, out, e, e + 1)
            self.consumed.add(name)
            return out[0]
        names = [n.format(i=layer, e=e) for n in m.hf]
        return self._read(m, names)

    def check_consumed(self) -> None:
        """Every tensor of the folder went into the output: name the first one that did not."""
        left = [n for n in self.expected if n not in self.consumed]
        if left:
            raise CheckpointError(f"{self.folder}: tensor {left[0]} was not converted (of {len(left)}): the "
                                  "conversion is refused rather than written without it")

    def layer(self, layer: int, m: TensorMapping) -> torch.Tensor:
        """Full mcore tensor of one row for a global layer number.

        QKV and gate/up are read straight into their megatron layout (no concatenation copies).
        """
        names = [n.format(i=layer) for n in m.hf]
        if self.fused and m.mcore == "mlp.router.weight":
            names = [FUSED_ROUTER.format(i=layer)]
        return self._read(m, names)

    def _read(self, m: TensorMapping, names: list[str]) -> torch.Tensor:
        self.consumed.update(names)
        if m.transform is Transform.COPY:
            return self.reader.get(names[0])
        shapes = [self.reader.shape(n) for n in names]
        out = torch.empty(
            [sum(s[0] for s in shapes), *shapes[0][1:]], dtype=self.reader.entry_dtype(names[0])
        )
        if m.transform is Transform.GATE_UP:
            rows = shapes[0][0]
            self.reader.read_rows_into(names[0], out[:rows], 0, rows)
            self.reader.read_rows_into(names[1], out[rows:], 0, shapes[1][0])
            return out
        d, groups = self.cfg.kv_channels, self.cfg.num_query_groups
        q_rows = self.cfg.num_attention_heads // groups * d
        row = 0
        for g in range(groups):
            for name, n in ((names[0], q_rows), (names[1], d), (names[2], d)):
                self.reader.read_rows_into(name, out[row:row + n], g * n, (g + 1) * n)
                row += n
        return out

    def close(self) -> None:
        """Close the shard files."""
        self.reader.close()


def read_model_config(config: str | dict, where: str | None = None) -> ModelConfig:
    """``ModelConfig.from_hf_config`` with a damaged or incomplete config as one line naming it."""
    where = where or os.path.join(config, "config.json")
    try:
        return ModelConfig.from_hf_config(config)
    except UnsupportedModelError as exc:  # a real model we cannot represent: not damage
        raise CheckpointError(f"{where}: {exc}") from None
    except KeyError as exc:
        raise DamagedCheckpointError(
            f"{where}: the key {exc} is missing: use the model's original config.json"
        ) from None
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        raise DamagedCheckpointError(f"{where}: {exc}: use the model's original config.json") from None
    except OSError as exc:
        raise DamagedCheckpointError(f"{where} cannot be read ({exc.strerror})") from None


def model_config_from_record(record: CheckpointRecord, hf_dir: str | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a Megatron checkpoint: from ``hf_dir``'s config.json, else its recorded
    one."""
    model = record.model
    if hf_dir and os.path.isfile(os.path.join(hf_dir, "config.json")):
        cfg = read_model_config(hf_dir)
    elif model.hf_config:
        cfg = read_model_config(dict(model.hf_config), "the checkpoint's recorded HF config (args.hf_config)")
    else:
        raise CheckpointError(
            "the checkpoint records no HF config: pass --hf-dir ORIGINAL_HF_FOLDER (holding config.json)"
        )
    cfg.add_qkv_bias = bool(model.settings.get("add_qkv_bias", cfg.add_qkv_bias))
    cfg.qk_layernorm = bool(model.settings.get("qk_layernorm", cfg.qk_layernorm))
    if model.params_dtype is not None:
        cfg.params_dtype = parse_dtype_name(model.params_dtype)
    return cfg


def model_config_from_args(args: argparse.Namespace, hf_dir: str | None = None) -> ModelConfig:
    """:func:`model_config_from_record` of the record a checkpoint's Megatron ``args`` imply."""
    return model_config_from_record(CheckpointRecord.from_megatron_args(args), hf_dir)


def _recorded_hf_dir(record: CheckpointRecord, hf_dir: str | None) -> str | None:
    """``--hf-dir``, else the HF folder the checkpoint was converted from when it still exists."""
    recorded = record.model.hf_dir
    return hf_dir or (recorded if recorded and os.path.isdir(recorded) else None)


class MgSource:
    """Full mcore tensors merged from a legacy Megatron checkpoint's TP shards (memory-mapped).

    Virtual-pipeline checkpoints (rank files holding ``model0..model{V-1}``) are read as PP x V stages in
    Megatron's order: virtual stage ``s`` is chunk ``s // PP`` of pipeline rank ``s % PP``.
    """

    def __init__(self, root: str, *, iteration: int | str | None = None, hf_dir: str | None = None):
        check_load_dir(root, "mg")
        self.root = root
        self.iteration = layout.read_tracker(root) if iteration is None else iteration
        self.tp, self.pp = layout.parallel_sizes(root, self.iteration)
        first_path = layout.list_rank_dirs(root, self.iteration)[(0, 0)]  # EP rank 0's with experts
        first = layout.load_rank_file(first_path, mmap=True)
        self.ep = read_header(first, first_path).layout.ep or 1
        if "model" in first:
            self.chunk_keys = ["model"]
        else:
            self.chunk_keys = sorted(
                (k for k in first if re.fullmatch(r"model\d+", k)), key=lambda k: int(k[5:])
            )
            if not self.chunk_keys:
                raise CheckpointError(f"{root}: rank files hold no 'model' (nor model0, model1, ...) entry")
        self.num_stages = self.pp * len(self.chunk_keys)
        self.record = read_header(first, self._path(0, 0), 0 if self.iteration == layout.RELEASE else
                                  int(self.iteration))
        self.args = first.get("args") or argparse.Namespace()  # Megatron-LM's, kept by mg->mg
        self.hf_dir = _recorded_hf_dir(self.record, hf_dir)
        self.cfg = model_config_from_record(self.record, self.hf_dir)
        if self.ep > 1 and (not self.cfg.num_experts or self.cfg.num_experts % self.ep):
            raise DamagedCheckpointError(
                f"{self._path(0, 0)}: its record says expert-parallel size {self.ep} but the model has "
                f"{self.cfg.num_experts} experts: the checkpoint belongs to another model (or pass the right "
                "--hf-dir)")
        model = first[self.chunk_keys[0]]
        embedding = model.get(EMBEDDING.mcore) if isinstance(model, dict) else None
        if not isinstance(embedding, torch.Tensor) or embedding.dim() != 2:
            raise DamagedCheckpointError(
                f"{self._path(0, 0)}: no 2-D {EMBEDDING.mcore} in '{self.chunk_keys[0]}': the file is not "
                "the first pipeline stage of a GPT checkpoint"
            )
        if embedding.shape[1] != self.cfg.hidden_size:
            raise DamagedCheckpointError(
                f"{self._path(0, 0)}: {EMBEDDING.mcore} has shape {tuple(embedding.shape)} but the model has "
                f"hidden_size={self.cfg.hidden_size}: the rank file belongs to another model"
            )
        self.dtype = embedding.dtype
        self.cfg.params_dtype = self.dtype
        self.padded_vocab_size = embedding.shape[0] * self.tp
        # Layers per stage, from the keys (works for any --num-layer-list and for training's files).
        self.stage_counts = []
        for s in range(self.num_stages):
            sd = self._load(0, s % self.pp).get(self.chunk_keys[s // self.pp])
            if not isinstance(sd, dict):
                raise DamagedCheckpointError(
                    f"{self._path(0, s % self.pp)}: no '{self.chunk_keys[s // self.pp]}' state dict: the "
                    "rank file belongs to another checkpoint"
                )
            ids = {int(m.group(1)) for k in sd if (m := re.match(r"decoder\.layers\.(\d+)\.", k))}
            self.stage_counts.append(len(ids))
        if sum(self.stage_counts) != self.cfg.num_layers:
            raise CheckpointError(
                f"{root}: the rank files hold {sum(self.stage_counts)} layers {self.stage_counts} but the "
                f"model config has {self.cfg.num_layers}: --hf-dir (or the recorded HF folder) belongs to "
                "another model"
            )
        self._cache: OrderedDict[int, list[dict]] = OrderedDict()
        self._hf_shapes = expected_hf_shapes(self.cfg)

    def _path(self, tp_rank: int, pp_rank: int, ep_rank: int = 0) -> str:
        return layout.checkpoint_file_for(self.root, self.iteration, tp_rank, pp_rank, self.pp, ep_rank,
                                          self.ep)

    def _load(self, tp_rank: int, pp_rank: int, ep_rank: int = 0) -> dict:
        return layout.load_rank_state(self.root, self.iteration, tp_rank, pp_rank, self.pp, mmap=True,
                                      ep_rank=ep_rank, ep_size=self.ep)

    def stage(self, stage: int, ep_rank: int = 0) -> list[dict]:
        """The model state dicts of every TP rank of one (virtual) stage and EP rank; the latest stage's EP
        ranks stay cached."""
        if (stage, ep_rank) in self._cache:
            self._cache.move_to_end((stage, ep_rank))
            return self._cache[(stage, ep_rank)]
        key = self.chunk_keys[stage // self.pp]
        sds = []
        for t in range(self.tp):
            sd = self._load(t, stage % self.pp, ep_rank).get(key)
            if not isinstance(sd, dict):
                raise DamagedCheckpointError(
                    f"{self._path(t, stage % self.pp, ep_rank)}: no '{key}' state dict: the rank file "
                    "belongs to another checkpoint"
                )
            sds.append(sd)
        self._cache[(stage, ep_rank)] = sds
        while len(self._cache) > self.ep:
            self._cache.popitem(last=False)
        return sds

    def _gather(
        self, pp_rank: int, key: str, m: TensorMapping, expected: tuple[int | None, ...], ep_rank: int = 0
    ) -> torch.Tensor:
        """One tensor merged over TP; its shape is checked (None: any size) so a foreign rank file is
        named."""
        sds = self.stage(pp_rank, ep_rank)
        try:
            parts = [sd[key] for sd in sds]
        except KeyError:
            where = f"stage {pp_rank}'s" + (f" EP rank {ep_rank}'s" if self.ep > 1 else "")
            raise CheckpointError(
                f"{self.root}: {key} missing from {where} rank files: the checkpoint is incomplete "
                "or was written for another model"
            ) from None
        for t, part in enumerate(parts):
            if not isinstance(part, torch.Tensor) or part.shape != parts[0].shape:
                shape = tuple(part.shape) if isinstance(part, torch.Tensor) else type(part).__name__
                raise DamagedCheckpointError(
                    f"{self._path(t, pp_rank % self.pp, ep_rank)}: {key} has shape {shape} but TP rank 0 "
                    "has "
                    f"{tuple(parts[0].shape)}: the rank file belongs to another checkpoint"
                )
        full = unshard(m.split, parts)
        if len(full.shape) != len(expected) or any(
            e is not None and e != g for e, g in zip(expected, full.shape)
        ):
            want = tuple("*" if e is None else e for e in expected)
            raise DamagedCheckpointError(
                f"{self._path(0, pp_rank % self.pp)}: {key} merged over TP has shape {tuple(full.shape)} but "
                f"the model config implies {want}: the rank files belong to another model (or pass the right "
                "--hf-dir)"
            )
        return full

    def _expected(self, m: TensorMapping) -> tuple[int | None, ...]:
        """The full (TP1) mcore shape of one row, from the HF shapes config.json implies."""
        shapes = self._hf_shapes
        layer = next((i for i in range(self.cfg.num_layers) if m in layer_mappings(self.cfg, i)), 0)
        names = [n.format(i=layer) for n in m.hf]
        first = shapes[names[0]]
        if m.split is Split.VOCAB:
            return (None, first[1])
        return (sum(shapes[n][0] for n in names), *first[1:])

    def embedding(self) -> torch.Tensor:
        """Word embeddings merged over TP, padding rows dropped."""
        return self._gather(0, EMBEDDING.mcore, EMBEDDING, self._expected(EMBEDDING))[: self.cfg.vocab_size]

    def final_norm(self) -> torch.Tensor:
        """The final RMSNorm weight (last stage)."""
        return self._gather(self.num_stages - 1, FINAL_NORM.mcore, FINAL_NORM, self._expected(FINAL_NORM))

    def output_layer(self) -> torch.Tensor:
        """Output layer merged over TP, padding rows dropped (untied models)."""
        out = self._gather(
            self.num_stages - 1, OUTPUT_LAYER.mcore, OUTPUT_LAYER, self._expected(OUTPUT_LAYER)
        )
        return out[: self.cfg.vocab_size]

    def _stage_of(self, layer: int) -> tuple[int, int]:
        stage, start = 0, 0
        while layer >= start + self.stage_counts[stage]:
            start += self.stage_counts[stage]
            stage += 1
        return stage, layer - start

    def layer(self, layer: int, m: TensorMapping) -> torch.Tensor:
        """Full mcore tensor of one row for a global layer number, merged over TP."""
        stage, local = self._stage_of(layer)
        return self._gather(stage, f"decoder.layers.{local}.{m.mcore}", m, self._expected(m))

    def expert(self, layer: int, m: TensorMapping, e: int) -> torch.Tensor:
        """Full (TP1) mcore tensor of global expert ``e`` of one expert row, from the EP rank holding it, in
        either layout (one MLP per expert, or megatron-core's grouped weight1/weight2)."""
        stage, local = self._stage_of(layer)
        per_rank = self.cfg.num_experts // self.ep
        ep_rank, j = divmod(e, per_rank)
        fc1 = m.transform is Transform.GATE_UP
        mf, h = self.cfg.moe_ffn_hidden_size, self.cfg.hidden_size
        expected = (2 * mf, h) if fc1 else (h, mf)
        sds = self.stage(stage, ep_rank)
        grouped_key = f"decoder.layers.{local}.{GROUPED_FC1 if fc1 else GROUPED_FC2}"
        if grouped_key not in sds[0]:
            return self._gather(stage, f"decoder.layers.{local}.{m.mcore.format(e=j)}", m, expected, ep_rank)
        parts = []
        for t, sd in enumerate(sds):
            weight = sd.get(grouped_key)
            size = per_rank * expected[0] * expected[1] // self.tp
            if not isinstance(weight, torch.Tensor) or weight.numel() != size:
                shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
                raise DamagedCheckpointError(
                    f"{self._path(t, stage % self.pp, ep_rank)}: {grouped_key} has shape {shape}, not "
                    f"{per_rank} experts of {expected} over TP {self.tp}: the rank file belongs to another "
                    "model")
            parts.append(ungroup_expert(weight, per_rank, h, j, fc1))
        return unshard(m.split, parts)

    def layer_mappings(self) -> list[TensorMapping]:
        """The per-layer rows of this checkpoint's model."""
        return layer_mappings(self.cfg)

    def close(self) -> None:
        """Drop the mapped stages."""
        self._cache.clear()


class DistSource:
    """The source interface of :class:`MgSource` over a torch_dist checkpoint (megatron-core
    ``dist_checkpointing``).

    Such a checkpoint stores each tensor once, with its global shape: the layers of the decoder stacked
    on a leading axis (``decoder.layers.mlp.linear_fc1.weight`` is ``[num_layers, ...]``), TP shards
    already merged into the TP1 form (SwiGLU's fc1 as ``[gate; up]``, QKV interleaved per query group),
    whatever TP/PP/VPP wrote it. The model tensors (not the optimizer's) are loaded in this one process,
    so memory holds the model once.
    """

    # megatron-core names the norms inside its sharded state dict as Transformer Engine's fused
    # layers do (local and TE checkpoints share keys); the mapping table uses the local module names.
    _DIST_NAMES = {
        "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
        "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
    }

    def __init__(self, root: str, *, iteration: int | str | None = None, hf_dir: str | None = None):
        self.root = root
        self.iteration = layout.read_tracker(root) if iteration is None else iteration
        self.record, self.args, self.tensors = dist_format.read_model_tensors(root, self.iteration)
        self.tp, self.pp = self.record.layout.tp or 1, self.record.layout.pp or 1
        self.hf_dir = _recorded_hf_dir(self.record, hf_dir)
        self.cfg = model_config_from_record(self.record, self.hf_dir)
        if self.cfg.num_experts:
            raise CheckpointError(
                f"{root} is a torch_dist checkpoint of a mixture-of-experts model: the converter reads MoE "
                "checkpoints in the torch format only; save it with --ckpt-format torch")
        embedding = self._get(EMBEDDING.mcore)
        self.dtype = embedding.dtype
        self.cfg.params_dtype = self.dtype
        self.padded_vocab_size = embedding.shape[0]
        stacked = self.tensors.get("decoder.layers.self_attention.linear_proj.weight")
        layers = (
            stacked.shape[0]
            if stacked is not None
            else len(
                {
                    k.split(".")[2]
                    for k in self.tensors
                    if k.startswith("decoder.layers.") and k.split(".")[2].isdigit()
                }
            )
        )
        if layers != self.cfg.num_layers:
            raise CheckpointError(
                f"{root}: the checkpoint holds {layers} layers but the model config has "
                f"{self.cfg.num_layers}: --hf-dir (or the recorded HF folder) belongs to another model"
            )

    def _get(self, key: str) -> torch.Tensor:
        try:
            return self.tensors[key]
        except KeyError:
            raise CheckpointError(f"{self.root}: {key} missing from the distributed checkpoint (iteration "
                                  f"{self.iteration}): it was written for another model") from None

    def embedding(self) -> torch.Tensor:
        """Word embeddings, padding rows dropped."""
        return self._get(EMBEDDING.mcore)[: self.cfg.vocab_size]

    def final_norm(self) -> torch.Tensor:
        """The final RMSNorm weight."""
        return self._get(FINAL_NORM.mcore)

    def output_layer(self) -> torch.Tensor:
        """Output layer, padding rows dropped (untied models)."""
        return self._get(OUTPUT_LAYER.mcore)[: self.cfg.vocab_size]

    def layer(self, layer: int, m: TensorMapping) -> torch.Tensor:
        """Full mcore tensor of one row for a global layer number."""
        name = self._DIST_NAMES.get(m.mcore, m.mcore)
        stacked = self.tensors.get(f"decoder.layers.{name}")
        if stacked is not None:
            return stacked[layer]
        return self._get(f"decoder.layers.{layer}.{name}")

    def layer_mappings(self) -> list[TensorMapping]:
        """The per-layer rows of this checkpoint's model."""
        return layer_mappings(self.cfg)

    def close(self) -> None:
        """Drop the loaded tensors."""
        self.tensors = {}


def open_mg_source(root: str, *, iteration: int | str | None = None, hf_dir: str | None = None):
    """The reader for a Megatron checkpoint folder, in the format the checkpoint interface detects there."""
    check_load_dir(root, "mg")
    if detect_format(root, iteration) == TORCH_DIST:
        return DistSource(root, iteration=iteration, hf_dir=hf_dir)
    return MgSource(root, iteration=iteration, hf_dir=hf_dir)
