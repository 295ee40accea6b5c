# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
BASE := $(VENV)/.installed-base
TEST := $(VENV)/.installed-test

.PHONY: demo test lint bench clean

$(BASE): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	touch $(BASE)

$(TEST): $(BASE)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(TEST)

demo: $(BASE)
	$(BIN)/lmforge quickstart --overwrite  # a second `make demo` starts its own run over

test: $(TEST)
	$(BIN)/python -m pytest -q

# the speed comparisons with Hugging Face recorded in BENCHMARKS.md (minutes, not seconds)
bench: $(TEST)
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/decode_speed.py --compile --hf-static

lint: $(TEST)
	$(BIN)/ruff check lmforge tests bench
	$(BIN)/ruff format --check lmforge tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
