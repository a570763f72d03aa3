# Two commands matter: `make run` and `make test`. Both do all set-up from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test test-fast install node-deps lint bench db-stop clean catalog docs

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,web]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# squawk, the PostgreSQL migration linter: its PyPI wheel (the binary inside), pinned.
SQUAWK_VERSION := 2.70.0
SQUAWK_STAMP   := $(VENV)/.squawk-$(SQUAWK_VERSION)

$(SQUAWK_STAMP): $(STAMP)
	@$(PY) -m pip install --quiet --disable-pip-version-check squawk-cli==$(SQUAWK_VERSION)
	@rm -f $(VENV)/.squawk-* && touch $@

# The Node example's packages, from its lockfile, for tests/test_node.py. Quiet, and never
# fatal: without npm (or when npm ci fails) those tests skip and say why.
NODE_EXAMPLE := examples/node
node-deps:
	@if [ ! -d $(NODE_EXAMPLE)/node_modules ] && command -v npm >/dev/null 2>&1; then \
	  (cd $(NODE_EXAMPLE) && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
	    || { rm -rf $(NODE_EXAMPLE)/node_modules; \
	         echo "warning: npm ci failed in $(NODE_EXAMPLE); its tests will be skipped"; }; \
	fi

## run: show the demo job working, on $PGTASKS_DATABASE_URL when it is set, else on the
## embedded PostgreSQL that `pgtasks db start` creates (or reuses) in ./.pgtasks
run: install
	$(if $(PGTASKS_DATABASE_URL),,$(VENV)/bin/pgtasks db start)
	$(PY) examples/demo.py

## test: the whole suite against a real PostgreSQL (embedded, started by the tests), with the
## short fuzzing, schemathesis and chaos runs; PGTASKS_LONG=1 make test runs their long
## versions (CONTRIBUTING.md, "Long runs")
# Two pytest processes (pytest-xdist), each with its own embedded PostgreSQL: most tests wait
# on a server or a worker process, so two overlap well on a 2-core machine. TEST_WORKERS=0
# runs them in this process (pdb, -x, one file).
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS))

test: install node-deps
	$(PY) -m pytest $(XDIST)

## test-fast: the suite without the tests marked slow (worker processes, servers, browsers,
## Node, pgbouncer, PostgreSQL restarts); `make test` still runs everything
test-fast: install
	$(PY) -m pytest $(XDIST) -m "not slow"

## lint: ruff, ruff format, mypy --strict and vulture (dead code; false positives listed in
## vulture_whitelist.py), then squawk over the new migrations (sql/0024 on, .squawk.toml)
lint: install $(SQUAWK_STAMP)
	$(VENV)/bin/ruff check pgtasks tests bench examples
	$(VENV)/bin/ruff format --check pgtasks tests bench examples
	$(VENV)/bin/mypy --strict pgtasks
	$(VENV)/bin/vulture pgtasks vulture_whitelist.py --min-confidence 60
	$(PY) -m tests.squawk

## docs: the site with the API reference from the docstrings, into site/ (offline; --strict
## fails on a broken link or reference and on a public name without a docstring)
docs: install
	$(VENV)/bin/mkdocs build --strict --site-dir site

## catalog: build the schema both ways (topic files, numbered deltas) and diff the catalogs
catalog: install
	$(PY) -m tests.catalog

## bench: pgtasks side by side with procrastinate and PgQueuer on one embedded server
bench: install
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	$(PY) -m bench

db-stop: install
	$(VENV)/bin/pgtasks db stop

clean:
	-$(VENV)/bin/pgtasks db stop 2>/dev/null
	rm -rf $(VENV) .pgtasks .pytest_cache site $(NODE_EXAMPLE)/node_modules
