"""peft references for the LoRA tests: an adapter made by peft on transformers' model, its loss and
gradients."""

from __future__ import annotations

import torch

PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Layers whose q/k/v (gate/up) share one A: megatron's fused linear_qkv (linear_fc1) holds one A.
SHARED_A = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def make_peft_adapter(hf_dir: str, out_dir: str, *, r: int = 4, alpha: float = 8.0, seed: int = 7,
                      targets: tuple[str, ...] = tuple(PEFT_TARGETS)) -> None:
    """A peft LoRA adapter on ``targets`` of the HF model in ``hf_dir`` with random, non-zero A and B (A
    shared inside q/k/v and gate/up), saved by peft's ``save_pretrained``."""
    from peft import LoraConfig, get_peft_model

    from tests.checkpoint.tiny_models import load_hf_model

    torch.manual_seed(seed)
    model = get_peft_model(
        load_hf_model(hf_dir),
        LoraConfig(
            r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets), init_lora_weights=False
        ),
    )
    with torch.no_grad():
        for layer in model.base_model.model.model.layers:
            for group in SHARED_A:
                if group[0] not in targets:
                    continue
                parent = layer.self_attn if group[0] == "q_proj" else layer.mlp
                first = getattr(parent, group[0]).lora_A["default"].weight
                for name in group[1:]:
                    getattr(parent, name).lora_A["default"].weight.copy_(first)
            for name in targets:  # a trained-looking B: the adapter changes the output
                parent = layer.self_attn if name in ("q_proj", "k_proj", "v_proj", "o_proj") else layer.mlp
                getattr(parent, name).lora_B["default"].weight.normal_(0, 0.05)
    model.save_pretrained(out_dir)


def load_peft_model(
    hf_dir: str, adapter_dir: str, dtype: torch.dtype = torch.float32, trainable: bool = False
):
    """transformers' model from ``hf_dir`` with peft's adapter from ``adapter_dir``."""
    from peft import PeftModel

    from tests.checkpoint.tiny_models import load_hf_model

    return PeftModel.from_pretrained(load_hf_model(hf_dir, dtype), adapter_dir, is_trainable=trainable)


def peft_loss_and_grads(hf_dir: str, adapter_dir: str, ids: list[list[int]]) -> tuple[float, dict]:
    """Mean next-token cross entropy of ``ids`` and the gradients of every lora_A/lora_B, in fp32.

    Keys: ``(layer, hf module, "A"|"B")``.
    """
    model = load_peft_model(hf_dir, adapter_dir, trainable=True)
    tokens = torch.tensor(ids)
    logits = model(input_ids=tokens).logits.float()
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
    )
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        if "lora_" not in name:
            continue
        parts = name.split(".")
        layer = int(parts[parts.index("layers") + 1])
        module = parts[parts.index("lora_A" if "lora_A" in parts else "lora_B") - 1]
        grads[(layer, module, "A" if "lora_A" in parts else "B")] = p.grad.detach().clone()
    return loss.item(), grads
