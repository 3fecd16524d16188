"""Merged weights: the base model with the adapter folded in, as peft's ``merge_and_unload()`` computes it."""

from __future__ import annotations

import torch

from mindspeed_llm.lora.adapter import Adapter, FusedRows
from mindspeed_llm.lora.keys import LORA_MODULES
from mindspeed_llm.lora.peft import hf_parts


class MergedSource:
    """A conversion source whose targeted weights are ``W + B A * scaling`` (peft's merge), in float32.

    Wraps any source with ``layer(layer, mapping)`` (``mapping.mcore``: the key inside a decoder layer).
    Each HF weight gets its own ``B_x @ A`` as peft computes it (float32, then times the scaling); the writer
    casts the sum to the output dtype once, as peft's in-place ``weight += delta`` does.
    """

    def __init__(self, source, adapter: Adapter, rows: FusedRows):
        self.source = source
        self.adapter = adapter
        self.rows = rows
        self.cfg = source.cfg
        self._by_weight = {LORA_MODULES[m].weight_key: m for m in adapter.config.target_modules}

    def __getattr__(self, name):
        return getattr(self.source, name)

    def layer(self, layer: int, m) -> torch.Tensor:
        """The base tensor, merged with the adapter where one targets it."""
        full = self.source.layer(layer, m)
        module = self._by_weight.get(m.mcore)
        if module is None:
            return full
        a, b = self.adapter.tensors[(layer, module)]
        scaling = self.adapter.config.scaling
        merged = [w.float() + (bx.float() @ a.float()) * scaling
                  for w, bx in zip(self.rows.split(m.mcore, full), hf_parts(module, b, self.rows))]
        return self.rows.join(m.mcore, merged)
