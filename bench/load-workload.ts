/**
 * The load benchmark's workload: topology, initial data, the change mix, and
 * the "which hosts does this change concern" model.
 *
 * Topology: groups are homed on `spread` consecutive hosts (group g starts at
 * host floor(g * hosts / groups)); instance i is in group i % groups and on
 * one of that group's home hosts, round robin. With the defaults (50 hosts,
 * 100 groups, spread 5, 10,000 instances) every host holds 200 instances of
 * 10 groups, and every group has 100 members on 5 hosts.
 *
 * Rules per group: Neutron's two default egress rules, ssh from a CIDR, 443,
 * one port of its own, IPv6 icmp, and two remote-group rules: tcp 5432 from
 * the next group (home hosts overlap) and udp 53 from the group half-way
 * round (other hosts), so a membership change on one host rewrites chains on
 * others.
 */
import type { NetworkInfo } from '../src/model/types.js';
import type { Change, NewRule, Store } from '../src/store/store.js';
import { pick } from './load-stats.js';

export const PROJECT = 'bench';

export interface Topology {
  hosts: string[];
  groups: number;
  spread: number;
  /** per group: the indexes of its home hosts */
  homes: number[][];
  /** per host: the groups homed there */
  hostGroups: number[][];
}

export function hostName(i: number): string {
  return `host-${String(i + 1).padStart(2, '0')}`;
}

export function topology(hostCount: number, groups: number, spread: number): Topology {
  const k = Math.max(1, Math.min(spread, hostCount));
  const hosts = Array.from({ length: hostCount }, (_, i) => hostName(i));
  const homes: number[][] = [];
  const hostGroups: number[][] = hosts.map(() => []);
  for (let g = 0; g < groups; g++) {
    const start = Math.floor((g * hostCount) / groups);
    const home = Array.from({ length: k }, (_, j) => (start + j) % hostCount);
    homes.push(home);
    for (const h of home) hostGroups[h]?.push(g);
  }
  return { hosts, groups, spread: k, homes, hostGroups };
}

/** Host index of the n-th initial instance. */
export function initialHost(topo: Topology, n: number): { host: number; group: number } {
  const group = n % topo.groups;
  const home = topo.homes[group] ?? [0];
  return { group, host: home[Math.floor(n / topo.groups) % home.length] ?? 0 };
}

/** One bridged VIF; address, MAC and tap are unique per `n` (IPv4 from 10.0.0.2 up in a /8). */
export function netinfo(n: number): NetworkInfo {
  const a = n + 2;
  const v4 = `10.${(a >> 16) & 255}.${(a >> 8) & 255}.${a & 255}`;
  const mac = `fa:16:3e:${((n >> 16) & 255).toString(16).padStart(2, '0')}:${((n >> 8) & 255).toString(16).padStart(2, '0')}:${(n & 255).toString(16).padStart(2, '0')}`;
  return [
    {
      address: mac,
      devname: `tap${n}`,
      network: {
        subnets: [
          { cidr: '10.0.0.0/8', gateway: { address: '10.0.0.1' }, ips: [{ address: v4 }], meta: { dhcp_server: '10.0.0.1' } },
          { cidr: '2001:db8::/64', gateway: { address: '2001:db8::1' }, ips: [{ address: `2001:db8::${a.toString(16)}` }] },
        ],
      },
    },
  ];
}

/** The remote groups group g's base rules name. */
export function baseRemotes(g: number, groups: number): number[] {
  return [(g + 1) % groups, (g + Math.floor(groups / 2)) % groups];
}

function baseRules(g: number, groupIds: readonly string[]): NewRule[] {
  const id = (x: number) => groupIds[x] ?? '';
  const [near, far] = baseRemotes(g, groupIds.length);
  return [
    { securityGroupId: id(g), direction: 'ingress', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22, remoteIpPrefix: '192.0.2.0/24' },
    { securityGroupId: id(g), direction: 'ingress', protocol: 'tcp', portRangeMin: 443, portRangeMax: 443 },
    { securityGroupId: id(g), direction: 'ingress', protocol: 'tcp', portRangeMin: 8000 + (g % 1000), portRangeMax: 8000 + (g % 1000) },
    { securityGroupId: id(g), direction: 'ingress', ethertype: 'IPv6', protocol: 'icmp' },
    { securityGroupId: id(g), direction: 'ingress', protocol: 'tcp', portRangeMin: 5432, portRangeMax: 5432, remoteGroupId: id(near ?? g) },
    { securityGroupId: id(g), direction: 'ingress', protocol: 'udp', portRangeMin: 53, portRangeMax: 53, remoteGroupId: id(far ?? g) },
  ];
}

/** Runs `fn` over `items` with at most `concurrency` at once. */
export async function inParallel<T>(items: readonly T[], concurrency: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i] as T, i);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, items.length)) }, worker));
}

export interface InstanceState {
  n: number;
  host: number;
  groups: number[];
}

/** What the bench believes the store holds (it is the only writer), to pick the targets of changes. */
export class LiveModel {
  readonly topo: Topology;
  readonly groupIds: string[] = [];
  readonly groupIndex = new Map<string, number>();
  readonly instances = new Map<string, InstanceState>();
  readonly #ids: string[] = [];
  readonly #pos = new Map<string, number>();
  /** rules the bench added during the load, per group */
  readonly benchRules = new Map<number, { id: string; remote: number | null }[]>();
  readonly providerRules: string[] = [];
  /** ids (instances), `rules:<g>` and `provider` with a write in flight */
  readonly busy = new Set<string>();
  nextIndex = 0;
  nextPort = 0;

  constructor(topo: Topology) {
    this.topo = topo;
  }

  addInstance(id: string, state: InstanceState): void {
    this.instances.set(id, state);
    this.#pos.set(id, this.#ids.length);
    this.#ids.push(id);
  }

  removeInstance(id: string): void {
    const at = this.#pos.get(id);
    if (at === undefined) return;
    const last = this.#ids.pop() as string;
    if (last !== id) {
      this.#ids[at] = last;
      this.#pos.set(last, at);
    }
    this.#pos.delete(id);
    this.instances.delete(id);
  }

  /** A random instance with no write in flight. */
  randomIdle(random: () => number): string | undefined {
    for (let tries = 0; tries < 20; tries++) {
      const id = pick(random, this.#ids);
      if (id !== undefined && !this.busy.has(id)) return id;
    }
    return undefined;
  }
}

/** Creates the groups, their rules and the instances through the store (`concurrency` writes at once). */
export async function loadInitialData(
  store: Store,
  model: LiveModel,
  instances: number,
  concurrency: number,
  progress: (msg: string) => void,
): Promise<void> {
  const { topo } = model;
  for (let g = 0; g < topo.groups; g++) {
    const row = await store.createSecurityGroup(PROJECT, { name: `g${g}`, description: `bench group ${g}` });
    model.groupIds.push(row.id);
    model.groupIndex.set(row.id, g);
  }
  const rules = Array.from({ length: topo.groups }, (_, g) => baseRules(g, model.groupIds)).flat();
  await inParallel(rules, concurrency, async (rule) => {
    await store.createRule(null, rule);
  });
  progress(`${topo.groups} groups, ${rules.length} rules`);
  const started = performance.now();
  let done = 0;
  await inParallel(
    Array.from({ length: instances }, (_, n) => n),
    concurrency,
    async (n) => {
      const { host, group } = initialHost(topo, n);
      const id = `i${n}`;
      await store.createInstance(PROJECT, { id, name: `vm${n}`, host: topo.hosts[host] ?? '', securityGroups: [model.groupIds[group] ?? ''], networkInfo: netinfo(n) });
      model.addInstance(id, { n, host, groups: [group] });
      if (++done % 2000 === 0) progress(`${done}/${instances} instances (${Math.round(done / ((performance.now() - started) / 1000))}/s)`);
    },
  );
  model.nextIndex = instances;
}

// ------------------------------------------------------------- the change mix

export type ChangeKind =
  | 'rule-add'
  | 'rule-delete'
  | 'member-move'
  | 'member-join-leave'
  | 'instance-create'
  | 'instance-delete'
  | 'instance-migrate'
  | 'provider-rule';

/** Weights of the change kinds (percent). */
export const MIX: Readonly<Record<ChangeKind, number>> = {
  'rule-add': 18,
  'rule-delete': 14,
  'member-move': 30,
  'member-join-leave': 6,
  'instance-create': 12,
  'instance-delete': 12,
  'instance-migrate': 7,
  'provider-rule': 1,
};

/** What a rule write did, for the concern model (the change log names only the group). */
export interface RuleEffect {
  groupId: string;
  op: 'add' | 'delete';
  remoteGroupId: string | null;
}

export interface PlannedChange {
  kind: ChangeKind;
  keys: string[];
  /** does the write; returns the rule effect for rule writes */
  exec(store: Store): Promise<RuleEffect | null>;
  /** takes the committed write into the live model */
  commit(): void;
}

function chooseKind(random: () => number): ChangeKind {
  let x = random() * 100;
  for (const [kind, w] of Object.entries(MIX) as [ChangeKind, number][]) {
    if ((x -= w) < 0) return kind;
  }
  return 'member-move';
}

/** Plans one change of a random kind whose targets have no write in flight (null if none could be found). */
export function planChange(model: LiveModel, random: () => number): PlannedChange | null {
  for (let attempt = 0; attempt < 10; attempt++) {
    const planned = planKind(model, random, chooseKind(random));
    if (planned) return planned;
  }
  return null;
}

function planKind(model: LiveModel, random: () => number, kind: ChangeKind): PlannedChange | null {
  const { topo, groupIds } = model;
  const gid = (g: number) => groupIds[g] ?? '';
  switch (kind) {
    case 'rule-add': {
      const g = Math.floor(random() * topo.groups);
      if (model.busy.has(`rules:${g}`)) return null;
      const port = 10000 + (model.nextPort++ % 50000);
      // a quarter name a remote group (any group: possibly homed elsewhere)
      const remote = random() < 0.25 ? Math.floor(random() * topo.groups) : null;
      let ruleId = '';
      return {
        kind,
        keys: [`rules:${g}`],
        async exec(store) {
          const row = await store.createRule(null, {
            securityGroupId: gid(g),
            direction: 'ingress',
            protocol: 'tcp',
            portRangeMin: port,
            portRangeMax: port,
            ...(remote === null ? { remoteIpPrefix: '198.18.0.0/15' } : { remoteGroupId: gid(remote) }),
          });
          ruleId = row.id;
          return { groupId: gid(g), op: 'add', remoteGroupId: remote === null ? null : gid(remote) };
        },
        commit() {
          const list = model.benchRules.get(g) ?? [];
          list.push({ id: ruleId, remote });
          model.benchRules.set(g, list);
        },
      };
    }
    case 'rule-delete': {
      const candidates = [...model.benchRules.entries()].filter(([g, list]) => list.length > 0 && !model.busy.has(`rules:${g}`));
      const entry = pick(random, candidates);
      if (!entry) return null;
      const [g, list] = entry;
      const i = Math.floor(random() * list.length);
      const rule = list[i];
      if (!rule) return null;
      return {
        kind,
        keys: [`rules:${g}`],
        async exec(store) {
          await store.deleteRule(null, rule.id);
          return { groupId: gid(g), op: 'delete', remoteGroupId: rule.remote === null ? null : gid(rule.remote) };
        },
        commit() {
          const now = model.benchRules.get(g) ?? [];
          const at = now.findIndex((r) => r.id === rule.id);
          if (at !== -1) now.splice(at, 1);
        },
      };
    }
    case 'member-move':
    case 'member-join-leave': {
      const id = model.randomIdle(random);
      const inst = id === undefined ? undefined : model.instances.get(id);
      if (id === undefined || !inst) return null;
      const local = topo.hostGroups[inst.host] ?? [];
      let groups: number[];
      if (kind === 'member-move') {
        const target = pick(random, local.filter((g) => !inst.groups.includes(g)));
        if (target === undefined) return null;
        groups = [target, ...inst.groups.slice(1)];
      } else if (inst.groups.length > 1) {
        groups = inst.groups.slice(0, 1);
      } else {
        const extra = pick(random, local.filter((g) => !inst.groups.includes(g)));
        if (extra === undefined) return null;
        groups = [...inst.groups, extra];
      }
      return {
        kind,
        keys: [id],
        async exec(store) {
          await store.updateInstance(null, id, { securityGroups: groups.map(gid) });
          return null;
        },
        commit() {
          inst.groups = groups;
        },
      };
    }
    case 'instance-create': {
      const g = Math.floor(random() * topo.groups);
      const host = pick(random, topo.homes[g] ?? []);
      if (host === undefined) return null;
      const n = model.nextIndex++;
      const id = `i${n}`;
      return {
        kind,
        keys: [id],
        async exec(store) {
          await store.createInstance(PROJECT, { id, name: `vm${n}`, host: topo.hosts[host] ?? '', securityGroups: [gid(g)], networkInfo: netinfo(n) });
          return null;
        },
        commit() {
          model.addInstance(id, { n, host, groups: [g] });
        },
      };
    }
    case 'instance-delete': {
      const id = model.randomIdle(random);
      if (id === undefined) return null;
      return {
        kind,
        keys: [id],
        async exec(store) {
          await store.deleteInstance(null, id);
          return null;
        },
        commit() {
          model.removeInstance(id);
        },
      };
    }
    case 'instance-migrate': {
      const id = model.randomIdle(random);
      const inst = id === undefined ? undefined : model.instances.get(id);
      if (id === undefined || !inst) return null;
      const home = topo.homes[inst.groups[0] ?? 0] ?? [];
      const target = pick(random, home.filter((h) => h !== inst.host));
      if (target === undefined) return null;
      return {
        kind,
        keys: [id],
        async exec(store) {
          await store.updateInstance(null, id, { host: topo.hosts[target] ?? '' });
          return null;
        },
        commit() {
          inst.host = target;
        },
      };
    }
    case 'provider-rule': {
      if (model.busy.has('provider')) return null;
      if (model.providerRules.length >= 3) {
        const id = model.providerRules[0] ?? '';
        return {
          kind,
          keys: ['provider'],
          async exec(store) {
            await store.deleteProviderRule(id);
            return null;
          },
          commit() {
            model.providerRules.shift();
          },
        };
      }
      const block = Math.floor(random() * 256);
      let ruleId = '';
      return {
        kind,
        keys: ['provider'],
        async exec(store) {
          ruleId = (await store.createProviderRule({ cidr: `203.0.${block}.0/24`, protocol: 'tcp', fromPort: 1, toPort: 65535 })).id;
          return null;
        },
        commit() {
          model.providerRules.push(ruleId);
        },
      };
    }
  }
}

// ---------------------------------------------------------- the concern model

/**
 * Replays the change log (in seq order) over the initial data and says, for
 * each change, which hosts' rulesets it changes:
 *
 *   rules of g                         hosts with a member of g (they hold g's chains)
 *   instance created/deleted/updated   its host (and previous host), and the hosts with a
 *                                      member of a group whose rules name a group the
 *                                      instance joined or left (their chains list its address)
 *   provider rules                     every host
 *
 * Computed on the state just before the change; the instance's own host(s)
 * are always included, which covers what the change itself adds.
 */
export class ConcernModel {
  readonly #allHosts: string[];
  readonly #instances = new Map<string, { host: string; groups: string[] }>();
  /** group -> host -> members there */
  readonly #memberHosts = new Map<string, Map<string, number>>();
  /** remote group -> referring group -> rules */
  readonly #referrers = new Map<string, Map<string, number>>();
  /** rule effects of bench writes, per group, in commit order */
  readonly #ruleEffects = new Map<string, RuleEffect[]>();
  unmatchedRuleChanges = 0;

  constructor(allHosts: string[]) {
    this.#allHosts = allHosts;
  }

  addInstance(id: string, host: string, groups: string[]): void {
    this.#instances.set(id, { host, groups });
    for (const g of groups) bump(this.#memberHosts, g, host, 1);
  }

  addReference(group: string, remote: string, delta = 1): void {
    bump(this.#referrers, remote, group, delta);
  }

  queueRuleEffect(effect: RuleEffect): void {
    const list = this.#ruleEffects.get(effect.groupId) ?? [];
    list.push(effect);
    this.#ruleEffects.set(effect.groupId, list);
  }

  #hostsOf(group: string, into: Set<string>): void {
    for (const [host, n] of this.#memberHosts.get(group) ?? []) if (n > 0) into.add(host);
  }

  #referringHosts(groups: readonly string[], into: Set<string>): void {
    for (const g of groups) {
      for (const [referrer, n] of this.#referrers.get(g) ?? []) if (n > 0) this.#hostsOf(referrer, into);
    }
  }

  /** The hosts the change concerns; then the change is applied to the model. */
  process(change: Change): Set<string> {
    const hosts = new Set<string>();
    switch (change.kind) {
      case 'rules':
      case 'group-deleted': {
        this.#hostsOf(change.groupId, hosts);
        const effect = this.#ruleEffects.get(change.groupId)?.shift();
        if (!effect) {
          this.unmatchedRuleChanges++;
        } else if (effect.remoteGroupId !== null) {
          this.addReference(change.groupId, effect.remoteGroupId, effect.op === 'add' ? 1 : -1);
        }
        break;
      }
      case 'instance-created':
        hosts.add(change.host);
        this.#referringHosts(change.groups, hosts);
        this.addInstance(change.instanceId, change.host, change.groups);
        break;
      case 'instance-deleted': {
        hosts.add(change.host);
        this.#referringHosts(change.groups, hosts);
        const before = this.#instances.get(change.instanceId);
        for (const g of before?.groups ?? change.groups) bump(this.#memberHosts, g, before?.host ?? change.host, -1);
        this.#instances.delete(change.instanceId);
        break;
      }
      case 'instance-updated': {
        hosts.add(change.host);
        hosts.add(change.previousHost);
        this.#referringHosts(change.membershipChanged, hosts);
        const before = this.#instances.get(change.instanceId);
        if (before) for (const g of before.groups) bump(this.#memberHosts, g, before.host, -1);
        this.addInstance(change.instanceId, change.host, change.groups);
        break;
      }
      case 'provider-rules':
        for (const h of this.#allHosts) hosts.add(h);
        break;
    }
    return hosts;
  }
}

function bump(map: Map<string, Map<string, number>>, a: string, b: string, delta: number): void {
  let inner = map.get(a);
  if (!inner) map.set(a, (inner = new Map()));
  inner.set(b, (inner.get(b) ?? 0) + delta);
}
