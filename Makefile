# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo alma-demo test fuzz lint bench schemas docs tools services clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# System tools the steps and tests use for real: rsync (the rsync step), zstd and GNU tar (checks),
# opj_compress (image bench baseline) and exiftool (reads back embedded XMP in tests),
# graphviz (wsrun serve's pictures) and chromium (the web tests' browser, driven by Playwright).
tools:
	@command -v rsync >/dev/null 2>&1 || { (apt-get update -qq || true) && apt-get install -y -qq rsync zstd >/dev/null; }
	@command -v zstd >/dev/null 2>&1 || { apt-get install -y -qq zstd >/dev/null 2>&1 || echo "zstd not installed: its checks will skip"; }
	@command -v opj_compress >/dev/null 2>&1 || { apt-get install -y -qq libopenjp2-tools >/dev/null 2>&1 || echo "opj_compress not installed: the image bench compares with nothing"; }
	@command -v exiftool >/dev/null 2>&1 || { apt-get install -y -qq libimage-exiftool-perl >/dev/null 2>&1 || echo "exiftool not installed: its metadata checks will skip"; }
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq || true) && apt-get install -y -qq chromium >/dev/null 2>&1 || echo "chromium not installed: the browser tests skip (and fail under CI=true)"; }
	@command -v dot >/dev/null 2>&1 || { apt-get install -y -qq graphviz >/dev/null 2>&1 || echo "graphviz not installed: wsrun serve shows pictures as DOT text"; }

demo: $(STAMP) tools
	$(BIN)/python examples/quickstart/demo.py

# The ALMA workflow on one machine (docs/alma.md); ARGS=--movies for the seed's nine OUSs.
alma-demo: $(STAMP) tools
	$(BIN)/python examples/alma/demo.py $(ARGS)

# The scale-out backends' tests want PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672):
# start them when they are installed but stopped. Absent ones make those tests skip (fail
# under CI=true).
services:
	@$(PYTHON) -c "import socket; socket.create_connection(('127.0.0.1', 5432), 1)" 2>/dev/null || { command -v pg_ctlcluster >/dev/null 2>&1 && pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -1) main start; } || true
	@$(PYTHON) -c "import socket; socket.create_connection(('127.0.0.1', 5672), 1)" 2>/dev/null || { command -v rabbitmq-server >/dev/null 2>&1 && rabbitmq-server -detached && sleep 10; } || true

test: $(STAMP) tools services
	$(BIN)/ruff check engine tests bench
	$(BIN)/pytest -n 2 -q

# Fuzz validation and dry runs with hostile recipe files for MINUTES minutes, fresh inputs each
# time (tests/fuzz_recipes.py; a failing input is kept in fuzz-failures/). `make test` includes a
# bounded, derandomized 60-second pass (tests/test_fuzz.py).
MINUTES ?= 10
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz_recipes.py --seconds $$(( $(MINUTES) * 60 ))

lint: $(STAMP)
	$(BIN)/ruff check engine tests bench
	$(BIN)/ruff format --check engine tests bench

schemas: $(STAMP)
	$(BIN)/wsrun schema --write

docs: $(STAMP)
	$(BIN)/python -m wsrun.docgen docs/recipes.md

bench: $(STAMP) tools
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build dist .pytest_cache
