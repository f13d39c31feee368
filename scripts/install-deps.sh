#!/usr/bin/env bash
# Installs the system tools virtfw and its tests need, from Debian packages,
# only when they are missing. Safe to run repeatedly. Needs root.
set -euo pipefail

# command -> Debian package that provides it
declare -A need=(
  [iptables]=iptables
  [ip6tables]=iptables
  [iptables-restore]=iptables
  [ipset]=ipset
  [ebtables]=ebtables
  [nft]=nftables
  [ip]=iproute2
  [conntrack]=conntrack
  [ping]=iputils-ping
  [tcpdump]=tcpdump
  [socat]=socat
)
# Test-only Python modules, checked with Debian's own interpreter.
declare -A pymods=([scapy]=python3-scapy)

missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
for mod in "${!pymods[@]}"; do
  /usr/bin/python3 -c "import $mod" >/dev/null 2>&1 || missing+=("${pymods[$mod]}")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "install-deps: installing ${pkgs[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
