"""evaluation.py: benchmarks on a Megatron checkpoint (any TP/PP/EP), and lm-evaluation-harness's backend.

``config.py`` (its flags, torch-free), ``server.py`` (the model driven from rank 0), ``lm.py`` (lm-eval's
model interface, which the built-in tasks score through too), ``tasks/`` (the benchmarks' readers, prompts and
answer extraction), ``runner.py`` (built-in tasks: table and JSON), ``harness.py`` (lm-eval's evaluator),
``cli.py`` (the entry's body).
"""
