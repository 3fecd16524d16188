PYTHON ?= python
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: install test test-fast lint bench bench-quick quickstart clean

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -e ".[test]"

test:
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

test-fast:
	$(PYTHON) -m pytest tests -m "not slow" $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .

# The full-size runs recorded in docs/performance.md (tens of minutes; convert needs ~47 GB of disk).
bench:
	$(PYTHON) bench/bench_import.py
	$(PYTHON) bench/bench_attention.py
	$(PYTHON) bench/bench_pretrain.py
	$(PYTHON) bench/bench_preprocess.py
	$(PYTHON) bench/bench_convert.py --run

# A few minutes: the same benchmarks at smaller sizes, to see that they run.
bench-quick:
	$(PYTHON) bench/bench_import.py --repeats 2
	$(PYTHON) bench/bench_attention.py --seqs 1024 --dtypes fp32 --repeats 1
	$(PYTHON) bench/bench_pretrain.py --iters 2 --warmup 1 --dtype fp32
	$(PYTHON) bench/bench_preprocess.py --size-mb 5 --vocab 20000 --train-mb 2

quickstart:
	bash examples/quickstart/run_quickstart.sh

clean:
	rm -rf quickstart_output .pytest_cache
