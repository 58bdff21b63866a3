# The two commands of the README's quick start: `make demo` and `make test`. Each creates .venv if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pytest-xdist workers for `make test`. The suite mostly waits on CLI subprocesses, emulators and sockets (a
# serial run kept a 2-core machine a fifth busy), so more workers than cores pay: on 2 cores a 266-test slice
# took 92 s on 4 workers, 65 s on 6, 69 s on 8, 79 s on 12. Every test has its own tmp_path, port-0 servers and
# PostgreSQL database; worksteal evens out the few tests of 30-50 s. `make test TEST_WORKERS=0` runs it serially.
TEST_WORKERS ?= 6

.PHONY: demo test test-fast check install clean

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
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal

# The edit-test loop: the in-memory tiers (runner rules on a virtual clock, manifests, money, the emulator's pure
# parts, migrations), in seconds; no lint, no subprocesses, no PostgreSQL.
test-fast: install
	$(BIN)/pytest -q -n 2 tests/unit tests/emulator/test_emulator_units.py tests/migration

clean:
	rm -rf $(VENV) demo.db demo.db-wal demo.db-shm out .pytest_cache .mypy_cache .ruff_cache

# The documentation site (docs/, mkdocs.yml) into site/, with --strict: a broken link, anchor or page fails.
.PHONY: docs
$(BIN)/mkdocs: pyproject.toml | $(BIN)/batcher
	$(BIN)/pip install -q -e '.[test,docs]'
	touch $@

docs: $(BIN)/mkdocs
	$(BIN)/mkdocs build --strict --site-dir site
