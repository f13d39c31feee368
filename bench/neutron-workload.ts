/**
 * The shared Neutron benchmark workload (`/work/shared/bench/neutron/workload.py`,
 * format `nbench-sg-workload/1`) translated to virtfw's model, so virtfw
 * programs exactly what Neutron's driver programs in `bench:compare`.
 *
 * - groups and rules: Neutron API form -> virtfw rules (camelCase; `icmp` and
 *   `ipv6-icmp` keep port_range_min/max as type/code; 0.0.0.0/0 is "any"
 *   in both drivers);
 * - ports -> instances on this host (one VIF: MAC, tap + first 11 characters
 *   of the port id as Neutron's hybrid plug names it, the fixed IPv4/IPv6 in
 *   the network's subnets), each in exactly its one group;
 * - external members -> instances with `host: 'elsewhere'`, in their group,
 *   so remote-group rules see their addresses;
 * - `changes.member_add[n]` / `changes.rule_add[n]` -> the same events.
 *
 * Not translatable today: allowed address pairs (virtfw has no such concept),
 * see `unsupported` in the summary.
 */
import { readFileSync } from 'node:fs';
import type { Instance, NetworkInfo, SecurityGroupRule, Subnet } from '../src/model/types.js';
import { InMemoryVirtAPI } from '../src/virtapi/memory.js';

// ------------------------------------------------------------ workload JSON

export interface NeutronRule {
  id: string;
  security_group_id: string;
  direction: 'ingress' | 'egress';
  ethertype: 'IPv4' | 'IPv6';
  protocol: string | null;
  port_range_min: number | null;
  port_range_max: number | null;
  remote_ip_prefix: string | null;
  remote_group_id: string | null;
}

export interface NeutronGroup {
  id: string;
  name: string;
  stateful?: boolean;
  rules: NeutronRule[];
}

export interface NeutronPort {
  id: string;
  name: string;
  network_id: string;
  mac_address: string;
  device_owner: string;
  fixed_ips: string[];
  allowed_address_pairs: { ip_address: string; mac_address: string }[];
  security_group_ids: string[];
  port_security_enabled: boolean;
}

export interface NeutronExternalMember {
  security_group_id: string;
  mac_address: string;
  fixed_ips: string[];
}

export interface NeutronMemberAdd {
  security_group_id: string;
  ip_address: string;
  mac_address: string;
}

export interface NeutronWorkload {
  format: string;
  params: { ports: number; groups: number; rules_per_group: number; external_members_per_group: number; seed: number };
  network_id: string;
  security_groups: NeutronGroup[];
  ports: NeutronPort[];
  external_members: NeutronExternalMember[];
  changes: { member_add: NeutronMemberAdd[]; rule_add: NeutronRule[] };
}

export function readWorkload(path: string): NeutronWorkload {
  const doc = JSON.parse(readFileSync(path, 'utf8')) as NeutronWorkload;
  if (doc.format !== 'nbench-sg-workload/1') throw new Error(`${path}: unknown workload format ${JSON.stringify(doc.format)}`);
  return doc;
}

/** The part of a workload both sides program (Neutron's file also carries `agent_view`). */
export function workloadCore(w: NeutronWorkload): unknown {
  const { format, params, network_id, security_groups, ports, external_members, changes } = w;
  return { format, params, network_id, security_groups, ports, external_members, changes };
}

// -------------------------------------------------------------- addressing

/**
 * The workload names no subnets; its fixed IPs are `10.10.0.10 + i` and
 * `2001:db8:a::10 + i` (README "Port i"). These are the subnets they live in;
 * `buildHost` checks every address against them.
 */
export const PORT_SUBNETS = {
  v4: { cidr: '10.10.0.0/16', gateway: '10.10.0.1', dhcpServer: '10.10.0.2' },
  v6: { cidr: '2001:db8:a::/64', gateway: '2001:db8:a::1' },
} as const;
/** External members: `10.20.<g>.<10+k>`, `2001:db8:14:<g>::<a+k>`; added members `10.40.0.<10+n>`. */
const EXTERNAL_SUBNETS = { v4: '10.20.0.0/16', v6: '2001:db8:14::/48', added: '10.40.0.0/24' } as const;

const isV6 = (address: string) => address.includes(':');

function v4ToInt(address: string): number {
  const parts = address.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new Error(`bad IPv4 ${address}`);
  return (((parts[0] ?? 0) << 24) | ((parts[1] ?? 0) << 16) | ((parts[2] ?? 0) << 8) | (parts[3] ?? 0)) >>> 0;
}

function v6ToBigInt(address: string): bigint {
  const [head = '', tail] = address.split('::');
  const h = head ? head.split(':') : [];
  const t = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  if (groups.length !== 8) throw new Error(`bad IPv6 ${address}`);
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

export function inCidr(address: string, cidr: string): boolean {
  const [net = '', lenText = ''] = cidr.split('/');
  const len = Number(lenText);
  if (isV6(net) !== isV6(address)) return false;
  if (isV6(net)) {
    const shift = BigInt(128 - len);
    return v6ToBigInt(address) >> shift === v6ToBigInt(net) >> shift;
  }
  if (len === 0) return true;
  const shift = 32 - len;
  return v4ToInt(address) >>> shift === v4ToInt(net) >>> shift;
}

function requireIn(address: string, cidr: string, what: string): void {
  if (!inCidr(address, cidr)) throw new Error(`${what}: ${address} is not in ${cidr}; update the subnets in bench/neutron-workload.ts`);
}

// ------------------------------------------------------------ translation

/** One Neutron API rule as a virtfw rule. */
export function toRule(r: NeutronRule): SecurityGroupRule {
  return {
    id: r.id,
    direction: r.direction,
    ethertype: r.ethertype,
    protocol: r.protocol,
    portRangeMin: r.port_range_min,
    portRangeMax: r.port_range_max,
    remoteIpPrefix: r.remote_ip_prefix,
    remoteGroupId: r.remote_group_id,
  };
}

/** Neutron's hybrid plug names the tap `tap` + the first 11 characters of the port id. */
export const tapName = (portId: string) => `tap${portId.slice(0, 11)}`;

export function portNetworkInfo(port: NeutronPort): NetworkInfo {
  const v4 = port.fixed_ips.filter((a) => !isV6(a));
  const v6 = port.fixed_ips.filter(isV6);
  for (const a of v4) requireIn(a, PORT_SUBNETS.v4.cidr, `port ${port.name}`);
  for (const a of v6) requireIn(a, PORT_SUBNETS.v6.cidr, `port ${port.name}`);
  const subnets: Subnet[] = [
    {
      cidr: PORT_SUBNETS.v4.cidr,
      version: 4,
      gateway: { address: PORT_SUBNETS.v4.gateway },
      ips: v4.map((address) => ({ address, type: 'fixed', version: 4 })),
      meta: { dhcp_server: PORT_SUBNETS.v4.dhcpServer },
    },
    {
      cidr: PORT_SUBNETS.v6.cidr,
      version: 6,
      gateway: { address: PORT_SUBNETS.v6.gateway },
      ips: v6.map((address) => ({ address, type: 'fixed', version: 6 })),
    },
  ];
  return [
    {
      id: port.id,
      address: port.mac_address,
      devname: tapName(port.id),
      type: 'ovs', // hybrid plug: the tap is a port of a Linux bridge (physdev matching)
      network: { id: port.network_id, label: 'nbench-net', bridge: `qbr${port.id.slice(0, 11)}`, subnets },
    },
  ];
}

function externalNetworkInfo(id: string, mac: string, addresses: string[], v4Cidr: string): NetworkInfo {
  const v4 = addresses.filter((a) => !isV6(a));
  const v6 = addresses.filter(isV6);
  for (const a of v4) requireIn(a, v4Cidr, `external member ${id}`);
  for (const a of v6) requireIn(a, EXTERNAL_SUBNETS.v6, `external member ${id}`);
  const subnets: Subnet[] = [{ cidr: v4Cidr, version: 4, ips: v4.map((address) => ({ address })) }];
  if (v6.length) subnets.push({ cidr: EXTERNAL_SUBNETS.v6, version: 6, ips: v6.map((address) => ({ address })) });
  // The device name is never used: the driver does not filter instances of other hosts.
  return [{ address: mac, devname: 'tapremote', network: { subnets } }];
}

export interface HostPort {
  instance: Instance;
  networkInfo: NetworkInfo;
}

export interface BuiltHost {
  api: InMemoryVirtAPI;
  ports: HostPort[];
  /** The member_add events: each puts one instance in the VirtAPI; refresh `groupId`. */
  memberAdds: { groupId: string; apply: () => void }[];
  /** The rule_add events: each adds one rule; refresh `groupId`. */
  ruleAdds: { groupId: string; apply: () => void }[];
  summary: {
    ports: number;
    groups: number;
    rules: number;
    externalMembers: number;
    /** what the workload asks for that virtfw cannot express */
    unsupported: { allowedAddressPairs: number };
  };
}

/** The workload's initial state in an InMemoryVirtAPI, and its change events. */
export function buildHost(w: NeutronWorkload): BuiltHost {
  const api = new InMemoryVirtAPI();
  for (const g of w.security_groups) api.putGroup({ id: g.id, name: g.name }, g.rules.map(toRule));
  const ports: HostPort[] = w.ports.map((p) => {
    if (p.security_group_ids.length !== 1) throw new Error(`port ${p.name}: expected exactly one group`);
    const instance: Instance = { id: p.id, name: p.name, host: 'bench' };
    const networkInfo = portNetworkInfo(p);
    api.putInstance(instance, networkInfo, p.security_group_ids);
    return { instance, networkInfo };
  });
  w.external_members.forEach((m, i) => {
    const id = `ext-${i}`;
    api.putInstance({ id, host: 'elsewhere' }, externalNetworkInfo(id, m.mac_address, m.fixed_ips, EXTERNAL_SUBNETS.v4), [m.security_group_id]);
  });
  const memberAdds = w.changes.member_add.map((c, n) => ({
    groupId: c.security_group_id,
    apply: () => {
      const id = `member-add-${n}`;
      api.putInstance({ id, host: 'elsewhere' }, externalNetworkInfo(id, c.mac_address, [c.ip_address], EXTERNAL_SUBNETS.added), [
        c.security_group_id,
      ]);
    },
  }));
  const ruleAdds = w.changes.rule_add.map((r) => ({
    groupId: r.security_group_id,
    apply: () => {
      api.addRule(r.security_group_id, toRule(r));
    },
  }));
  return {
    api,
    ports,
    memberAdds,
    ruleAdds,
    summary: {
      ports: w.ports.length,
      groups: w.security_groups.length,
      rules: w.security_groups.reduce((n, g) => n + g.rules.length, 0),
      externalMembers: w.external_members.length,
      unsupported: { allowedAddressPairs: w.ports.reduce((n, p) => n + p.allowed_address_pairs.length, 0) },
    },
  };
}
