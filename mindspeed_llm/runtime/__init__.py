"""The run's room, shared by training, inference and the converter: start-up, tokenizer, errors and exit,
model setup, checkpoint I/O (``runtime.checkpoint``) and run state.

Nothing here imports ``mindspeed_llm.training``; the configuration it starts from is ``mindspeed_llm.config``.
"""
