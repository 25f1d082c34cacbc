# The two commands of the README, and the few steps behind them.
#   make book   build the report with a profile (default: the CPU smoke profile) into build/<profile>;
#               again into the same folder: make book ARGS=--clean (a new build) or ARGS=--resume
#   make test   run the test suite
# Both create .venv on first use (CPU PyTorch + mtlib with the book and test extras).
PROFILE ?= smoke
ARGS    ?=
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: book test sync clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[cpu,book,test]"
	touch $(STAMP)

book: $(STAMP)
	$(PY) -m mtlib.book --profile $(PROFILE) --out build/$(PROFILE) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest

# Regenerate the .ipynb files from the py:percent sources after editing a chapter.
sync: $(STAMP)
	$(VENV)/bin/jupytext --sync notebooks/*.py

clean:
	rm -rf build runs
