"""Names the command lines offer as choices, kept free of torch so that ``--help`` answers at once."""

# ``--model-type-hf`` values MindSpeed users pass. ``llama2`` is MindSpeed's catch-all for this family
# of decoder-only RMSNorm/SwiGLU/RoPE models, Qwen2 included (with ``--add-qkv-bias``).
MODEL_TYPE_HF_CHOICES = ("llama2", "llama3", "llama", "qwen2", "qwen25", "qwen2.5", "qwen3", "mistral",
                         "qwen3-moe", "qwen2-moe", "mixtral")
