/**
 * Pure rendering of L2 anti-spoofing (setupBasicFiltering) for the nftables
 * bridge family, in the spirit of libvirt's clean-traffic filters:
 *
 * - only the VIF's own MAC may leave it, and only IPv4, IPv6 and ARP frames
 *   (802.1Q-tagged and every other ethertype are dropped, so tags cannot
 *   smuggle frames past the checks below);
 * - ARP must carry the VIF's MAC and one of its IPv4 addresses (or 0.0.0.0
 *   for an RFC 5227 probe);
 * - IPv4 and IPv6 must come from the VIF's own addresses (IPv6: also its
 *   EUI-64 link-local address); DHCP discovery from 0.0.0.0 and duplicate
 *   address detection / MLD from :: pass;
 * - DHCP and DHCPv6 server replies, router advertisements and redirects sent
 *   by an instance are dropped.
 *
 * The table holds a verdict map from the ingress device to the VIF's chain,
 * so the per-frame cost does not grow with the number of VIFs.
 */
import { linkLocalFromMac } from '../model/addresses.js';
import type { NormalizedVif } from '../model/types.js';
import type { Names } from './names.js';

export const BRIDGE_MAP = 'vifs';
export const BRIDGE_BASE_CHAIN = 'prerouting';
/** Before br_netfilter (priority 0) hands bridged packets to iptables. */
export const BRIDGE_PRIORITY = -200;

const set = (items: readonly string[]) => (items.length === 1 ? items[0] : `{ ${items.join(', ')} }`);

export function renderBridgeVifRules(vif: NormalizedVif): string[] {
  const v4 = vif.subnets.filter((s) => s.version === 4).flatMap((s) => s.ips);
  const v6 = vif.subnets.filter((s) => s.version === 6).flatMap((s) => s.ips);
  const lla = linkLocalFromMac(vif.mac);
  return [
    `ether saddr != ${vif.mac} drop`,
    'ether type != { ip, ip6, arp } drop',
    `ether type arp arp saddr ether != ${vif.mac} drop`,
    `ether type arp arp saddr ip != ${set(['0.0.0.0', ...v4])} drop`,
    'ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept',
    `ether type ip ip saddr != ${set(v4.length ? v4 : ['0.0.0.0'])} drop`,
    'ether type ip udp sport 67 drop',
    'ether type ip6 ip6 saddr :: icmpv6 type { nd-neighbor-solicit, mld-listener-report, mld2-listener-report } accept',
    `ether type ip6 ip6 saddr != ${set([lla, ...v6])} drop`,
    'ether type ip6 icmpv6 type { nd-router-advert, nd-redirect } drop',
    'ether type ip6 udp sport 547 drop',
  ];
}

/** Statements that create the table, map and base chain if missing (idempotent). */
function tableSkeleton(table: string): string[] {
  return [
    `add table bridge ${table}`,
    `add map bridge ${table} ${BRIDGE_MAP} { type ifname : verdict; }`,
    `add chain bridge ${table} ${BRIDGE_BASE_CHAIN} { type filter hook prerouting priority ${BRIDGE_PRIORITY}; policy accept; }`,
    `flush chain bridge ${table} ${BRIDGE_BASE_CHAIN}`,
    `add rule bridge ${table} ${BRIDGE_BASE_CHAIN} iifname vmap @${BRIDGE_MAP}`,
  ];
}

function vifStatements(table: string, names: Names, devname: string, rules: readonly string[]): string[] {
  const chain = names.bridgeVifChain(devname);
  return [
    `add chain bridge ${table} ${chain}`,
    `flush chain bridge ${table} ${chain}`,
    ...rules.map((r) => `add rule bridge ${table} ${chain} ${r}`),
    `add element bridge ${table} ${BRIDGE_MAP} { "${devname}" : jump ${chain} }`,
  ];
}

/**
 * One transaction that replaces the whole table with `vifs` (devname -> rules).
 * `add` before `delete` makes the delete succeed whether or not the table
 * existed; the kernel applies the whole script or none of it.
 */
export function renderBridgeTableReplace(names: Names, vifs: ReadonlyMap<string, readonly string[]>): string {
  const table = names.bridgeTable;
  const lines = [`add table bridge ${table}`, `delete table bridge ${table}`, ...tableSkeleton(table)];
  for (const [devname, rules] of vifs) lines.push(...vifStatements(table, names, devname, rules));
  return `${lines.join('\n')}\n`;
}

/** One transaction that writes changed VIFs and removes deleted ones, on a table known to exist. */
export function renderBridgeTableUpdate(
  names: Names,
  changed: ReadonlyMap<string, readonly string[]>,
  removed: Iterable<string>,
): string {
  const table = names.bridgeTable;
  const lines: string[] = [];
  for (const devname of removed) {
    const chain = names.bridgeVifChain(devname);
    lines.push(`delete element bridge ${table} ${BRIDGE_MAP} { "${devname}" }`);
    lines.push(`flush chain bridge ${table} ${chain}`, `delete chain bridge ${table} ${chain}`);
  }
  for (const [devname, rules] of changed) lines.push(...vifStatements(table, names, devname, rules));
  return lines.length ? `${lines.join('\n')}\n` : '';
}

/** Removes the whole table (teardown). */
export function renderBridgeTableDelete(names: Names): string {
  const table = names.bridgeTable;
  return `add table bridge ${table}\ndelete table bridge ${table}\n`;
}
