# The two commands of the README: `make run` and `make test`. Both create .venv and install
# everything on first use (and again when pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

.PHONY: install run demo test lint
install: $(VENV)/.installed

run: $(VENV)/.installed
	$(PY) manage.py runlocal

demo: $(VENV)/.installed
	$(PY) manage.py migrate --verbosity 0
	$(PY) manage.py demo

test: $(VENV)/.installed
	sh scripts/ensure-chromium
	sh scripts/ensure-compose
	$(PY) -m pytest $(PYTEST_ARGS)

# Boundaries (import-linter contracts in pyproject.toml) and no model change without its migration.
lint: $(VENV)/.installed
	$(VENV)/bin/lint-imports
	$(PY) manage.py makemigrations --check --dry-run
