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
 * One fixed chain of a dozen rules serves every VIF: what differs per VIF is
 * data, held in sets keyed by the ingress device (`ifname . address`). So a
 * frame's cost does not grow with the number of VIFs (hash lookups), adding
 * or removing a VIF is adding or deleting set elements, and the rule count on
 * a host is constant.
 */
import { linkLocalFromMac } from '../model/addresses.js';
import type { NormalizedVif } from '../model/types.js';
import type { Names } from './names.js';

export const BRIDGE_BASE_CHAIN = 'prerouting';
/** Before br_netfilter (priority 0) hands bridged packets to iptables. */
export const BRIDGE_PRIORITY = -200;

/** The sets (and the map) of the bridge table, and the nft type of their elements. */
export const BRIDGE_SETS = {
  vifs: 'ifname',
  vif_mac: 'ifname . ether_addr',
  vif_ip4: 'ifname . ipv4_addr',
  vif_ip6: 'ifname . ipv6_addr',
  vif_mark: 'ifname : verdict',
} as const;
const BRIDGE_MAPS: ReadonlySet<string> = new Set(['vif_mark']);

/**
 * Forwarding to a VIF: before bridge netfilter hands the frame to the IP
 * hooks (priority 0), the bridge port it leaves by is known only here. A
 * driver that dispatches in the IP hooks by packet mark (the nftables driver)
 * gives each VIF a number n (1-65535; VIFs whose frames meet the same ingress
 * rules share one); every frame (every copy of a flooded one) bridged to that
 * VIF gets n in the mark's upper 16 bits, through a one-rule chain `mark-<n>`
 * (one per number, however many VIFs share it) reached by a verdict map on
 * the output port. The lower 16 bits (where kube-proxy, Docker and others
 * keep theirs) are left as they were. VIFs without a number (the iptables
 * driver matches the port with physdev) are left alone.
 */
export const BRIDGE_FORWARD_CHAIN = 'forward-mark';
export const BRIDGE_FORWARD_PRIORITY = -10;
export const VIF_MARK_SHIFT = 16;
export const VIF_MARK_MASK = 0xffff0000;
export const VIF_MARK_MAX = 0xffff;

export function markText(n: number): string {
  return `0x${((n << VIF_MARK_SHIFT) >>> 0).toString(16).padStart(8, '0')}`;
}

export function markChain(n: number): string {
  return `mark-${n}`;
}

function markChainLines(table: string, n: number): string[] {
  const chain = markChain(n);
  return [
    `add chain bridge ${table} ${chain}`,
    `flush chain bridge ${table} ${chain}`,
    `add rule bridge ${table} ${chain} meta mark set meta mark and 0x0000ffff or ${markText(n)}`,
  ];
}

export type BridgeSet = keyof typeof BRIDGE_SETS;
export const BRIDGE_SET_NAMES = Object.keys(BRIDGE_SETS) as BridgeSet[];

/** What the bridge filter needs to know of one VIF. */
export interface BridgeVif {
  devname: string;
  mac: string;
  ip4: readonly string[];
  /** including the EUI-64 link-local address */
  ip6: readonly string[];
  /** number for the packet mark of frames bridged to this VIF (nftables driver), 1-65535 */
  mark?: number;
}

export function bridgeVifOf(vif: NormalizedVif): BridgeVif {
  const ip4 = vif.subnets.filter((s) => s.version === 4).flatMap((s) => s.ips);
  const ip6 = vif.subnets.filter((s) => s.version === 6).flatMap((s) => s.ips);
  return {
    devname: vif.devname,
    mac: vif.mac,
    ip4: [...new Set(ip4)],
    ip6: [...new Set([linkLocalFromMac(vif.mac), ...ip6])],
  };
}

/** The set elements one VIF contributes, as nft element text, per set. */
export function bridgeElements(vif: BridgeVif): Record<BridgeSet, string[]> {
  const dev = `"${vif.devname}"`;
  return {
    vifs: [dev],
    vif_mac: [`${dev} . ${vif.mac}`],
    vif_ip4: vif.ip4.map((a) => `${dev} . ${a}`),
    vif_ip6: vif.ip6.map((a) => `${dev} . ${a}`),
    vif_mark: vif.mark === undefined ? [] : [`${dev} : jump ${markChain(vif.mark)}`],
  };
}

/** The fixed rules of the base chain. */
export const BRIDGE_RULES: readonly string[] = [
  // Frames from anything but a filtered VIF (uplinks, other ports) are not ours.
  'iifname != @vifs accept',
  'ether type != { ip, ip6, arp } drop',
  'iifname . ether saddr != @vif_mac drop',
  'ether type arp iifname . arp saddr ether != @vif_mac drop',
  // An RFC 5227 probe (sender 0.0.0.0) passes; otherwise the sender is one of the VIF's IPv4 addresses.
  'ether type arp arp saddr ip != 0.0.0.0 iifname . arp saddr ip != @vif_ip4 drop',
  'ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept',
  'ether type ip iifname . ip saddr != @vif_ip4 drop',
  'ether type ip udp sport 67 drop',
  'ether type ip6 ip6 saddr :: icmpv6 type { nd-neighbor-solicit, mld-listener-report, mld2-listener-report } accept',
  'ether type ip6 iifname . ip6 saddr != @vif_ip6 drop',
  'ether type ip6 icmpv6 type { nd-router-advert, nd-redirect } drop',
  'ether type ip6 udp sport 547 drop',
];

function elementLines(table: string, verb: 'add' | 'delete', elements: ReadonlyMap<BridgeSet, readonly string[]>): string[] {
  const lines: string[] = [];
  for (const set of BRIDGE_SET_NAMES) {
    const items = elements.get(set) ?? [];
    // Chunks keep each command line of a big first apply a reasonable size.
    for (let i = 0; i < items.length; i += 500) {
      lines.push(`${verb} element bridge ${table} ${set} { ${items.slice(i, i + 500).join(', ')} }`);
    }
  }
  return lines;
}

/** How many of these VIFs have each mark number (each number has one `mark-<n>` chain). */
export function countMarks(vifs: Iterable<BridgeVif>): Map<number, number> {
  const counts = new Map<number, number>();
  for (const vif of vifs) if (vif.mark !== undefined) counts.set(vif.mark, (counts.get(vif.mark) ?? 0) + 1);
  return counts;
}

/** Collects the elements of many VIFs per set. */
export function elementsOf(vifs: Iterable<BridgeVif>): Map<BridgeSet, string[]> {
  const out = new Map<BridgeSet, string[]>(BRIDGE_SET_NAMES.map((s) => [s, []]));
  for (const vif of vifs) {
    const own = bridgeElements(vif);
    for (const set of BRIDGE_SET_NAMES) out.get(set)?.push(...own[set]);
  }
  return out;
}

/**
 * One transaction that replaces the whole table: `add` before `delete` makes
 * the delete succeed whether or not the table existed; the kernel applies
 * the whole script or none of it.
 */
export function renderBridgeTableReplace(names: Names, vifs: Iterable<BridgeVif>): string {
  const table = names.bridgeTable;
  const lines = [`add table bridge ${table}`, `delete table bridge ${table}`, `add table bridge ${table}`];
  for (const set of BRIDGE_SET_NAMES) {
    lines.push(`add ${BRIDGE_MAPS.has(set) ? 'map' : 'set'} bridge ${table} ${set} { type ${BRIDGE_SETS[set]}; }`);
  }
  lines.push(
    `add chain bridge ${table} ${BRIDGE_BASE_CHAIN} { type filter hook prerouting priority ${BRIDGE_PRIORITY}; policy accept; }`,
    ...BRIDGE_RULES.map((r) => `add rule bridge ${table} ${BRIDGE_BASE_CHAIN} ${r}`),
    `add chain bridge ${table} ${BRIDGE_FORWARD_CHAIN} { type filter hook forward priority ${BRIDGE_FORWARD_PRIORITY}; policy accept; }`,
    `add rule bridge ${table} ${BRIDGE_FORWARD_CHAIN} oifname vmap @vif_mark`,
  );
  const all = [...vifs];
  for (const mark of countMarks(all).keys()) lines.push(...markChainLines(table, mark));
  lines.push(...elementLines(table, 'add', elementsOf(all)));
  return `${lines.join('\n')}\n`;
}

/**
 * One transaction that deletes and adds set elements (and the mark chains of
 * numbers that the first VIF takes or the last one gives up), on a table
 * known to hold the `removed` ones.
 */
export function renderBridgeElementUpdate(
  names: Names,
  added: ReadonlyMap<BridgeSet, readonly string[]>,
  removed: ReadonlyMap<BridgeSet, readonly string[]>,
  marks: { added: readonly number[]; removed: readonly number[] } = { added: [], removed: [] },
): string {
  const table = names.bridgeTable;
  const lines = [
    ...marks.added.flatMap((n) => markChainLines(table, n)),
    ...elementLines(table, 'delete', removed),
    ...elementLines(table, 'add', added),
    ...marks.removed.flatMap((n) => [`flush chain bridge ${table} ${markChain(n)}`, `delete chain bridge ${table} ${markChain(n)}`]),
  ];
  return lines.length ? `${lines.join('\n')}\n` : '';
}

/** Removes the whole table (teardown). */
export function renderBridgeTableDelete(names: Names): string {
  const table = names.bridgeTable;
  return `add table bridge ${table}\ndelete table bridge ${table}\n`;
}
