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
