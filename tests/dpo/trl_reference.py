"""TRL's DPOTrainer (trl 1.16) on transformers' model: loss, rewards and gradients of one batch of pairs.

The pairs are given as token ids (``prompt_ids``, ``chosen_ids``, ``rejected_ids``); TRL's own collator
(``DataCollatorForPreference``) pads them and its ``compute_loss`` runs the policy and the reference.
"""

from __future__ import annotations

import tempfile


def _trainer(policy, ref, tokenizer_dir: str, loss_type: str, beta: float, peft_config=None):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    data = Dataset.from_list([{"prompt": "w3 w4", "chosen": "w5", "rejected": "w6"}])  # construction only
    out = tempfile.mkdtemp(prefix="trl-dpo-")
    cfg = DPOConfig(
        output_dir=out,
        loss_type=[loss_type],
        beta=beta,
        per_device_train_batch_size=1,
        learning_rate=0.0,
        report_to=[],
        use_cpu=True,
        bf16=False,
        fp16=False,
        max_length=None,
        precompute_ref_log_probs=False,
        dataset_num_proc=None,
    )
    return DPOTrainer(
        model=policy,
        ref_model=ref,
        args=cfg,
        train_dataset=data,
        processing_class=tok,
        peft_config=peft_config,
    )


def trl_dpo_step(
    policy,
    ref,
    tokenizer_dir: str,
    pairs: list[dict],
    loss_type: str,
    beta: float = 0.1,
    peft_config=None,
    pad_id: int = 2,
) -> dict:
    """TRL's loss, metrics and the policy's gradients (by parameter name) for ``pairs`` as one batch."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    trainer = _trainer(policy, ref, tokenizer_dir, loss_type, beta, peft_config)
    model = trainer.model
    model.train()
    batch = DataCollatorForPreference(pad_token_id=pad_id)(pairs)  # padding: masked out
    model.zero_grad()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}  # noqa: SLF001 (TRL's logged values)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": float(loss), "metrics": metrics, "grads": grads}
