/**
 * Pure rendering of the model into iptables rule bodies (the text after
 * `-A <chain>`), one family at a time. Nothing here does I/O.
 *
 * Chain layout per family (names from `Names`; see docs/design.md):
 *
 *   FORWARD ─▶ P-FORWARD ─▶ P-from-vm ──(device a packet leaves an instance by)──▶ P-o<inst>
 *                        └▶ P-to-vm ────(device a packet enters an instance by)───▶ P-i<inst>
 *   INPUT ───▶ P-INPUT ───▶ P-from-vm
 *
 *   P-o<inst>: [P-s<inst> anti-spoof] P-out-base, [same net], P-ge<group>..., P-fallback
 *   P-i<inst>: P-in-base, [same net], P-gi<group>..., P-fallback
 *   egress allowed ─▶ goto P-allowed: the destination's ingress (P-to-vm), else ACCEPT
 *
 * Dispatch uses `-g` (goto), so an instance chain never returns into the
 * dispatch chain: a packet between two instances on one host is accepted
 * only if the sender's egress *and* the receiver's ingress allow it.
 */
import { hostCidr, linkLocalFromMac } from '../model/addresses.js';
import { ICMP, ICMPV6 } from '../model/protocols.js';
import type {
  Direction,
  FallbackAction,
  IpVersion,
  NormalizedInstance,
  NormalizedProviderRule,
  NormalizedRule,
  NormalizedVif,
  PortMatch,
  Protocol,
} from '../model/types.js';
import type { Names } from './names.js';

/** name -> rule bodies, in order */
export type ChainMap = Map<string, string[]>;
export type FamilyChains = Record<IpVersion, ChainMap>;
export const VERSIONS: readonly IpVersion[] = [4, 6];

export function emptyFamilyChains(): FamilyChains {
  return { 4: new Map(), 6: new Map() };
}

/** How a rule naming a remote group matches the group's members. */
export type MemberMatch = 'expand' | 'ipset';

export interface RenderOptions {
  names: Names;
  /** Nova's allow_same_net_traffic: accept traffic from (and to) the instance's own subnets. */
  allowSameNetTraffic: boolean;
  fallbackAction: FallbackAction;
  memberMatch: MemberMatch;
  /**
   * True when L2 anti-spoofing runs in the bridge (nftables bridge family):
   * then iptables checks source addresses only for routed VIFs.
   */
  bridgeFilter: boolean;
}

/** Member addresses of a group, per family, sorted and unique. */
export type MemberAddresses = Record<IpVersion, readonly string[]>;

const ICMPV6_ND_INGRESS = [130, 135, 136]; // MLD query, neighbour solicitation, advertisement
const ICMPV6_ND_EGRESS = [130, 131, 132, 133, 135, 136, 143]; // MLD, router solicitation, NS, NA, MLDv2
const ICMPV6_ROUTER_ADVERT = 134;
const ICMPV6_REDIRECT = 137;

// ------------------------------------------------------------------ matches

export function protocolTokens(protocol: Protocol | null, ports: PortMatch, version: IpVersion): string[] {
  if (protocol === null) return [];
  const tokens = ['-p', protocol.name];
  if (ports.kind === 'ports') {
    const range = ports.from === ports.to ? String(ports.from) : `${ports.from}:${ports.to}`;
    // udplite has no match module of its own; multiport understands it.
    if (protocol.number === 136) tokens.push('-m', 'multiport', '--dports', range);
    else tokens.push('-m', protocol.name, '--dport', range);
  } else if (ports.kind === 'icmp') {
    const value = ports.code === -1 ? String(ports.type) : `${ports.type}/${ports.code}`;
    if (protocol.number === ICMP && version === 4) tokens.push('-m', 'icmp', '--icmp-type', value);
    else if (protocol.number === ICMPV6 && version === 6) tokens.push('-m', 'icmp6', '--icmpv6-type', value);
  }
  return tokens;
}

function icmpv6Type(type: number): string[] {
  return ['-p', 'ipv6-icmp', '-m', 'icmp6', '--icmpv6-type', String(type)];
}

function udpPorts(sport: number, dport: number): string[] {
  return ['-p', 'udp', '-m', 'udp', '--sport', String(sport), '--dport', String(dport)];
}

const join = (...parts: string[][]): string => parts.flat().join(' ');

// ------------------------------------------------------------------- groups

/**
 * The chain of one group for one direction and family. Ingress rules accept;
 * egress rules go to P-allowed. A rule naming a remote group matches its
 * members' current addresses: one rule per address (`expand`, Nova) or one
 * rule against the group's ipset (`ipset`).
 */
export function renderGroupChain(
  rules: readonly NormalizedRule[],
  direction: Direction,
  version: IpVersion,
  members: (groupId: string) => MemberAddresses | undefined,
  opts: RenderOptions,
): string[] {
  const out: string[] = [];
  const side = direction === 'ingress' ? '-s' : '-d';
  const verdict = direction === 'ingress' ? ['-j', 'ACCEPT'] : ['-g', opts.names.allowed];
  for (const rule of rules) {
    if (rule.direction !== direction || rule.version !== version) continue;
    const proto = protocolTokens(rule.protocol, rule.ports, version);
    switch (rule.remote.kind) {
      case 'any':
        out.push(join(proto, verdict));
        break;
      case 'cidr':
        out.push(join([side, rule.remote.cidr], proto, verdict));
        break;
      case 'group': {
        if (opts.memberMatch === 'ipset') {
          const set = opts.names.memberSet(rule.remote.groupId, version);
          out.push(join(['-m', 'set', '--match-set', set, direction === 'ingress' ? 'src' : 'dst'], proto, verdict));
        } else {
          for (const address of members(rule.remote.groupId)?.[version] ?? []) {
            out.push(join([side, hostCidr(address, version)], proto, verdict));
          }
        }
        break;
      }
    }
  }
  return out;
}

/** Does the group have any rule for this direction and family (so instances jump to its chain)? */
export function groupHasRules(rules: readonly NormalizedRule[], direction: Direction, version: IpVersion): boolean {
  return rules.some((r) => r.direction === direction && r.version === version);
}

// ---------------------------------------------------------------- instances

export interface InstanceView {
  instance: NormalizedInstance;
  /** the instance's groups, in order */
  groupIds: readonly string[];
}

function subnetsOf(vifs: readonly NormalizedVif[], version: IpVersion) {
  return vifs.flatMap((v) => v.subnets.filter((s) => s.version === version));
}

/** Addresses of an instance in one family, in VIF and subnet order. */
export function instanceAddresses(instance: NormalizedInstance, version: IpVersion): string[] {
  const out: string[] = [];
  for (const subnet of subnetsOf(instance.vifs, version)) {
    for (const ip of subnet.ips) if (!out.includes(ip)) out.push(ip);
  }
  return out;
}

function needsSpoofChain(vif: NormalizedVif, opts: RenderOptions): boolean {
  return vif.routed || !opts.bridgeFilter;
}

/**
 * IP (and MAC) anti-spoofing for VIFs the bridge filter does not see: only
 * the VIF's own addresses, with its own MAC, may leave it; DHCP discovery
 * from 0.0.0.0 and IPv6 duplicate address detection from :: pass.
 */
function renderSpoofChain(view: InstanceView, version: IpVersion, opts: RenderOptions): string[] {
  const out: string[] = [];
  if (version === 4) {
    out.push(join(['-s', '0.0.0.0/32', '-d', '255.255.255.255/32'], udpPorts(68, 67), ['-j', 'RETURN']));
  } else {
    for (const type of [131, 135, 143]) out.push(join(['-s', '::/128'], icmpv6Type(type), ['-j', 'RETURN']));
  }
  for (const vif of view.instance.vifs) {
    if (!needsSpoofChain(vif, opts)) continue;
    const mac = ['-m', 'mac', '--mac-source', vif.mac];
    for (const subnet of vif.subnets) {
      if (subnet.version !== version) continue;
      for (const ip of subnet.ips) out.push(join(['-s', hostCidr(ip, version)], mac, ['-j', 'RETURN']));
    }
    if (version === 6) out.push(join(['-s', hostCidr(linkLocalFromMac(vif.mac), 6)], mac, ['-j', 'RETURN']));
  }
  out.push('-j DROP');
  return out;
}

/**
 * The ingress and egress chains of one instance in one family (and its
 * anti-spoofing chain when it has routed VIFs).
 */
export function renderInstanceChains(
  view: InstanceView,
  version: IpVersion,
  groupRules: (groupId: string) => readonly NormalizedRule[] | undefined,
  opts: RenderOptions,
): ChainMap {
  const { names } = opts;
  const id = view.instance.id;
  const ingress: string[] = [join(['-j', names.ingressBase])];
  const egress: string[] = [];
  const chains: ChainMap = new Map();

  if (view.instance.vifs.some((v) => needsSpoofChain(v, opts))) {
    const spoof = names.instanceSpoof(id);
    chains.set(spoof, renderSpoofChain(view, version, opts));
    egress.push(join(['-j', spoof]));
  }
  egress.push(join(['-j', names.egressBase]));

  if (opts.allowSameNetTraffic) {
    const cidrs = [...new Set(subnetsOf(view.instance.vifs, version).map((s) => s.cidr))];
    for (const cidr of cidrs) {
      ingress.push(join(['-s', cidr, '-j', 'ACCEPT']));
      egress.push(join(['-d', cidr, '-g', names.allowed]));
    }
  }
  for (const groupId of view.groupIds) {
    const rules = groupRules(groupId) ?? [];
    if (groupHasRules(rules, 'ingress', version)) ingress.push(join(['-j', names.group(groupId, 'ingress')]));
    if (groupHasRules(rules, 'egress', version)) egress.push(join(['-j', names.group(groupId, 'egress')]));
  }
  ingress.push(join(['-j', names.fallback]));
  egress.push(join(['-j', names.fallback]));
  chains.set(names.instanceIngress(id), ingress);
  chains.set(names.instanceEgress(id), egress);
  return chains;
}

/** Names of every chain `renderInstanceChains` may produce for the instance. */
export function instanceChainNames(instanceId: string, names: Names): string[] {
  return [names.instanceIngress(instanceId), names.instanceEgress(instanceId), names.instanceSpoof(instanceId)];
}

// ----------------------------------------------------------------- dispatch

/**
 * P-from-vm and P-to-vm of one family. Packets are dispatched by the device
 * they leave an instance by (`--physdev-in`, or `-i` for a routed tap) and
 * the device they enter one by (`--physdev-out`, or `-o`). A packet the host
 * routes onto a bridge has no bridge output port yet when it crosses FORWARD,
 * so P-to-vm also dispatches on the instance's addresses (Nova's dispatch),
 * after every device rule.
 */
export function renderDispatch(views: Iterable<InstanceView>, version: IpVersion, opts: RenderOptions): { fromVm: string[]; toVm: string[] } {
  const fromVm: string[] = [];
  const toVm: string[] = [];
  const byAddress: string[] = [];
  const { names } = opts;
  for (const view of views) {
    const egress = names.instanceEgress(view.instance.id);
    const ingress = names.instanceIngress(view.instance.id);
    for (const vif of view.instance.vifs) {
      if (vif.routed) {
        fromVm.push(join(['-i', vif.devname, '-g', egress]));
        toVm.push(join(['-o', vif.devname, '-g', ingress]));
      } else {
        fromVm.push(join(['-m', 'physdev', '--physdev-in', vif.devname, '-g', egress]));
        toVm.push(join(['-m', 'physdev', '--physdev-out', vif.devname, '--physdev-is-bridged', '-g', ingress]));
      }
    }
    for (const address of instanceAddresses(view.instance, version)) {
      byAddress.push(join(['-d', hostCidr(address, version), '-g', ingress]));
    }
  }
  return { fromVm, toVm: [...toVm, ...byAddress] };
}

// --------------------------------------------------------------------- base

export interface BaseInputs {
  /** DHCP servers of every subnet on the host, per family */
  dhcpServers: Record<IpVersion, readonly string[]>;
  /** IPv6 gateways of every subnet on the host (router advertisements come from them) */
  gateways6: readonly string[];
  providerRules: readonly NormalizedProviderRule[];
}

/** Collects the DHCP servers and IPv6 gateways of a set of instances, sorted and unique. */
export function baseInputsOf(views: Iterable<InstanceView>, providerRules: readonly NormalizedProviderRule[]): BaseInputs {
  const dhcp4 = new Set<string>();
  const dhcp6 = new Set<string>();
  const gateways6 = new Set<string>();
  for (const view of views) {
    for (const vif of view.instance.vifs) {
      for (const subnet of vif.subnets) {
        if (subnet.dhcpServer) (subnet.version === 4 ? dhcp4 : dhcp6).add(subnet.dhcpServer);
        if (subnet.version === 6 && subnet.gateway) gateways6.add(subnet.gateway);
      }
    }
  }
  const sorted = (s: Set<string>) => [...s].sort();
  return { dhcpServers: { 4: sorted(dhcp4), 6: sorted(dhcp6) }, gateways6: sorted(gateways6), providerRules };
}

/** The shared chains of one family. */
export function renderBaseChains(inputs: BaseInputs, version: IpVersion, dispatch: { fromVm: string[]; toVm: string[] }, opts: RenderOptions): ChainMap {
  const { names } = opts;
  const chains: ChainMap = new Map();
  chains.set(names.forward, [join(['-j', names.fromVm]), join(['-j', names.toVm])]);
  chains.set(names.input, [join(['-j', names.fromVm])]);
  chains.set(names.fromVm, dispatch.fromVm);
  chains.set(names.toVm, dispatch.toVm);
  chains.set(names.allowed, [join(['-j', names.toVm]), '-j ACCEPT']);

  const inBase = [
    '-m conntrack --ctstate INVALID -j DROP',
    '-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
    join(['-j', names.provider]),
  ];
  if (version === 4) {
    for (const server of inputs.dhcpServers[4]) {
      inBase.push(join(['-s', hostCidr(server, 4)], udpPorts(67, 68), ['-j', 'ACCEPT']));
    }
  } else {
    for (const server of inputs.dhcpServers[6]) {
      inBase.push(join(['-s', hostCidr(server, 6)], udpPorts(547, 546), ['-j', 'ACCEPT']));
    }
    for (const type of ICMPV6_ND_INGRESS) inBase.push(join(icmpv6Type(type), ['-j', 'ACCEPT']));
    for (const gateway of inputs.gateways6) {
      inBase.push(join(['-s', hostCidr(gateway, 6)], icmpv6Type(ICMPV6_ROUTER_ADVERT), ['-j', 'ACCEPT']));
    }
  }
  chains.set(names.ingressBase, inBase);

  const allowed = ['-g', names.allowed];
  const outBase: string[] = [];
  if (version === 4) {
    outBase.push(join(udpPorts(68, 67), allowed));
    outBase.push(join(udpPorts(67, 68), ['-j', 'DROP']));
  } else {
    outBase.push(join(icmpv6Type(ICMPV6_ROUTER_ADVERT), ['-j', 'DROP']));
    outBase.push(join(icmpv6Type(ICMPV6_REDIRECT), ['-j', 'DROP']));
    for (const type of ICMPV6_ND_EGRESS) outBase.push(join(icmpv6Type(type), allowed));
    outBase.push(join(udpPorts(546, 547), allowed));
    outBase.push(join(udpPorts(547, 546), ['-j', 'DROP']));
  }
  outBase.push('-m conntrack --ctstate INVALID -j DROP');
  outBase.push(join(['-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED'], allowed));
  chains.set(names.egressBase, outBase);

  chains.set(
    names.provider,
    inputs.providerRules
      .filter((r) => r.version === version)
      .map((r) => join(['-s', r.cidr], protocolTokens(r.protocol, r.ports, version), ['-j', 'DROP'])),
  );
  chains.set(names.fallback, [opts.fallbackAction === 'REJECT' ? '-j REJECT' : '-j DROP']);
  return chains;
}

/** Built-in chains and the chain of ours each one jumps to first. */
export function hooks(names: Names): { builtin: string; target: string }[] {
  return [
    { builtin: 'FORWARD', target: names.forward },
    { builtin: 'INPUT', target: names.input },
  ];
}
