# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
# Pinned so pip takes the CPU wheel; an unpinned torch pulls a multi-GB CUDA build. Override for GPUs.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gpt2kit-installed

.PHONY: demo test lint install clean bench test-tools

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev,finetune,sweep]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/gpt2kit demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

# Debian packages two groups of tests use: chromium (the playground's browser test, tests/test_serve.py) and
# bubblewrap (HumanEval's bwrap sandbox cases). Installed only where apt-get can (as root) and only when
# missing; anywhere else those tests are skipped and say why.
TEST_DEBS := $(if $(wildcard /usr/bin/chromium),,chromium) $(if $(wildcard /usr/bin/bwrap),,bubblewrap)

test-tools:
	@test -z "$(strip $(TEST_DEBS))" || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	  { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq $(TEST_DEBS) >/dev/null 2>&1 || \
	    { apt-get update -qq && apt-get install -y -qq $(TEST_DEBS) >/dev/null; }; }; } || \
	  echo "note: could not install $(strip $(TEST_DEBS)); the tests that need them will be skipped"

# The playground's screenshot from the browser test is kept in test-artifacts/.
test: lint test-tools
	HF_HUB_OFFLINE=1 GPT2KIT_ARTIFACTS=test-artifacts $(PY) -m pytest -q

# Issue 12's measurements, appended as markdown tables to $(BENCH_OUT): training-step throughput
# (~5 min), then time to quality (3 budgets x 3 recipes: ~1 h on 2 cores; the first run also trains
# the tokenizer and prepares the stdlib into runs/bench-ttq/). Run on an otherwise idle machine.
# The other benchmarks' commands are in docs/BENCHMARKS.md.
BENCH_OUT ?= runs/bench.md

bench: $(STAMP)
	@mkdir -p $(dir $(BENCH_OUT))
	HF_HUB_OFFLINE=1 $(PY) benchmarks/throughput.py --out $(BENCH_OUT)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/time_to_quality.py --out $(BENCH_OUT)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
