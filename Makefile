# The two commands a new user needs: `make reproduce` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mtml-installed
TEST_STAMP := $(VENV)/.mtml-test-installed
BOOK_STAMP := $(VENV)/.mtml-book-installed
# extra arguments for `mtml run`, e.g. make reproduce RUN_ARGS="--profile full"
RUN_ARGS ?=

.PHONY: help env reproduce test lab figures notebooks bench book clean

help:
	@echo "make reproduce   create .venv if needed, run every notebook (auto profile), regenerate figures/ and results/"
	@echo "make test        create .venv if needed (plus the test-only requirements-test.txt), run unit + CLI tests and nbval over the notebooks (smoke profile)"
	@echo "make lab         open JupyterLab on notebooks/ with the project's kernel"
	@echo "make figures     rebuild the gallery figures/README.md"
	@echo "make notebooks   rerun every notebook under the quick profile and store its outputs in notebooks/"
	@echo "make bench       run the benchmarks (installs the benchmark-only dependency)"
	@echo "make book        build the book build/book/index.html from the committed notebooks (not run), offline (installs requirements-book.txt)"

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps -e .
	@touch $(STAMP)

# test-only dependencies (nbgrader, to check that the exercises are in its format)
$(TEST_STAMP): requirements-test.txt $(STAMP)
	$(BIN)/python -m pip install -r requirements-test.txt
	@touch $(TEST_STAMP)

# book-only dependencies (Sphinx, myst-nb, the book theme, a local MathJax); the core pins stay as they are
$(BOOK_STAMP): requirements-book.txt $(STAMP)
	$(BIN)/python -m pip install -r requirements-book.txt -c requirements.txt
	@touch $(BOOK_STAMP)

env: $(STAMP)

reproduce: $(STAMP)
	$(BIN)/mtml run $(RUN_ARGS)

test: $(STAMP) $(TEST_STAMP)
	$(BIN)/python -m pytest --nbval-lax --nbval-cell-timeout=900 tests notebooks

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks

figures: $(STAMP)
	$(BIN)/mtml figures

notebooks: $(STAMP)
	$(BIN)/mtml run --profile quick --store

bench: $(STAMP)
	$(BIN)/python -m pip install -r requirements-bench.txt
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

book: $(STAMP) $(BOOK_STAMP)
	$(BIN)/python docs/book.py

clean:
	rm -rf build .pytest_cache
