"""The helpers every test file shares (import from the submodule; nothing is imported here, so a torch-free
test stays torch-free):

- :mod:`tests.helpers.paths`: ``REPO_ROOT``, ``HF_CONFIG_FIXTURES``.
- :mod:`tests.helpers.launch`: ``free_port()``; ``torchrun(script, *args, nproc=, timeout=, env=)`` (the
  workers torchrun would start, without its agent; raises with the output on failure) and
  ``StartedTorchrun`` (the same, started now, ``.result()`` later); ``torchrun_command(script, *args, nproc=,
  port=, nnodes=, node_rank=, torchrun_args=)`` (torchrun's own command, for tests of torchrun itself);
  ``Started(cmd, env=, cwd=, timeout=)`` (one process started now, ``.result()`` later). Their ``python
  [-u] SCRIPT.py`` processes are forked from a preloaded interpreter (torch imported once per test process:
  :mod:`tests.helpers.preloaded`; ``MINDSPEED_LLM_TEST_FRESH_PROCESSES=1`` starts fresh ones).
- :mod:`tests.helpers.numerics`: ``rel_err(actual, expected)`` (Frobenius, float64) and ``DTYPE_TOL``
  (the per-dtype bound of the kernel tests: float32 1e-5, bfloat16 1e-2).
- :mod:`tests.helpers.tiny`: ``tiny_hf_config(kind, ...)``, ``make_tiny_hf_model(folder, kind, ...)`` (a
  random HF model made by transformers, saved with a word-level tokenizer; returns it loaded back),
  ``load_hf_model(folder)``, ``save_word_tokenizer(folder, num_words, specials)``,
  ``make_hf_model(folder, kind, ...)`` (the same, returns the folder), ``convert_hf_to_mg(hf_dir, save_dir,
  tp, pp)`` (convert_ckpt.py's library function) and ``tiny_checkpoints(root, layouts, kind=, **model)``
  (a model and its conversions to several TP/PP layouts: the e2e and inference tests' module fixture).
"""
