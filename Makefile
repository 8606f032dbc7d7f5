# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo alma-demo test lint bench schemas docs tools services clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The JSON Schema clients recipe authors use, pinned, for tests/test_editor_schema.py.
NODE_TOOLS := .tools
NODE_PACKAGES := ajv-cli@5.0.0 yaml-language-server@1.25.0

# System tools the steps and tests use for real: rsync (the rsync step), zstd and GNU tar (checks),
# opj_compress (image bench baseline) and exiftool (reads back embedded XMP in tests),
# graphviz (wsrun serve's pictures), zsh (its completion script), node with ajv-cli and yaml-language-server (the schema
# as editors see it) and chromium (the web tests' browser, driven by Playwright).
tools:
	@command -v rsync >/dev/null 2>&1 || { (apt-get update -qq || true) && apt-get install -y -qq rsync zstd >/dev/null; }
	@command -v zstd >/dev/null 2>&1 || { apt-get install -y -qq zstd >/dev/null 2>&1 || echo "zstd not installed: its checks will skip"; }
	@command -v opj_compress >/dev/null 2>&1 || { apt-get install -y -qq libopenjp2-tools >/dev/null 2>&1 || echo "opj_compress not installed: the image bench compares with nothing"; }
	@command -v exiftool >/dev/null 2>&1 || { apt-get install -y -qq libimage-exiftool-perl >/dev/null 2>&1 || echo "exiftool not installed: its metadata checks will skip"; }
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq || true) && apt-get install -y -qq chromium >/dev/null 2>&1 || echo "chromium not installed: the browser tests skip (and fail under CI=true)"; }
	@command -v dot >/dev/null 2>&1 || { apt-get install -y -qq graphviz >/dev/null 2>&1 || echo "graphviz not installed: wsrun serve shows pictures as DOT text"; }
	@command -v zsh >/dev/null 2>&1 || { apt-get install -y -qq zsh >/dev/null 2>&1 || echo "zsh not installed: its completion test skips (and fails under CI=true)"; }
	@command -v npm >/dev/null 2>&1 || { (apt-get update -qq || true) && apt-get install -y -qq nodejs npm >/dev/null 2>&1 || echo "node not installed: the schema's ajv and yaml-language-server tests skip (and fail under CI=true)"; }
	@test -f $(NODE_TOOLS)/node_modules/.bin/ajv -a -f $(NODE_TOOLS)/node_modules/yaml-language-server/package.json || npm install --silent --no-audit --no-fund --prefix $(NODE_TOOLS) $(NODE_PACKAGES) >/dev/null || echo "npm install failed: the schema's ajv and yaml-language-server tests skip"

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
