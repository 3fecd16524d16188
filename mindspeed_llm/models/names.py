"""Names the command lines offer as choices, kept free of torch so that ``--help`` answers at once."""

# ``--model-type-hf`` values MindSpeed users pass. ``llama2`` is MindSpeed's catch-all for this family
# of decoder-only RMSNorm/SwiGLU/RoPE models, Qwen2 included (with ``--add-qkv-bias``).
MODEL_TYPE_HF_CHOICES = ("llama2", "llama3", "llama", "qwen2", "qwen25", "qwen2.5", "qwen3", "mistral",
                         "qwen3-moe", "qwen2-moe", "mixtral", "phi3", "phi3.5")

# The --model-type-hf value each HF architecture (config.json's ``architectures``) is converted as, for the
# launches that infer it (training straight from an HF folder). Every row of models/families.py is here.
ARCHITECTURE_MODEL_TYPE_HF = {
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen3MoeForCausalLM": "qwen3-moe",
    "Qwen2MoeForCausalLM": "qwen2-moe",
    "MixtralForCausalLM": "mixtral",
    "Phi3ForCausalLM": "phi3",
}


# ``--spec MODULE NAME`` values the training command line accepts: the layer specs MindSpeed-LLM's scripts
# name, and Megatron-LM's ``local``, each with the --model-type-hf families whose layer it describes (None:
# any). Every family is built from megatron-core's local layer (models/builder.layer_spec: RMSNorm, q/k norms
# with --qk-layernorm, megatron's MoE layer with experts), which is the layer each of these names.
MINDSPEED_SPEC = "mindspeed_llm.tasks.models.spec"
LAYER_SPECS: dict[tuple[str, ...], tuple[str, ...] | None] = {
    ("local",): None,
    (f"{MINDSPEED_SPEC}.qwen3_spec", "layer_spec"): ("qwen3", "qwen3-moe"),
    (f"{MINDSPEED_SPEC}.qwen2_moe_spec", "layer_spec"): ("qwen2-moe",),
}
