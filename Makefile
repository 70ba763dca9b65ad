# Two commands for a reader on a fresh machine (only Python 3.11 needed):
#   make book   build the website into _build/html (renders the stored notebook outputs)
#   make test   run the whole test suite (library tests + every chapter in quick mode)
# Both create .venv and install the pinned dependencies on first use (about a minute),
# then reuse it. `make notebooks` re-executes every chapter on the full protocol (slow).

SHELL := /bin/bash
.DEFAULT_GOAL := help

ifndef PYTHON
PYTHON := $(shell command -v python3.11 2>/dev/null || command -v python3)
endif
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hctrain-installed
# Put the venv first so that jupyter/papermill kernels find its `python`.
export PATH := $(abspath $(BIN)):$(PATH)

NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))

.PHONY: help book test notebooks status env clean clean-venv publish publish-site

help:
	@echo "make book       build the book into _build/html (open _build/html/index.html)"
	@echo "make test       run all tests; chapters run in quick mode (HCTRAIN_QUICK=1)"
	@echo "make notebooks  re-execute every chapter on the full protocol with papermill (slow: hours)"
	@echo "make publish    build the book and push it to the gh-pages branch of PUBLISH_REMOTE (origin)"
	@echo "make env        only create/update $(VENV)"
	@echo "make clean      remove _build; make clean-venv removes $(VENV)"

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "error: python3.11 (or python3 >= 3.11) not found" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: $(PYTHON) is older than Python 3.11" >&2; exit 1; }
	@echo "creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml | $(BIN)/python
	@echo "installing hctrain and its pinned dependencies into $(VENV) (CPU torch 2.13.0)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -e '.[all]'
	@touch $@

env: $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "open $(CURDIR)/_build/html/index.html"

# Publishing: the built site (_build/html) becomes the only commit of the gh-pages branch of
# PUBLISH_REMOTE (ghp-import; .nojekyll so that GitHub Pages serves _static as it is). GitHub
# Pages then serves that branch; .github/workflows/book.yml does the same from CI instead.
PUBLISH_REMOTE ?= origin
PUBLISH_BRANCH ?= gh-pages
publish: book
	$(MAKE) publish-site

publish-site:
	@test -f _build/html/index.html || { echo "error: no _build/html/index.html: run make book first" >&2; exit 1; }
	$(BIN)/ghp-import --no-jekyll --no-history --force --push --remote $(PUBLISH_REMOTE) \
	  --branch $(PUBLISH_BRANCH) --message "Publish the book from $$(git rev-parse --short HEAD)" _build/html
	@echo "published _build/html to $(PUBLISH_REMOTE) $(PUBLISH_BRANCH)"

# Extra pytest arguments: make test PYTEST_ARGS='-m "not book" -x'
PYTEST_ARGS ?=
test: $(STAMP)
	@echo "$(BIN)/pytest $(PYTEST_ARGS)"
	@rc=0; $(BIN)/pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

# Full protocol: every chapter is executed in place with its default parameters, then the
# execution-status table (book/_execution_status.md) is regenerated. Slow.
notebooks: $(STAMP)
	@test -n "$(NOTEBOOKS)" || { echo "no notebooks in notebooks/" >&2; exit 1; }
	@set -e; for nb in $(NOTEBOOKS); do \
	  echo "== $$nb"; \
	  env -u HCTRAIN_QUICK HCTRAIN_PROGRESS=0 MPLBACKEND=module://matplotlib_inline.backend_inline \
	    $(BIN)/papermill "$$nb" "$$nb" --cwd notebooks -k python3; \
	done
	$(MAKE) status

status: $(STAMP)
	$(BIN)/python -m hctrain.status

clean:
	rm -rf _build

clean-venv:
	rm -rf $(VENV)
