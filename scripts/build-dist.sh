#!/usr/bin/env bash
# Builds the single-file executable: CPython, the relay with its compiled scanner, and
# every dependency in one file that unpacks itself at start (PyInstaller one-file).
# Usage: scripts/build-dist.sh [OUTDIR]   (default dist/; needs the venv from make install)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python="${PYTHON:-.venv/bin/python}"
# Fail loudly: the binary must carry the scanner, the journal arena, the body pump, the
# TLS reads and the HTTP/1.1 and HTTP/2 writers.
"$python" -c 'import relay.sse._fastsse, relay.core._journal, relay.upstream._bodypump, relay.upstream._tlsread, relay.edge._h1data, relay.edge._h2data'
"$python" -m PyInstaller --onefile --noconfirm --log-level WARN --name sse-relay \
  --paths . --collect-submodules relay --collect-submodules relay_sim --collect-submodules uvloop \
  --distpath "$out" --workpath "$work/build" --specpath "$work" relay/__main__.py
echo "built $out/sse-relay"
