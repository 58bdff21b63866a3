# The two commands of the README's quick start: `make demo` and `make test`. Each creates .venv if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test check install clean

$(BIN)/batcher: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/batcher

demo: install
	$(BIN)/batcher estimate jobs/demo.yaml
	$(BIN)/batcher run jobs/demo.yaml --emulate --db demo.db

check: install
	$(BIN)/ruff check batcher tests bench
	$(BIN)/ruff format --check batcher tests bench
	$(BIN)/mypy

test: check
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) demo.db demo.db-wal demo.db-shm out .pytest_cache .mypy_cache .ruff_cache

# The documentation site (docs/, mkdocs.yml) into site/, with --strict: a broken link, anchor or page fails.
.PHONY: docs
$(BIN)/mkdocs: pyproject.toml | $(BIN)/batcher
	$(BIN)/pip install -q -e '.[test,docs]'
	touch $@

docs: $(BIN)/mkdocs
	$(BIN)/mkdocs build --strict --site-dir site
