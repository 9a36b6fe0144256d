#!/usr/bin/env bash
# Installs the Debian packages tests and benchmarks use, skipping what is present.
# Usage: scripts/system-deps.sh COMMAND=PACKAGE ...   (e.g. curl=curl nghttp=nghttp2-client)
# A COMMAND that starts with / is a file the package installs (a header, say).
set -euo pipefail
missing=()
for pair in "$@"; do
  wanted="${pair%%=*}"
  if [ "${wanted#/}" != "$wanted" ]; then
    [ -e "$wanted" ] || missing+=("${pair#*=}")
  else
    command -v "$wanted" >/dev/null 2>&1 || missing+=("${pair#*=}")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: need root to install: ${missing[*]}" >&2
  exit 1
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
