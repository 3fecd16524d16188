PYTHON ?= python
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: install test test-fast lint bench quickstart clean

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -e ".[test]"

test:
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

test-fast:
	$(PYTHON) -m pytest tests -m "not slow" $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .

bench:
	@for b in bench/bench_*.py; do echo "== $$b"; $(PYTHON) $$b || exit 1; done

quickstart:
	bash examples/quickstart/run_quickstart.sh

clean:
	rm -rf quickstart_output .pytest_cache
