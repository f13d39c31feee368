#!/usr/bin/env bash
# Quick start: install what is needed, then run `virtfw serve` on the embedded
# SQLite store (./virtfw.db), API on 127.0.0.1:8775.
#
# By default the host agent enforces rules inside a network namespace of its
# own (virtfw-demo), so trying virtfw does not change this machine's firewall.
# On a real compute host, run with VIRTFW_NETNS= (empty) to enforce in the
# host itself. Extra arguments go to `virtfw serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
NS=${VIRTFW_NETNS-virtfw-demo}
args=()
if [ -n "$NS" ]; then
  ip netns list | grep -q "^$NS\b" || ip netns add "$NS"
  args+=(--netns "$NS")
fi
exec node dist/cli/main.js serve "${args[@]}" "$@"
