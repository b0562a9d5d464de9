# Two commands on a fresh machine: `make book` and `make test`.
# Both create .venv on first use and install what they need into it.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The torch build installed first. Override for other builds, e.g. a CPU-only wheel:
#   make test TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
# Scale preset for `make book` (ci, cpu or gpu); empty means automatic (gpu with CUDA, else cpu).
PRENORM_SCALE ?=

STAMP := $(VENV)/.installed

.PHONY: book test lint format benchmark clean

# The ray extra is installed too, so that tests/test_sweeps_ray.py runs here and in CI
# (without Ray that test is skipped, saying why).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX) "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[book,test,ray]"
	touch $@

book: $(STAMP)
	PRENORM_SCALE=$(PRENORM_SCALE) $(BIN)/jupyter-book build . --all --warningiserror --keep-going
	@echo "Open _build/html/index.html"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PRENORM_SCALE=ci $(BIN)/python -m pytest --nbval-lax

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

benchmark: $(STAMP)
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/sweep_throughput.py

clean:
	rm -rf _build $(VENV)
