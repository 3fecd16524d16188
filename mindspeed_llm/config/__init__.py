"""The run's configuration, torch-free: flags, their validation, typed groups, the derived plan, Megatron's
namespace.

- ``flags.py``: the command lines (Megatron-LM's and MindSpeed-LLM's spellings), parsing.
- ``validate.py``: the rules; the only module that assigns attributes of the parsed namespace.
- ``paths.py``: data prefixes and tokenizer folders, checked before the heavy imports.
- ``groups.py``: frozen typed groups built once from the validated flags; translators to megatron-core.
- ``plan.py``: the values derived from the configuration, the world and the checkpoint (``RunPlan``).
- ``namespace.py``: Megatron's ``get_args()`` namespace, derived from configuration and plan, frozen.

Importing any of them loads neither torch, megatron-core nor transformers.
"""
