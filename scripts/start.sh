#!/usr/bin/env bash
# Quick start: filter the example host (examples/host.json) in a network
# namespace of its own (virtfw-demo), then show what is in force there.
# `ip netns del virtfw-demo` removes it all.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
NS=${VIRTFW_DEMO_NETNS:-virtfw-demo}
ip netns list | grep -qx "$NS\( .*\)\?" || ip netns add "$NS"
node dist/cli/main.js apply --host-file examples/host.json --netns "$NS" "$@"
echo
echo "in force in namespace $NS (ip netns exec $NS iptables-save):"
ip netns exec "$NS" iptables-save | grep -c '^-A virtfw' | xargs -I{} echo "  {} IPv4 rules of virtfw"
ip netns exec "$NS" ip6tables-save | grep -c '^-A virtfw' | xargs -I{} echo "  {} IPv6 rules of virtfw"
