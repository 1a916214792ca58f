# The two commands of the README: `make run` (the whole stack) and `make test` (the suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-unit check lint bench screenshots clean

$(STAMP): requirements.txt requirements-dev.txt setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt -e .
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/aiintegration run

test: $(STAMP) check
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Static checks that run before the suite: mypy --strict, the layering contracts, ruff.
check: $(STAMP)
	$(PY) -m mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check aiintegration tests bench tools

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

lint: check

bench: $(STAMP)
	$(PY) bench/throughput.py

# What an operator sees, in headless Chromium (apt-get install -y chromium): docs/img/*.png.
# Uses the stack `make run` started (var/run.json) or starts its own. Not part of `make test`.
screenshots: $(STAMP)
	$(PY) tools/screenshots.py

clean:
	rm -rf $(VENV) var build *.egg-info
