# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo alma-demo test soak fuzz lint bench schemas docs tools services clean constraints

# make demo and make test install every extra ([all]); `pip install wsrun` alone is the core
# (README, Install).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all,test]'
	touch $(STAMP)

# The JSON Schema clients recipe authors use, pinned, for tests/test_editor_schema.py.
NODE_TOOLS := .tools
NODE_PACKAGES := ajv-cli@5.0.0 yaml-language-server@1.25.0

# System tools the steps and tests use for real: rsync (the rsync step), zstd and GNU tar (checks),
# opj_decompress (the lossless proof's decoder of JPEG 2000 masters; opj_compress is the image
# bench baseline), exiftool (reads back embedded XMP in tests), graphviz (wsrun serve's
# pictures), zsh (its completion script), node with ajv-cli and yaml-language-server (the
# schema as editors see it) and chromium (the web tests' browser, driven by Playwright).
tools:
	@command -v rsync >/dev/null 2>&1 || { (apt-get update -qq || true) && apt-get install -y -qq rsync zstd >/dev/null; }
	@command -v zstd >/dev/null 2>&1 || { apt-get install -y -qq zstd >/dev/null 2>&1 || echo "zstd not installed: its checks will skip"; }
	@command -v opj_decompress >/dev/null 2>&1 || { (apt-get update -qq || true) && apt-get install -y -qq libopenjp2-tools >/dev/null 2>&1 || echo "opj_decompress not installed: lossless JPEG 2000 masters are refused (no proof)"; }
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

# A failing run ends with the ids of the failed tests (pytest keeps them in
# .pytest_cache/v/cache/lastfailed; `pytest --lf` reruns just those). The exit status
# is pytest's: 5 when no test ran, which fails too.
test: $(STAMP) tools services
	$(BIN)/ruff check engine tests bench
	@rm -f .pytest_cache/v/cache/lastfailed
	$(BIN)/pytest -n 2 -q || { status=$$?; \
	  if [ $$status -eq 5 ]; then echo "make test: no tests ran"; else \
	  echo "make test: failed tests (rerun them with $(BIN)/pytest --lf):"; \
	  $(BIN)/python -c 'import json; print("\n".join(json.load(open(".pytest_cache/v/cache/lastfailed"))))' || true; fi; \
	  exit $$status; }

# The whole suite ROUNDS times in a row while two busy loops keep both cores loaded: a test
# that fails here is flaky. Stops at the first failing round.
ROUNDS ?= 5
soak: $(STAMP) tools services
	@$(PYTHON) -c 'while True: pass' & b1=$$!; $(PYTHON) -c 'while True: pass' & b2=$$!; \
	  trap 'kill $$b1 $$b2' EXIT; \
	  for round in $$(seq $(ROUNDS)); do echo "soak: round $$round of $(ROUNDS)"; \
	    $(BIN)/pytest -n 2 -q -p no:cacheprovider || exit 1; done

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
	$(BIN)/python -m wsrun.cli.docgen docs/recipes.md

bench: $(STAMP) tools
	$(BIN)/python bench/run.py

# Re-pin constraints.txt from the working venv, which has every extra and the test deps
# ([all,test]), so the pins cover the core install, each extra and make test (run make test
# first).
constraints: $(STAMP)
	{ sed -n '1,4p' constraints.txt; $(BIN)/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) build dist .pytest_cache
