#!/usr/bin/env bash
# Installs everything the tests need and runs the whole suite: type check,
# lint, unit tests, real-kernel tests (in namespaces the tests create), and
# the store tests against SQLite and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/ensure-postgres.sh
npm run --silent typecheck
npm run --silent lint
CI=true npx vitest run "$@"
