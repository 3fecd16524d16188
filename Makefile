# Which Python runs everything:
# - PYTHON=... on the command line or in the environment: that interpreter, as it is;
# - an active virtual environment or conda env: its python;
# - otherwise: ./.venv, created from python3 on first use and installed into once
#   (again only when setup.py or pyproject.toml change).
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` / `make test-fast`: whole test files each (so a module fixture runs once),
# the longest files first (tests/conftest.py). 2, the default: the suite is mostly process launches, and one
# pytest process left a core idle; preprocessing's pool uses the fork server when started beside other
# Python threads, as inside an xdist worker (docs/performance_journal.md). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
VENV ?= .venv
BOOTSTRAP_PYTHON ?= python3

ifeq ($(origin PYTHON),undefined)
  ifneq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
    PYTHON := python
  else
    PYTHON := $(VENV)/bin/python
    OWN_VENV := 1
  endif
endif

ifdef OWN_VENV
# The stamp records that .venv holds this checkout's dependencies.
ENV_READY := $(VENV)/.mindspeed_llm-installed

$(VENV)/bin/python:
	@echo "> creating $(VENV) with $(BOOTSTRAP_PYTHON) (no virtual environment is active; set PYTHON=... to use your own)"
	@$(BOOTSTRAP_PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "error: '$(BOOTSTRAP_PYTHON) -m venv' failed: install python3-venv (Debian/Ubuntu) or run with PYTHON=/path/to/python" >&2; exit 1; }

$(ENV_READY): setup.py pyproject.toml | $(VENV)/bin/python
	@$(MAKE) --no-print-directory install
	@touch $@
else
# Someone else's environment: install into it only when the package or its test tools are missing.
ENV_READY := env-check
endif

.PHONY: install env-check test test-fast lint bench bench-quick device-check quickstart quickstart-from-hf clean

# The example scripts (and the tests that run them) call `python` and `torchrun`. Run them with a
# `python` on PATH that is $(PYTHON) (a machine may have only python3), its environment's folder next.
define with_python
py="$$(command -v "$(PYTHON)")" || { echo "error: PYTHON=$(PYTHON) is not a command: set PYTHON=/path/to/python" >&2; exit 1; }; \
case "$$py" in /*) ;; *) py="$$PWD/$$py" ;; esac; \
bin="$$(mktemp -d)"; trap 'rm -rf "$$bin"' EXIT; \
printf '#!/bin/sh\nexec "%s" "$$@"\n' "$$py" > "$$bin/python"; chmod +x "$$bin/python"; \
PATH="$$bin:$$(dirname "$$py"):$$PATH"
endef

install: | $(if $(OWN_VENV),$(VENV)/bin/python)
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -e ".[test]"
	@$(if $(OWN_VENV),touch $(VENV)/.mindspeed_llm-installed)

env-check:
	@$(PYTHON) -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('torch', 'megatron.core', 'mindspeed_llm', 'pytest', 'xdist', 'ruff')))" \
		|| $(MAKE) --no-print-directory install

test: $(ENV_READY)
	@$(with_python) $(PYTHON) -m pytest tests -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: $(ENV_READY)
	@$(with_python) $(PYTHON) -m pytest tests -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

lint: $(ENV_READY)
	$(PYTHON) -m ruff check .

# The full-size runs recorded in docs/performance.md (tens of minutes; convert needs ~47 GB of disk).
bench: $(ENV_READY)
	$(PYTHON) bench/bench_import.py
	$(PYTHON) bench/bench_attention.py
	$(PYTHON) bench/bench_document_attention.py
	$(PYTHON) bench/bench_pretrain.py
	$(PYTHON) bench/bench_preprocess.py
	$(PYTHON) bench/bench_convert.py --run
	$(PYTHON) bench/bench_sft.py
	$(PYTHON) bench/bench_moe.py

# A few minutes: the same benchmarks at smaller sizes, to see that they run.
bench-quick: $(ENV_READY)
	$(PYTHON) bench/bench_import.py --repeats 2
	$(PYTHON) bench/bench_attention.py --seqs 1024 --dtypes fp32 --repeats 1
	$(PYTHON) bench/bench_document_attention.py --seqs 1024 --repeats 1 --impls causal per_document
	$(PYTHON) bench/bench_pretrain.py --iters 2 --warmup 1 --dtype fp32
	$(PYTHON) bench/bench_preprocess.py --size-mb 5 --vocab 20000 --train-mb 2
	$(PYTHON) bench/bench_sft.py --rounds 1 --iters 2 --warmup 1 --seq 256 --mbs 2 --rows 200

# One CUDA GPU, under 8 minutes: ops vs torch references, logits vs transformers, train + resume, MFU
# (bench/device_check.py; DEVICE_CHECK_ARGS=--dry-run runs the same paths on the CPU at tiny sizes).
device-check: $(ENV_READY)
	$(PYTHON) bench/device_check.py $(DEVICE_CHECK_ARGS)

# MODEL=qwen3: the same journey with a tiny Qwen3; MODEL=qwen3-moe: with a tiny Qwen3-MoE at EP2 (default: Qwen2.5).
MODEL ?= qwen25
quickstart: $(ENV_READY)
	@$(with_python) QS_MODEL=$(MODEL) bash examples/quickstart/run_quickstart.sh

# The one-command leg: train straight from the HF folder and the parquet (converted and preprocessed at start-up,
# cached and reused), MindSpeed-LLM's current default journey (docs/train_from_hf.md).
quickstart-from-hf: $(ENV_READY)
	@$(with_python) QS_MODEL=$(MODEL) bash examples/quickstart/run_quickstart_from_hf.sh

clean:
	rm -rf quickstart_output .pytest_cache
