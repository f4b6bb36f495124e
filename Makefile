PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint docs docs-build package demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# lint and types, the strict docs build and the wheel check first (about a minute), then the suite
test: install lint docs-build package
	$(PY) -m pytest -q --durations=15

lint: install
	$(VENV)/bin/ruff check captum_ext tests benchmarks examples
	$(VENV)/bin/ruff format --check --quiet captum_ext tests benchmarks examples
	$(VENV)/bin/mypy captum_ext

docs-build: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site

docs: install
	$(VENV)/bin/mkdocs serve

package: install
	bash scripts/check_package.sh $(PY)

demo: install
	$(VENV)/bin/captum-ext demo

bench: install
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	for script in benchmarks/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) runs roar_cache .pytest_cache build dist
