"""Model families as data (HF config <-> megatron-core config) and the GPTModel builder."""

from mindspeed_llm.models.builder import build_gpt_model
from mindspeed_llm.models.families import (
    FAMILIES,
    FamilySpec,
    ModelConfig,
    UnsupportedModelError,
    pipeline_layout,
)

__all__ = ["FAMILIES", "FamilySpec", "ModelConfig", "UnsupportedModelError", "build_gpt_model", "pipeline_layout"]
