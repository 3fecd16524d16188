"""The runtime shared by training, inference and the converter (initialisation, checkpoint I/O, run state).

Nothing here imports ``mindspeed_llm.training``; the package itself imports nothing heavy.
"""
