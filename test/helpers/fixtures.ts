/**
 * Shared builders for the real-kernel driver tests: a "lab" (one topology,
 * one in-memory VirtAPI, drivers bound to the topology's host namespace),
 * Nova network info for its instances, probe tables and kernel-state dumps.
 *
 * Address plan (every lab): one bridge, subnet 10.0.0.0/24 and
 * 2001:db8::/64. VM number `n` (10-99) gets MAC fa:16:3e:00:00:<n>,
 * 10.0.0.<n> and 2001:db8::<n>, tap device `tap-<name>`. The subnets' gateway
 * is .1 / ::1 and the DHCP server 10.0.0.2, as the network info says; a lab
 * may host namespaces at those addresses (unfiltered "outside" hosts).
 */
import { expect } from 'vitest';
import { IptablesFirewallDriver } from '../../src/drivers/iptables-driver.js';
import { NftablesFirewallDriver } from '../../src/drivers/nftables-driver.js';
import type { DriverOptions } from '../../src/drivers/options.js';
import { nftNames } from '../../src/render/nftables.js';
import type { Instance as NovaInstance, NetworkInfo, SecurityGroupRule } from '../../src/model/types.js';
import { InMemoryVirtAPI } from '../../src/virtapi/memory.js';
import { listen, ping, tcpConnect, udpExchange, type Listener } from './probe.js';
import { Topology, type ExecOptions, type Instance as NsInstance, type TopologyOptions } from './topology.js';

export const SUBNET4 = '10.0.0.0/24';
export const SUBNET6 = '2001:db8::/64';
export const GATEWAY4 = '10.0.0.1';
export const GATEWAY6 = '2001:db8::1';
export const DHCP_SERVER4 = '10.0.0.2';

/** Time a negative probe waits. Every blocked probe costs this much. */
export const PROBE_MS = 800;

/**
 * Time a probe expected to succeed may take (expectReach passes it): on a
 * loaded machine a handshake can take longer than PROBE_MS, and a positive
 * probe only waits this long when it is about to fail anyway.
 */
export const POSITIVE_PROBE_MS = 2500;

/** Egress to anywhere, both families: what most test groups need besides their ingress rules. */
export const EGRESS_ALL: SecurityGroupRule[] = [{ direction: 'egress' }, { direction: 'egress', ethertype: 'IPv6' }];

/** Ports every VM's echo server listens on (blocked probes must hit an open port). */
export const TCP_PORTS = [22, 80, 81, 7999, 8000, 8001, 8002, 8003, 9000, 9001, 9002];
export const UDP_PORTS = [5353, 5354, 9000, 9001, 9003];

export interface VmOptions {
  /** Nova instance fields (default `{ id: name }`). */
  instance?: Partial<NovaInstance>;
  /** Override the v6 subnet's gateway in the network info. */
  gateway6?: string;
  /** Network info with no DHCP server in the v4 subnet. */
  noDhcp?: boolean;
}

/** A namespace of the topology plus the Nova view of it. */
export interface Vm extends NsInstance {
  n: number;
  ip4: string;
  ip6: string;
  /** EUI-64 link-local address the kernel derives from the MAC. */
  lla: string;
  instance: NovaInstance;
  nwinfo: NetworkInfo;
}

export function macOf(n: number): string {
  if (!Number.isInteger(n) || n < 10 || n > 99) throw new Error(`vm number ${n} outside 10-99`);
  return `fa:16:3e:00:00:${n}`;
}

export function linkLocalOf(n: number): string {
  return `fe80::f816:3eff:fe00:${n}`;
}

/** Nova network model for one VIF on the lab's subnets. */
export function networkInfoFor(name: string, n: number, opts: VmOptions = {}): NetworkInfo {
  return [
    {
      id: `vif-${name}`,
      address: macOf(n),
      devname: `tap-${name}`,
      type: 'bridge',
      network: {
        id: 'net0',
        label: 'private',
        bridge: 'br0',
        subnets: [
          {
            cidr: SUBNET4,
            version: 4,
            ips: [{ address: `10.0.0.${n}`, type: 'fixed', version: 4 }],
            gateway: { address: GATEWAY4 },
            meta: opts.noDhcp ? {} : { dhcp_server: DHCP_SERVER4 },
          },
          {
            cidr: SUBNET6,
            version: 6,
            ips: [{ address: `2001:db8::${n}`, type: 'fixed', version: 6 }],
            gateway: { address: opts.gateway6 ?? GATEWAY6 },
          },
        ],
      },
    },
  ];
}

/**
 * The kernel drivers the conformance suite runs against. Both enforce the
 * same semantics, so every packet assertion holds for each; only assertions
 * that read the kernel's state differ (iptables-save vs the inet table).
 */
export const DRIVERS = ['iptables', 'nftables'] as const;
export type DriverKind = (typeof DRIVERS)[number];
export type KernelDriver = IptablesFirewallDriver | NftablesFirewallDriver;

/**
 * The driver's chain names for an instance and a group (same signatures for
 * both drivers). The nftables driver names an instance's chains by their
 * rules (instances with the same rules share them): ask it which they are now.
 */
export function chainNamesOf(driver: KernelDriver): {
  instanceIngress(id: string): string;
  instanceEgress(id: string): string;
  group(id: string, direction: 'ingress' | 'egress'): string;
} {
  if (!(driver instanceof NftablesFirewallDriver)) return driver.names;
  const chains = (id: string) => {
    const found = driver.instanceChains(id);
    if (!found) throw new Error(`instance ${id} has no chains in this driver`);
    return found;
  };
  return {
    instanceIngress: (id) => chains(id).ingress,
    instanceEgress: (id) => chains(id).egress,
    group: nftNames.group,
  };
}

export class Lab {
  readonly api = new InMemoryVirtAPI();
  readonly vms = new Map<string, Vm>();
  readonly #listeners: Listener[] = [];
  readonly #drivers: KernelDriver[] = [];

  private constructor(readonly topo: Topology) {}

  static async create(opts: TopologyOptions = {}): Promise<Lab> {
    return new Lab(await Topology.create(opts));
  }

  get hostNs(): string {
    return this.topo.hostNs;
  }

  /**
   * Adds a namespace on the bridge and records it in the VirtAPI with its
   * groups. It stays unfiltered (an "outside" host) until `filter()`.
   */
  async vm(name: string, n: number, groups: string[] = [], opts: VmOptions = {}): Promise<Vm> {
    const ns = await this.topo.addInstance({
      name,
      devname: `tap-${name}`,
      mac: macOf(n),
      ipv4: [`10.0.0.${n}/24`],
      ipv6: [`2001:db8::${n}/64`],
    });
    const vm: Vm = {
      ...ns,
      n,
      ip4: `10.0.0.${n}`,
      ip6: `2001:db8::${n}`,
      lla: linkLocalOf(n),
      instance: { id: name, name: `instance-${name}`, ...opts.instance },
      nwinfo: networkInfoFor(name, n, opts),
    };
    this.api.putInstance(vm.instance, vm.nwinfo, groups);
    this.vms.set(name, vm);
    return vm;
  }

  /** An unfiltered namespace with an arbitrary address (a DHCP server, a router). */
  async host(name: string, devname: string, mac: string, ipv4: string[], ipv6: string[] = []): Promise<NsInstance> {
    return this.topo.addInstance({ name, devname, mac, ipv4, ipv6 });
  }

  /** A driver of the given kind working in the lab's host namespace; allowSameNetTraffic is off unless given. */
  driver(kind?: 'iptables', options?: DriverOptions): IptablesFirewallDriver;
  driver(kind: 'nftables', options?: DriverOptions): NftablesFirewallDriver;
  driver(kind: DriverKind, options?: DriverOptions): KernelDriver;
  driver(kind: DriverKind = 'iptables', options: DriverOptions = {}): KernelDriver {
    const opts: DriverOptions = { netns: this.topo.hostNs, allowSameNetTraffic: false, ...options };
    const driver = kind === 'nftables' ? new NftablesFirewallDriver(this.api, opts) : new IptablesFirewallDriver(this.api, opts);
    this.#drivers.push(driver);
    return driver;
  }

  /** The compute manager's spawn sequence for each VM: basic filtering, then its chains. */
  async filter(driver: KernelDriver, ...vms: Vm[]): Promise<void> {
    for (const vm of vms) {
      await driver.setupBasicFiltering(vm.instance, vm.nwinfo);
      await driver.prepareInstanceFilter(vm.instance, vm.nwinfo);
      await driver.applyInstanceFilter(vm.instance, vm.nwinfo);
    }
  }

  /** Echo servers on every test port of each VM. */
  async serve(...vms: NsInstance[]): Promise<void> {
    for (const vm of vms) this.#listeners.push(await listen(vm, { tcp: TCP_PORTS, udp: UDP_PORTS }));
  }

  hostExec(argv: string[], opts?: ExecOptions) {
    return this.topo.hostExec(argv, opts);
  }

  /** Runs a command in the host namespace and fails the test if it fails. */
  async hostMust(argv: string[]): Promise<string> {
    const r = await this.topo.hostExec(argv);
    if (r.code !== 0) throw new Error(`${argv.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
    return r.stdout;
  }

  async destroy(): Promise<void> {
    await Promise.all(this.#listeners.splice(0).map((l) => l.stop()));
    await Promise.all(this.#drivers.splice(0).map((d) => d.close()));
    await this.topo.destroy();
  }
}

// ------------------------------------------------------------------ probes

/** A probe; `expected: true` (from expectReach) lets it wait up to POSITIVE_PROBE_MS. */
export type Probe = (opts?: { expected?: boolean }) => Promise<boolean>;

const wait = (timeoutMs: number, opts?: { expected?: boolean }) => (opts?.expected ? Math.max(timeoutMs, POSITIVE_PROBE_MS) : timeoutMs);

export const tcp =
  (from: NsInstance, ip: string, port: number, timeoutMs = PROBE_MS): Probe =>
  (opts) =>
    tcpConnect(from, ip, port, { timeoutMs: wait(timeoutMs, opts) });

/** TCP from a chosen source address of `from`. */
export const tcpFrom =
  (from: NsInstance, sourceIp: string, ip: string, port: number, timeoutMs = PROBE_MS): Probe =>
  (opts) =>
    tcpConnect(from, ip, port, { sourceIp, timeoutMs: wait(timeoutMs, opts) });

export const udp =
  (from: NsInstance, ip: string, port: number, timeoutMs = PROBE_MS): Probe =>
  (opts) =>
    udpExchange(from, ip, port, { timeoutMs: wait(timeoutMs, opts) });

export const icmp =
  (from: NsInstance, ip: string, timeoutMs = PROBE_MS): Probe =>
  (opts) =>
    ping(from, ip, { timeoutMs: wait(timeoutMs, opts) });

/**
 * Runs every probe at once and compares the whole table with the expected
 * outcomes, so a failure shows every path that misbehaved, by name.
 */
export async function expectReach(table: Record<string, readonly [Probe, boolean]>): Promise<void> {
  const entries = Object.entries(table);
  const results = await Promise.all(entries.map(([, [probe, expected]]) => probe({ expected })));
  const actual = Object.fromEntries(entries.map(([name], i) => [name, results[i]]));
  const expected = Object.fromEntries(entries.map(([name, [, outcome]]) => [name, outcome]));
  expect(actual).toEqual(expected);
}

// ------------------------------------------------------------ kernel state

/**
 * `iptables-save` / `ip6tables-save` (all tables) of a namespace, without
 * `#` lines and with every packet/byte counter zeroed, so two dumps of the
 * same ruleset compare equal.
 */
export async function saveRules(topo: Topology, version: 4 | 6): Promise<string> {
  const r = await topo.hostExec([version === 4 ? 'iptables-save' : 'ip6tables-save']);
  if (r.code !== 0) throw new Error(`ip${version === 4 ? '' : '6'}tables-save failed: ${r.stderr}`);
  return normaliseSave(r.stdout);
}

export function normaliseSave(text: string): string {
  return text
    .split('\n')
    .filter((line) => line.trim() !== '' && !line.startsWith('#'))
    .map((line) => line.replace(/\[\d+:\d+\]/g, '[0:0]'))
    .join('\n');
}

/** Lines of a dump that are not virtfw's (chains, rules and hooks of ours all name `virtfw`). */
export function foreignLines(dump: string, prefix = 'virtfw'): string[] {
  return dump.split('\n').filter((line) => !line.includes(prefix));
}

/** `nft list ...` in the host namespace; '' when the object does not exist. */
export async function nftList(topo: Topology, ...what: string[]): Promise<string> {
  const r = await topo.hostExec(['nft', 'list', ...what]);
  return r.code === 0 ? r.stdout : '';
}

/**
 * An `nft list` text made comparable: counters zeroed, handles dropped, and
 * the elements of every set and map sorted (the kernel lists a hash set's
 * elements in hash order, which may change when the set grows or shrinks).
 */
export function normaliseNft(text: string): string {
  const zeroed = text
    .replace(/counter packets \d+ bytes \d+/g, 'counter packets 0 bytes 0')
    .replace(/\s*# handle \d+/g, '');
  return zeroed.replace(/elements = \{([^}]*)\}/g, (_m, body: string) => {
    const items = body
      .split(',')
      .map((e) => e.trim())
      .filter(Boolean)
      .sort();
    return `elements = { ${items.join(', ')} }`;
  });
}

/** `nft list ...`, normalised (see normaliseNft); '' when the object does not exist. */
export async function nftState(topo: Topology, ...what: string[]): Promise<string> {
  return normaliseNft(await nftList(topo, ...what));
}

/** A ruleset listing without the given tables (e.g. `inet virtfw`): what belongs to others. */
export function withoutTables(ruleset: string, tables: readonly string[]): string {
  const out: string[] = [];
  let skipping = false;
  for (const line of ruleset.split('\n')) {
    const header = /^table (\S+ \S+) \{$/.exec(line);
    if (header) skipping = tables.includes(header[1] as string);
    if (!skipping) out.push(line);
    if (line === '}') skipping = false;
  }
  return out.join('\n');
}

/** The whole nftables ruleset of the host namespace (iptables-nft's tables included), normalised. */
export function nftRuleset(topo: Topology): Promise<string> {
  return nftState(topo, 'ruleset');
}

/**
 * Everything a driver may own, for "nothing changed" checks: both iptables
 * families (iptables-save), the bridge table and the nftables driver's inet
 * table (normalised listings; '' when absent).
 */
export async function kernelSnapshot(topo: Topology): Promise<{ v4: string; v6: string; bridge: string; inet: string }> {
  const [v4, v6, bridge, inet] = await Promise.all([
    saveRules(topo, 4),
    saveRules(topo, 6),
    nftState(topo, 'table', 'bridge', 'virtfw'),
    nftState(topo, 'table', 'inet', 'virtfw'),
  ]);
  return { v4, v6, bridge, inet };
}

/** Chains of a table (`nft list table`): name -> its rules as nft prints them, without comments (virtfw's identity tags). */
export async function nftChains(topo: Topology, family: string, table: string): Promise<Map<string, string[]>> {
  const text = await nftList(topo, 'table', family, table);
  const chains = new Map<string, string[]>();
  let current: string[] | null = null;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const open = /^chain (\S+) \{$/.exec(line);
    if (open) {
      current = [];
      chains.set(open[1] as string, current);
      continue;
    }
    if (line === '}') {
      current = null;
      continue;
    }
    if (current && line && !/^type \S+ hook /.test(line)) current.push(line.replace(/ comment "[^"]*"$/, ''));
  }
  return chains;
}

/** Elements of a set or map of a table (`nft -j`): keys as strings, with the verdict for maps. */
export async function nftElements(topo: Topology, family: string, table: string, name: string): Promise<string[]> {
  const r = await topo.hostExec(['nft', '-j', 'list', 'table', family, table]);
  if (r.code !== 0) return [];
  const listing = JSON.parse(r.stdout) as { nftables: Record<string, { name?: string; elem?: unknown[] }>[] };
  for (const item of listing.nftables) {
    const obj = item.set ?? item.map;
    if (obj?.name === name) return (obj.elem ?? []).map((e) => elementString(e)).sort();
  }
  return [];
}

function elementString(elem: unknown): string {
  if (typeof elem === 'string' || typeof elem === 'number') return String(elem);
  if (Array.isArray(elem)) return elem.map(elementString).join(' : ');
  if (elem && typeof elem === 'object') {
    const o = elem as Record<string, unknown>;
    if (Array.isArray(o.concat)) return o.concat.map(elementString).join(' . ');
    if ('jump' in o) return `jump ${String((o.jump as { target: string }).target)}`;
    if ('goto' in o) return `goto ${String((o.goto as { target: string }).target)}`;
    if ('elem' in o) return elementString((o.elem as { val: unknown }).val);
    if ('prefix' in o) {
      const p = o.prefix as { addr: string; len: number };
      return `${p.addr}/${p.len}`;
    }
  }
  return JSON.stringify(elem);
}
