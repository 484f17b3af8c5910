# Two entry points for a fresh clone: `make repro` runs the pipeline, `make test` runs the tests.
# Both create .venv and install requirements.txt when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1

.PHONY: install repro test lint dag metrics metrics-diff exps report seeds seeds-table clean-venv real

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

# The headline metrics (data/metrics/*.json), one row per metric: `dvc metrics show` gives each one a column.
metrics: $(STAMP)
	$(BIN)/dvc metrics show --json | $(BIN)/python -m stages.metrics

# What changed since a revision: make metrics-diff [REV=HEAD~1] (default HEAD, against the workspace).
REV ?= HEAD
metrics-diff: $(STAMP)
	$(BIN)/dvc metrics diff $(REV)

# The experiments with a few headline columns, within 120 columns; KEEP='regex' adds columns, e.g. the
# params being compared: make exps KEEP='postprocess\.gating|threshold\.objective'.
EXPS_COLUMNS := Experiment|Created|val_auc|val_dice|holdout_dice_gated|test_dice_gated
KEEP ?=
exps: $(STAMP)
	$(BIN)/dvc exp show --drop '.*' --keep '^($(EXPS_COLUMNS))$$' $(if $(KEEP),--keep '$(KEEP)')

# One static HTML file of the last run: tables, curves, galleries, embeddings (README "The run's report").
report: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m stages.report --out report/index.html

clean-venv:
	rm -rf $(VENV)

# The real-data GPU profile (README "Real data on a GPU"): make real DATA=/path/to/competition/folder
DATA ?=
GPUS ?= 1
real: $(STAMP)
	@test -n "$(DATA)" || { echo "error: set DATA=/path/to/severstal-steel-defect-detection" >&2; exit 2; }
	@test -f "$(DATA)/train.csv" || { echo "error: $(DATA)/train.csv not found" >&2; exit 2; }
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc exp run \
	  -S 'data.root=$(abspath $(DATA))' \
	  -S classifier.input_height=256 -S classifier.input_width=1600 -S classifier.encoder_weights=imagenet \
	  -S classifier.folds=5 -S classifier.max_epochs=20 -S classifier.patience=4 \
	  -S classifier.num_workers=4 \
	  -S segment.backbone=resnet34 -S segment.input_height=256 -S segment.input_width=1600 \
	  -S segment.crop_height=256 -S segment.crop_width=512 -S segment.images_per_epoch=null \
	  -S segment.encoder_weights=imagenet -S segment.folds=5 -S segment.max_epochs=30 -S segment.patience=5 \
	  -S segment.batch_size=8 -S segment.num_workers=4 -S segment.train_images=all \
	  -S 'segment.decoder_channels=[256,128,64,32,16]' \
	  -S 'segment.min_areas_px=[0,600,1000,2000,3000,4000]' \
	  -S 'postprocess.min_areas_px=[0,600,1000,2000,3000,4000]' \
	  -S classifier.nproc_per_node=$(GPUS) -S score_train.nproc_per_node=$(GPUS) \
	  -S segment.nproc_per_node=$(GPUS) \
	  -S bundle.device=auto

# Repeated seeds (README "Repeated seeds"): make seeds N=5 [FROM=1] queues the experiments seed-FROM ..
# seed-<FROM+N-1>, each setting every param of SEED_PARAMS to its number, runs the whole queue (JOBS at a
# time) and prints the table of every finished seed-* experiment of this commit; make seeds-table only prints it.
# TARGETS: the stages to run up to (dvc exp run targets; default: the whole DAG), e.g. postprocess to skip the
# Kaggle bundle per seed. SEEDS_ARGS: more options of `python -m stages.seeds` (--metric FILE:KEY, --json).
N ?= 5
FROM ?= 1
JOBS ?= 1
SEED_PARAMS ?= classifier.seed segment.seed
SEED_NAME ?= seed
TARGETS ?=
SEEDS_ARGS ?=
SEEDS_TABLE = $(BIN)/python -m stages.seeds --name '$(SEED_NAME)-*' $(SEEDS_ARGS)
seeds: $(STAMP)
	@case "$(N):$(FROM):$(JOBS)" in *[!0-9:]*|:*|*::*|*:) \
	  echo "error: N, FROM and JOBS must be whole numbers, got N=$(N) FROM=$(FROM) JOBS=$(JOBS)" >&2; exit 2;; esac
	@test $(N) -ge 1 || { echo "error: N must be at least 1, got $(N)" >&2; exit 2; }
	@set -e; for seed in $$(seq $(FROM) $$(($(FROM) + $(N) - 1))); do \
	  $(BIN)/dvc exp run --queue -n $(SEED_NAME)-$$seed $(foreach param,$(SEED_PARAMS),-S $(param)=$$seed) $(TARGETS); \
	done
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc exp run --run-all --jobs $(JOBS)
	$(SEEDS_TABLE)

seeds-table: $(STAMP)
	$(SEEDS_TABLE)
