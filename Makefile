# Two entry points for a fresh clone: `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv and install requirements.txt when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1

.PHONY: install repro test lint dag metrics clean-venv

install: $(STAMP)

# Reinstall only when requirements.txt changes.
$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check stages tests benchmarks
	$(BIN)/ruff format --check stages tests benchmarks

dag: $(STAMP)
	$(BIN)/dvc dag

metrics: $(STAMP)
	$(BIN)/dvc metrics show

clean-venv:
	rm -rf $(VENV)
