# The two commands of the README: `make run` and `make test`. Both create .venv and install
# everything on first use (and again when pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[server,training,dev]'
	touch $@

.PHONY: install run demo test lint typecheck format lock smartnoise
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

# Style (ruff's rule set and format, in pyproject.toml), boundaries (import-linter contracts) and no
# model change without its migration. The OpenAPI document is validated by
# tests/security/test_openapi_contract.py, which `make test` runs.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) manage.py makemigrations --check --dry-run

# mypy, strict on the pure cores ([tool.mypy] in pyproject.toml).
typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

format: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# SmartNoise SQL, the peer benchmarks/dp_api.py compares against, in an environment of its own: it
# needs opendp 0.14, the service pins 0.16.
smartnoise: .venv-smartnoise/.installed
.venv-smartnoise/.installed:
	test -x .venv-smartnoise/bin/python || $(PYTHON) -m venv .venv-smartnoise
	.venv-smartnoise/bin/python -m pip install --quiet smartnoise-sql==1.0.10
	touch $@

# The server's pinned set (PyPI, CPU torch), for reproducible images: requirements/server.lock.
lock:
	$(VENV)/bin/uv pip compile pyproject.toml --extra server --extra training --python-version 3.11 \
	  --python-platform x86_64-unknown-linux-gnu --custom-compile-command "make lock" --quiet \
	  --output-file requirements/server.lock
