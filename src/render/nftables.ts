/**
 * Pure rendering of the model into the objects of one nftables `inet` table
 * (both families in one table, so one transaction covers IPv4 and IPv6).
 *
 *   hook-forward (forward hook): ip saddr vmap @from-vm4 / ip6 saddr vmap @from-vm6 / iifname vmap @from-dev
 *                                then jump to-vm
 *   hook-input   (input hook):   the same egress dispatch (instance -> host)
 *   to-vm:                       meta mark vmap @to-mark (bridged: the port, marked by the bridge table)
 *                                / ip daddr vmap @to-vm4 / ip6 daddr vmap @to-vm6 (routed onto a bridge)
 *                                / oifname vmap @to-dev (routed taps)
 *   allowed:                     jump to-vm, accept  (egress allowed: the destination's ingress decides)
 *
 *   vm-out-<hash>: [vm-spoof-<inst>] out-base, [same net], sg-out-<group>..., fallback
 *   vm-in-<hash>:  in-base, [same net], sg-in-<group>..., fallback
 *
 * An instance's ingress and egress chains are named by the hash of their
 * rules, so instances with the same groups share them: a host has one pair
 * per distinct list of groups (plus one anti-spoofing chain per instance with
 * routed VIFs), not one per instance. Dispatch is by verdict map, so a
 * packet's path does not grow with the number of instances.
 *
 * Bridged packets reach these IP hooks through bridge netfilter, which shows
 * the bridge, not the tap, as their device: the sender is found by its source
 * address (which the bridge table's anti-spoofing ties to one VIF), the
 * receiver by the packet mark the bridge table's forward hook gave the frame
 * for the port it leaves by (one mark per ingress chain). Routed taps are
 * dispatched by device. Remote groups' members are named sets, so neither
 * their size nor the number of instances lengthens a rule.
 */
import { linkLocalFromMac } from '../model/addresses.js';
import { ICMP, ICMPV6 } from '../model/protocols.js';
import type { Direction, IpVersion, NormalizedProviderRule, NormalizedRule, PortMatch, Protocol } from '../model/types.js';
import { VIF_MARK_MASK } from './bridge.js';
import { memo } from '../util/memo.js';
import { hashedId, shortHash } from './names.js';
import { groupHasRules, type BaseInputs, type InstanceView, type RenderOptions } from './iptables-rules.js';

/** Base chain priority: just before iptables-nft's (0), so our drops come first; see the README. */
export const NFT_PRIORITY = -5;

/** Names inside the table (the table itself is named for the prefix, so these need none). */
export const NFT = {
  forward: 'hook-forward',
  input: 'hook-input',
  toVm: 'to-vm',
  allowed: 'allowed',
  ingressBase: 'in-base',
  egressBase: 'out-base',
  provider: 'provider',
  fallback: 'fallback',
  maps: {
    from4: 'from-vm4',
    from6: 'from-vm6',
    to4: 'to-vm4',
    to6: 'to-vm6',
    fromDev: 'from-dev',
    toDev: 'to-dev',
    toMark: 'to-mark',
  },
} as const;

export const NFT_MAP_TYPES: Readonly<Record<string, string>> = {
  [NFT.maps.from4]: 'ipv4_addr : verdict',
  [NFT.maps.from6]: 'ipv6_addr : verdict',
  [NFT.maps.to4]: 'ipv4_addr : verdict',
  [NFT.maps.to6]: 'ipv6_addr : verdict',
  [NFT.maps.fromDev]: 'ifname : verdict',
  [NFT.maps.toDev]: 'ifname : verdict',
  [NFT.maps.toMark]: 'mark : verdict',
};

export const nftNames = {
  instanceSpoof: (id: string) => `vm-spoof-${hashedId('instance', id)}`,
  group: (id: string, direction: Direction) => `sg-${direction === 'ingress' ? 'in' : 'out'}-${hashedId('group', id)}`,
  memberSet: (id: string, version: IpVersion) => `members${version}-${hashedId('group', id)}`,
};

export interface NftChain {
  rules: string[];
  /** base chain spec, e.g. `type filter hook forward priority -5; policy accept;` */
  base?: string;
}

const ip = (v: IpVersion) => (v === 4 ? 'ip' : 'ip6');
const nfproto = (v: IpVersion) => `meta nfproto ${v === 4 ? 'ipv4' : 'ipv6'}`;
const set = (items: readonly string[]) => (items.length === 1 ? (items[0] ?? '') : `{ ${items.join(', ')} }`);

/** The protocol and port/type part of a match, or '' for every protocol. */
export function nftProtocol(protocol: Protocol | null, ports: PortMatch, version: IpVersion): string {
  if (protocol === null) return '';
  if (ports.kind === 'ports') {
    const range = ports.from === ports.to ? String(ports.from) : `${ports.from}-${ports.to}`;
    const name = protocol.name === 'ipv6-icmp' ? 'icmpv6' : protocol.name;
    return `${name} dport ${range}`;
  }
  if (ports.kind === 'icmp') {
    const kind = protocol.number === ICMP && version === 4 ? 'icmp' : 'icmpv6';
    return ports.code === -1 ? `${kind} type ${ports.type}` : `${kind} type ${ports.type} ${kind} code ${ports.code}`;
  }
  if (protocol.number === ICMP && version === 4) return 'meta l4proto icmp';
  if (protocol.number === ICMPV6 && version === 6) return 'meta l4proto ipv6-icmp';
  return `meta l4proto ${protocol.number}`;
}

/** A match for one family: the address part if any, else an explicit family match. */
function familyMatch(version: IpVersion, address: string, proto: string): string {
  if (address) return [address, proto].filter(Boolean).join(' ');
  return [nfproto(version), proto].filter(Boolean).join(' ');
}

export function renderNftGroupChain(rules: readonly NormalizedRule[], direction: Direction): string[] {
  const out: string[] = [];
  const side = direction === 'ingress' ? 'saddr' : 'daddr';
  const verdict = direction === 'ingress' ? 'accept' : `goto ${NFT.allowed}`;
  for (const rule of rules) {
    if (rule.direction !== direction) continue;
    const v = rule.version;
    const proto = nftProtocol(rule.protocol, rule.ports, v);
    let address = '';
    if (rule.remote.kind === 'cidr') address = `${ip(v)} ${side} ${rule.remote.cidr}`;
    else if (rule.remote.kind === 'group') address = `${ip(v)} ${side} @${nftNames.memberSet(rule.remote.groupId, v)}`;
    out.push(`${familyMatch(v, address, proto)} ${verdict}`);
  }
  return out;
}

export function nftGroupHasRules(rules: readonly NormalizedRule[], direction: Direction): boolean {
  return groupHasRules(rules, direction, 4) || groupHasRules(rules, direction, 6);
}

function needsSpoofChain(view: InstanceView, opts: RenderOptions): boolean {
  return view.instance.vifs.some((v) => v.routed || !opts.bridgeFilter);
}

/** The rules of an instance's ingress and egress chains, and of its anti-spoofing chain (routed VIFs). */
export interface NftInstanceRules {
  ingress: string[];
  egress: string[];
  /** the rules of `nftNames.instanceSpoof(id)`, which `egress` jumps to; absent when no VIF needs it */
  spoof?: string[];
}

/**
 * The rules of an instance's chains. The ingress and egress chains are named
 * by their content (`nftProfileChain`): instances whose rules are the same
 * (the same groups, in the same order) share them, so a host holds one pair
 * per distinct set of groups, whatever the number of instances. Only the
 * anti-spoofing chain, which names the instance's own addresses, is per instance.
 */
export function renderNftInstanceRules(
  view: InstanceView,
  groupRules: (groupId: string) => readonly NormalizedRule[] | undefined,
  opts: RenderOptions,
): NftInstanceRules {
  const id = view.instance.id;
  const ingress = [`jump ${NFT.ingressBase}`];
  const egress: string[] = [];
  let spoof: string[] | undefined;
  if (needsSpoofChain(view, opts)) {
    spoof = [
      'ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 return',
      'ip6 saddr :: icmpv6 type { mld-listener-report, nd-neighbor-solicit, mld2-listener-report } return',
    ];
    for (const vif of view.instance.vifs) {
      if (!(vif.routed || !opts.bridgeFilter)) continue;
      const v4 = vif.subnets.filter((s) => s.version === 4).flatMap((s) => s.ips);
      const v6 = [linkLocalFromMac(vif.mac), ...vif.subnets.filter((s) => s.version === 6).flatMap((s) => s.ips)];
      if (v4.length) spoof.push(`iifname "${vif.devname}" ether saddr ${vif.mac} ip saddr ${set(v4)} return`);
      spoof.push(`iifname "${vif.devname}" ether saddr ${vif.mac} ip6 saddr ${set(v6)} return`);
    }
    spoof.push('drop');
    egress.push(`jump ${nftNames.instanceSpoof(id)}`);
  }
  egress.push(`jump ${NFT.egressBase}`);
  if (opts.allowSameNetTraffic) {
    const cidrs = new Map<string, IpVersion>();
    for (const vif of view.instance.vifs) for (const s of vif.subnets) cidrs.set(s.cidr, s.version);
    for (const [cidr, v] of cidrs) {
      ingress.push(`${ip(v)} saddr ${cidr} accept`);
      egress.push(`${ip(v)} daddr ${cidr} goto ${NFT.allowed}`);
    }
  }
  for (const groupId of view.groupIds) {
    const rules = groupRules(groupId) ?? [];
    if (nftGroupHasRules(rules, 'ingress')) ingress.push(`jump ${nftNames.group(groupId, 'ingress')}`);
    if (nftGroupHasRules(rules, 'egress')) egress.push(`jump ${nftNames.group(groupId, 'egress')}`);
  }
  ingress.push(`jump ${NFT.fallback}`);
  egress.push(`jump ${NFT.fallback}`);
  return spoof ? { ingress, egress, spoof } : { ingress, egress };
}

const profileNames = new Map<string, string>();
/**
 * The name of the chain holding these rules for this direction:
 * `vm-in-<hash>` / `vm-out-<hash>` of the rules themselves, so that equal
 * rules share one chain.
 */
export function nftProfileChain(direction: Direction, rules: readonly string[]): string {
  const key = `${direction}\n${rules.join('\n')}`;
  return memo(profileNames, key, () => `vm-${direction === 'ingress' ? 'in' : 'out'}-${shortHash('chain', key)}`);
}

/**
 * Dispatch map elements of one instance, to its ingress and egress chains:
 * map -> (key -> verdict), for the maps it has elements in. Frames bridged to
 * a VIF are dispatched by the packet mark the bridge table gives them, which
 * is one per ingress chain (see the driver), not per instance: those
 * elements are the driver's.
 */
export function nftDispatchElements(view: InstanceView, ingressChain: string, egressChain: string): Map<string, Map<string, string>> {
  const toIn = `jump ${ingressChain}`;
  const toOut = `jump ${egressChain}`;
  const out = new Map<string, Map<string, string>>();
  const put = (map: string, key: string, verdict: string) => {
    let elements = out.get(map);
    if (!elements) out.set(map, (elements = new Map()));
    elements.set(key, verdict);
  };
  for (const vif of view.instance.vifs) {
    if (vif.routed) {
      put(NFT.maps.fromDev, `"${vif.devname}"`, toOut);
      put(NFT.maps.toDev, `"${vif.devname}"`, toIn);
      continue;
    }
    for (const s of vif.subnets) {
      for (const a of s.ips) {
        put(s.version === 4 ? NFT.maps.from4 : NFT.maps.from6, a, toOut);
        put(s.version === 4 ? NFT.maps.to4 : NFT.maps.to6, a, toIn);
      }
    }
    // Its link-local source identifies its packets too. As a destination it
    // needs no element: a link-local packet is never routed, and bridged
    // ones reach the instance by mark (`to-mark`, before `to-vm6`).
    put(NFT.maps.from6, linkLocalFromMac(vif.mac), toOut);
  }
  return out;
}

/** The shared chains (base chains, dispatch, allowed, base rules, provider, fallback). */
export function renderNftBaseChains(inputs: BaseInputs, opts: RenderOptions, versions: readonly IpVersion[]): Map<string, NftChain> {
  const m = NFT.maps;
  const egressDispatch = [
    ...(versions.includes(4) ? [`ip saddr vmap @${m.from4}`] : []),
    ...(versions.includes(6) ? [`ip6 saddr vmap @${m.from6}`] : []),
    `iifname vmap @${m.fromDev}`,
  ];
  const chains = new Map<string, NftChain>();
  chains.set(NFT.forward, {
    base: `type filter hook forward priority ${NFT_PRIORITY}; policy accept;`,
    rules: [...egressDispatch, `jump ${NFT.toVm}`],
  });
  chains.set(NFT.input, { base: `type filter hook input priority ${NFT_PRIORITY}; policy accept;`, rules: egressDispatch });
  chains.set(NFT.toVm, {
    rules: [
      `meta mark and ${`0x${VIF_MARK_MASK.toString(16)}`} vmap @${m.toMark}`,
      ...(versions.includes(4) ? [`ip daddr vmap @${m.to4}`] : []),
      ...(versions.includes(6) ? [`ip6 daddr vmap @${m.to6}`] : []),
      `oifname vmap @${m.toDev}`,
    ],
  });
  chains.set(NFT.allowed, { rules: [`jump ${NFT.toVm}`, 'accept'] });

  const inBase = ['ct state invalid drop', 'ct state established,related accept', `jump ${NFT.provider}`];
  if (versions.includes(4) && inputs.dhcpServers[4].length) {
    inBase.push(`ip saddr ${set(inputs.dhcpServers[4])} udp sport 67 udp dport 68 accept`);
  }
  if (versions.includes(6)) {
    if (inputs.dhcpServers[6].length) inBase.push(`ip6 saddr ${set(inputs.dhcpServers[6])} udp sport 547 udp dport 546 accept`);
    inBase.push('icmpv6 type { mld-listener-query, nd-neighbor-solicit, nd-neighbor-advert } accept');
    if (inputs.gateways6.length) inBase.push(`ip6 saddr ${set(inputs.gateways6)} icmpv6 type nd-router-advert accept`);
  }
  chains.set(NFT.ingressBase, { rules: inBase });

  const allowed = `goto ${NFT.allowed}`;
  const outBase: string[] = [];
  if (versions.includes(4)) {
    outBase.push(`meta nfproto ipv4 udp sport 68 udp dport 67 ${allowed}`, 'meta nfproto ipv4 udp sport 67 udp dport 68 drop');
  }
  if (versions.includes(6)) {
    outBase.push(
      'icmpv6 type { nd-router-advert, nd-redirect } drop',
      `icmpv6 type { mld-listener-query, mld-listener-report, mld-listener-done, nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld2-listener-report } ${allowed}`,
      `meta nfproto ipv6 udp sport 546 udp dport 547 ${allowed}`,
      'meta nfproto ipv6 udp sport 547 udp dport 546 drop',
    );
  }
  outBase.push('ct state invalid drop', `ct state established,related ${allowed}`);
  chains.set(NFT.egressBase, { rules: outBase });

  chains.set(NFT.provider, {
    rules: inputs.providerRules
      .filter((r: NormalizedProviderRule) => versions.includes(r.version))
      .map((r) => [`${ip(r.version)} saddr ${r.cidr}`, nftProtocol(r.protocol, r.ports, r.version), 'drop'].filter(Boolean).join(' ')),
  });
  chains.set(NFT.fallback, { rules: [opts.fallbackAction === 'REJECT' ? 'reject' : 'drop'] });
  return chains;
}
