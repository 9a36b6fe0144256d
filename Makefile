# sse-relay: `make run` relays to UPSTREAM; `make test` installs everything and tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UPSTREAM ?= https://api.anthropic.com
LISTEN ?= 127.0.0.1:8080
STAMP := $(VENV)/.installed
# nghttpd: an HTTP/2 upstream other than h2 (tests/test_nghttpd_upstream.py).
# haproxy: deploy/compose/haproxy.cfg, checked and run (tests/test_deploy_compose.py).
# redis-server: the shared journal's tests start one on a free port (tests/redisproc.py).
# OpenSSL's headers: relay/upstream/_tlsread.pyx calls it (a path: no command to look for).
BUILD_DEPS := /usr/include/openssl/ssl.h=libssl-dev
TEST_TOOLS := curl=curl nghttp=nghttp2-client nghttpd=nghttp2-server node=nodejs npm=npm haproxy=haproxy redis-server=redis-server
# The TypeScript SDK the tests drive (tests/test_ts_sdk.py), pinned by its lock file.
NODE_DIR := tests/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

.PHONY: install run sim demo demo-resume dist test lint system-deps node-install bench bench-quick bench-profile clean

$(STAMP): pyproject.toml setup.py relay/sse/_fastsse.pyx relay/sse/_fastsse.pxd \
		relay/core/_journal.pyx relay/core/_journal.pxd \
		relay/upstream/_bodypump.pyx relay/upstream/_bodypump.pxd relay/upstream/_tlsread.pyx \
		relay/edge/_h1data.pyx relay/edge/_h2data.pyx
	scripts/system-deps.sh $(BUILD_DEPS)
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

# A cut between a local relay (--resume-upstream) and a remote one, resumed unseen.
demo-resume: install
	$(BIN)/python scripts/demo_resume.py

# One self-contained executable, dist/sse-relay (PyInstaller one-file, Cython scanner in).
dist: install
	scripts/build-dist.sh dist

# /usr/sbin too: nghttpd lives there, and it is not on every user's PATH.
system-deps:
	PATH="$$PATH:/usr/sbin" scripts/system-deps.sh $(TEST_TOOLS)

# Again when node_modules is gone (the stamp with it) or the lock file changed.
$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json | system-deps
	cd $(NODE_DIR) && npm ci --no-audit --no-fund
	touch $@

node-install: $(NODE_STAMP)

lint: install
	$(BIN)/ruff check relay relay_sim tests scripts bench
	$(BIN)/mypy

test: install system-deps node-install lint
	$(BIN)/python -m pytest -q --durations=20

# Benchmarks (bench/, README "Benchmarks"): Python extras, then nginx from Debian.
# /usr/sbin is searched too: it is not on every user's PATH, and nginx lives there.
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_TOOLS := nginx=nginx

.PHONY: bench-install

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

bench-install: $(BENCH_STAMP)
	PATH="$$PATH:/usr/sbin" scripts/system-deps.sh $(BENCH_TOOLS)

bench: bench-install
	PATH="$$PATH:/usr/sbin" $(BIN)/python -m bench

bench-quick: bench-install
	PATH="$$PATH:/usr/sbin" $(BIN)/python -m bench --quick

# Where the relay's and nginx's CPU goes per event (perf): bench/results/profile.md.
bench-profile: bench-install
	scripts/system-deps.sh perf=linux-perf
	PATH="$$PATH:/usr/sbin" $(BIN)/python -m bench.profile

clean:
	rm -rf $(VENV) build dist *.egg-info relay/sse/*.so relay/sse/_fastsse.c $(NODE_DIR)/node_modules
