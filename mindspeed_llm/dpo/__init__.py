"""Preference alignment (``posttrain_gpt.py --stage dpo|simpo|orpo``): one feature, one package (docs/dpo.md).

- ``config``: the flags (:func:`~mindspeed_llm.dpo.config.add_dpo_flags`, ``check_dpo_flags``) and
  ``DpoConfig`` (torch-free: the command lines import it before torch)
- ``data``: the four pairwise datasets -> micro-batches of chosen then rejected sequences
- ``loss``: sigmoid / hinge / IPO / SimPO / ORPO on per-sequence log-probabilities, and the logged metrics
- ``reference``: the reference model (frozen chunks of the same layout, or the LoRA base with adapters off)
- ``step``: the forward step (policy and reference in one micro-batch, through the pipeline)

The pairwise handlers of preprocessing are ``mindspeed_llm.data.pairwise``. Nothing is imported here, so the
command lines read ``config`` without torch.
"""
