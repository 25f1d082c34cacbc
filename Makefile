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

.PHONY: book test sync publish clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[cpu,book,test]"
	touch $(STAMP)

book: $(STAMP)
	$(PY) -m mtlib.book --profile $(PROFILE) --out build/$(PROFILE) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest

# After editing a chapter, pyproject.toml's Repository URL or mtlib/parameters.py: regenerate the Colab badges,
# install cells and _config.yml from that URL, the parameters cells from mtlib/parameters.py, then the .ipynb
# twins of the py:percent sources.
sync: $(STAMP)
	$(PY) -m mtlib.project
	$(VENV)/bin/jupytext --sync notebooks/*.py

# Publish the book of PROFILE on GitHub Pages (the gh-pages branch of this clone's origin). A fork sets
# its address in pyproject.toml ([project.urls] Repository) and runs `make publish` (PROFILE=fast on a GPU).
publish: sync
	@git diff --quiet -- notebooks _config.yml || { echo "make sync changed the chapters or _config.yml for the new address: commit and push them (Colab opens the notebooks from GitHub), then run make publish again"; exit 1; }
	@test -f build/$(PROFILE)/book/_build/html/index.html || $(MAKE) book PROFILE=$(PROFILE)
	$(PY) -m ghp_import --no-jekyll --push --force --message "Publish the $(PROFILE) book" build/$(PROFILE)/book/_build/html
	@echo "published: https://$$(git remote get-url origin | sed -E 's#(git@|https://)github.com[:/]##; s#\.git$$##' | cut -d/ -f1).github.io/$$(basename -s .git $$(git remote get-url origin))/"

clean:
	rm -rf build runs
