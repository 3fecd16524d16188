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
  ``StartedScript(script, *args, env=, cwd=)`` (a forked ``python -u SCRIPT.py`` with the parts of
  ``Popen``'s API the signal tests and tests/tool_process.py use); ``run_python(code, folder)`` (``python
  -c`` as a forked script); ``with_file_size_limit(script, limit)`` (a full disk for a forked tool);
  ``output_so_far`` / ``wait_for_output`` / ``launch_pids`` / ``signal_launch`` / ``exit_statuses`` (a
  launch signalled mid-run); ``run_node_workers`` (a ``--nnodes`` job's workers with torchrun's
  environment, without its agents).
- :mod:`tests.helpers.fork_shim`: ``python`` / ``torchrun`` executables put first on PATH for the bash
  scripts a test runs (the quick start), forked from a preloaded interpreter.
- :mod:`tests.helpers.numerics`: ``rel_err(actual, expected)`` (Frobenius, float64) and ``DTYPE_TOL``
  (the per-dtype bound of the kernel tests: float32 1e-5, bfloat16 1e-2).
- :mod:`tests.helpers.tiny`: ``tiny_hf_config(kind, ...)``, ``make_tiny_hf_model(folder, kind, ...)`` (a
  random HF model made by transformers, saved with a word-level tokenizer; returns it loaded back),
  ``load_hf_model(folder)``, ``save_word_tokenizer(folder, num_words, specials)``,
  ``make_hf_model(folder, kind, ...)`` (the same, returns the folder), ``convert_hf_to_mg(hf_dir, save_dir,
  tp, pp)`` (convert_ckpt.py's library function) and ``tiny_checkpoints(root, layouts, kind=, **model)``
  (a model and its conversions to several TP/PP layouts: the e2e and inference tests' module fixture).
"""
