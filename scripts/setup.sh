#!/usr/bin/env bash
# Prepares a fresh checkout: system tools (Debian packages), npm dependencies,
# and the compiled CLI. Safe to run repeatedly; skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "setup: must run as root (it installs packages and programs the kernel)" >&2; exit 1; }
scripts/install-deps.sh
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
if [ ! -f dist/cli/main.js ] || [ -n "$(find src -newer dist/cli/main.js -name '*.ts' -print -quit)" ]; then
  npm run --silent build
fi
