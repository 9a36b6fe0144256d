# sse-relay: `make run` relays to UPSTREAM; `make test` installs everything and tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UPSTREAM ?= https://api.anthropic.com
LISTEN ?= 127.0.0.1:8080
STAMP := $(VENV)/.installed
TEST_TOOLS := curl=curl nghttp=nghttp2-client

.PHONY: install run sim demo test lint system-deps bench bench-quick clean

$(STAMP): pyproject.toml setup.py relay/_fastsse.pyx
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(STAMP)

run: install
	$(BIN)/sse-relay --listen $(LISTEN) --upstream $(UPSTREAM)

sim: install
	$(BIN)/sse-relay sim --listen 127.0.0.1:8787 --gap 30

demo: install
	$(BIN)/python scripts/demo.py

system-deps:
	scripts/system-deps.sh $(TEST_TOOLS)

lint: install
	$(BIN)/ruff check relay tests scripts
	$(BIN)/mypy

test: install system-deps lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info relay/*.so relay/_fastsse.c
