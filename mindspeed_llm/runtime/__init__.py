"""The run's room, shared by training, inference and conversion: start-up, tokenizer, errors and exit, model setup.

Nothing here imports ``mindspeed_llm.training``; the configuration it starts from is ``mindspeed_llm.config``.
"""
