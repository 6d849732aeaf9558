# Two commands do everything on a fresh machine:
#   make demo   - set up .venv, then a short multi-task SMART run on the GLUE tasks
#   make test   - set up .venv, then the whole test suite
# Data and encoder default to the local copies in ../shared where they exist, and to the
# Hugging Face hub otherwise.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
LOCAL_ENCODER := $(SHARED)/models/all-MiniLM-L6-v2
ENCODER ?= $(if $(wildcard $(LOCAL_ENCODER)/config.json),$(LOCAL_ENCODER),sentence-transformers/all-MiniLM-L6-v2)
DATA_DIR ?= $(SHARED)/data
TASK_FILE ?= $(if $(wildcard $(DATA_DIR)/glue/RTE/train.tsv),task_defs/glue.yaml,task_defs/glue_hub.yaml)
DEMO_STEPS ?= 150
PYTEST_ARGS ?=
# pytest-xdist workers for make test; 0 runs the suite in one process
TEST_PROCESSES ?= 2

.PHONY: setup demo test bench clean

# torch first, pinned: that version is a CPU build on local disk here; letting the
# project's dependencies pick one would pull a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

# offline only when both the encoder and the data are local: the hub tasks need the network
demo: setup
	HF_HUB_OFFLINE=$(if $(and $(wildcard $(LOCAL_ENCODER)/config.json),$(wildcard $(DATA_DIR)/glue/RTE/train.tsv)),1,0) \
	$(BIN)/mtsmart train $(TASK_FILE) --encoder $(ENCODER) --data-dir $(DATA_DIR) \
		--output runs/demo --overwrite --smart full --max-steps $(DEMO_STEPS) \
		--eval-every $(DEMO_STEPS) --sampler temperature

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_PROCESSES) $(PYTEST_ARGS)

bench: setup
	$(BIN)/python scripts/bench_speed.py

clean:
	rm -rf runs preds .pytest_cache
