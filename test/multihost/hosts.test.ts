/**
 * Many hosts on one PostgreSQL: three compute hosts (h1, h2, h3: a host
 * namespace each, with its own bridge and subnet 10.<i>.0.0/24), routed to one
 * another through a core switch; one `virtfw api` and one `virtfw agent` per
 * host, all in the root namespace on one database schema, each agent applying
 * its rules inside its host's namespace (`--netns`). Driven only through the
 * CLI; real packets cross hosts, so the sender's host filters its egress and
 * the receiver's host its ingress (routed traffic reaches an instance's chain
 * by destination address).
 *
 *   h1: a1 (web)  d1 (db)      web: tcp/80 from anywhere
 *   h2: b2 (db)   w2 (web)     db:  tcp/8000 from members of web (any host)
 *   h3: c3 (quiet)  [n3]       quiet: no ingress rules
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ensureBuilt, within } from '../helpers/cli.js';
import {
  Fabric,
  settledTable,
  processReport,
  quick,
  reach,
  startAgent,
  startApi,
  stopAllProcesses,
  virtfw,
  virtfwJson,
  type VirtfwProcess,
  type Vm,
} from '../helpers/multihost.js';
import { PG_TEST_URL, dropSchemas, uniqueSchema } from '../helpers/pg.js';

const HOSTS = ['h1', 'h2', 'h3'];

/** Measured timings, printed when VIRTFW_TEST_TIMINGS is set. */
function note(text: string): void {
  if (process.env.VIRTFW_TEST_TIMINGS) console.info(`[hosts] ${text}`);
}

interface StatusView {
  host: string;
  lastError: string | null;
  appliedSeq: number;
  updatedAt?: string | null;
  instances: { instanceId: string; filtered: boolean; lastError: string | null }[];
}

describe('many hosts on one PostgreSQL, through the CLI', () => {
  const schema = uniqueSchema('mhosts');
  const db = `${PG_TEST_URL}?schema=${schema}&pool=3`;
  let fabric: Fabric | undefined;
  let api: VirtfwProcess;
  const agents = new Map<string, VirtfwProcess>();
  const vm: Record<string, Vm> = {};
  const ids: Record<string, string> = {};
  const groups: Record<string, string> = {};

  const v = (...args: string[]) => virtfw(api.url, args);
  const json = <T>(...args: string[]) => virtfwJson<T>(api.url, args);
  const createInstance = async (name: string, group: string) => {
    const x = vm[name] as Vm;
    const body = await json<{ id: string; host: string }>(
      'instance', 'create', '--name', name, '--host', x.host.name, '--group', group, '--network-info', JSON.stringify(x.nwinfo),
    );
    expect(body.host).toBe(x.host.name);
    ids[name] = body.id;
  };
  const save = (host: string) => fabric?.host(host).must(['iptables-save', '-t', 'filter']) ?? Promise.resolve('');
  /** Does host's kernel name the address (in a rule, or in an ipset of a group's members)? */
  const names = (host: string, address: string) => fabric?.host(host).names(address) ?? Promise.resolve(false);

  beforeAll(async () => {
    ensureBuilt();
    fabric = await Fabric.create(HOSTS);
    const [h1, h2, h3] = fabric.hosts as [Fabric['hosts'][number], Fabric['hosts'][number], Fabric['hosts'][number]];
    vm.a1 = await h1.vm('a1', 10);
    vm.d1 = await h1.vm('d1', 11);
    vm.b2 = await h2.vm('b2', 20);
    vm.w2 = await h2.vm('w2', 21);
    vm.c3 = await h3.vm('c3', 30);
    vm.n3 = await h3.vm('n3', 31); // its instance is created by a test
    await h1.serve(vm.a1, vm.d1);
    await h2.serve(vm.b2, vm.w2);
    await h3.serve(vm.c3, vm.n3);
    api = await startApi(db); // migrates the schema before the agents start
    await Promise.all(
      fabric.hosts.map(async (h) => agents.set(h.name, await startAgent({ host: h.name, db, netns: h.ns }))),
    );
  }, 90_000);

  // A failed test shows what the processes said.
  beforeEach(({ onTestFailed }) => {
    onTestFailed(() => console.error(processReport()));
  });

  afterAll(async () => {
    await stopAllProcesses();
    await fabric?.destroy();
    await dropSchemas([schema]);
  });

  it('instances on different hosts reach each other only as their groups allow', async () => {
    for (const name of ['web', 'db', 'quiet']) groups[name] = (await json<{ id: string }>('group', 'create', name)).id;
    const { web, db, quiet } = groups as Record<'web' | 'db' | 'quiet', string>;
    await Promise.all([
      v('rule', 'create', '--group', web, '--protocol', 'tcp', '--port', '80'),
      v('rule', 'create', '--group', db, '--protocol', 'tcp', '--port', '8000', '--remote-group', web),
    ]);
    await Promise.all([createInstance('a1', web), createInstance('d1', db), createInstance('b2', db), createInstance('w2', web)]);
    await createInstance('c3', quiet);

    const { a1, d1, b2, w2, c3 } = vm as Record<string, Vm>;
    if (!a1 || !d1 || !b2 || !w2 || !c3) throw new Error('vms missing');
    // The last instance created is on h3; wait for its host to filter it.
    await within(3000, false, quick(a1, c3.ip, 80), 'a1 -> c3:80 (quiet: no ingress)');
    await within(3000, true, quick(a1, b2.ip, 8000), 'a1@h1 -> b2@h2 :8000');
    await within(3000, true, quick(w2, d1.ip, 8000), 'w2@h2 -> d1@h1 :8000');
    const paths = {
      'a1@h1 -> b2@h2 :8000 (db allows web members; cross-host)': reach(a1, b2.ip, 8000),
      'w2@h2 -> d1@h1 :8000 (db allows web members; cross-host)': reach(w2, d1.ip, 8000),
      'a1@h1 -> d1@h1 :8000 (same host, bridged)': reach(a1, d1.ip, 8000),
      'c3@h3 -> b2@h2 :8000 (c3 is not in web)': reach(c3, b2.ip, 8000),
      'b2@h2 -> d1@h1 :8000 (b2 is in db, not web)': reach(b2, d1.ip, 8000),
      'c3@h3 -> a1@h1 :80 (web: from anywhere)': reach(c3, a1.ip, 80),
      'c3@h3 -> w2@h2 :80 (web: from anywhere)': reach(c3, w2.ip, 80),
      'c3@h3 -> a1@h1 :81 (no rule)': reach(c3, a1.ip, 81),
      'a1@h1 -> b2@h2 :80 (db has no port 80)': reach(a1, b2.ip, 80),
      'a1@h1 -> c3@h3 :80 (quiet: no ingress)': reach(a1, c3.ip, 80),
    };
    const expected = {
      'a1@h1 -> b2@h2 :8000 (db allows web members; cross-host)': true,
      'w2@h2 -> d1@h1 :8000 (db allows web members; cross-host)': true,
      'a1@h1 -> d1@h1 :8000 (same host, bridged)': true,
      'c3@h3 -> b2@h2 :8000 (c3 is not in web)': false,
      'b2@h2 -> d1@h1 :8000 (b2 is in db, not web)': false,
      'c3@h3 -> a1@h1 :80 (web: from anywhere)': true,
      'c3@h3 -> w2@h2 :80 (web: from anywhere)': true,
      'c3@h3 -> a1@h1 :81 (no rule)': false,
      'a1@h1 -> b2@h2 :80 (db has no port 80)': false,
      'a1@h1 -> c3@h3 :80 (quiet: no ingress)': false,
    };
    expect(await settledTable(paths, expected)).toEqual(expected);
    // Each host's rules name the members of web on every host, and only its own instances' devices.
    expect(await names('h1', w2.ip)).toBe(true);
    expect(await names('h2', a1.ip)).toBe(true);
    expect(await names('h1', c3.ip)).toBe(false);
    expect(await save('h1')).not.toContain('tap-b2');
    expect(await save('h3')).not.toContain('tap-a1');
  });

  it('moving an instance between groups on h1 changes what h2 allows within 1 s', async () => {
    const { a1, b2, c3 } = vm as Record<string, Vm>;
    if (!a1 || !b2 || !c3) throw new Error('vms missing');
    await v('instance', 'update', ids.a1 as string, '--group', groups.quiet as string);
    const left = await within(1000, false, quick(a1, b2.ip, 8000), 'a1 -> b2:8000 after a1 left web');
    expect(left).toBeLessThan(1000);
    expect(await names('h2', a1.ip)).toBe(false);
    expect(await reach(c3, a1.ip, 80)()).toBe(false); // h1 itself: a1 no longer takes web's port 80

    await v('instance', 'update', ids.a1 as string, '--group', groups.web as string);
    const back = await within(1000, true, quick(a1, b2.ip, 8000), 'a1 -> b2:8000 after a1 rejoined web');
    expect(back).toBeLessThan(1000);
    note(`h2 followed a1 leaving web in ${Math.round(left)} ms, rejoining in ${Math.round(back)} ms`);
    expect(await names('h2', a1.ip)).toBe(true);
  });

  it("an instance created on h3 in a group h1's rules name changes h1's rules within 1 s", async () => {
    const { n3, d1, b2 } = vm as Record<string, Vm>;
    if (!n3 || !d1 || !b2) throw new Error('vms missing');
    expect(await reach(n3, d1.ip, 8000)()).toBe(false);
    expect(await names('h1', n3.ip)).toBe(false);
    await createInstance('n3', groups.web as string);
    const ms = await within(1000, true, quick(n3, d1.ip, 8000), 'n3@h3 -> d1@h1 :8000 after n3 joined web');
    expect(ms).toBeLessThan(1000);
    note(`h1 followed n3 created on h3 in ${Math.round(ms)} ms`);
    expect(await names('h1', n3.ip)).toBe(true);
    // and h2's db member too
    await within(1000, true, quick(n3, b2.ip, 8000), 'n3@h3 -> b2@h2 :8000');
  });

  it('`virtfw status --host` and `virtfw agents` report every host with its own instances filtered', async () => {
    const expected: Record<string, string[]> = {
      h1: [ids.a1, ids.d1].map(String).sort(),
      h2: [ids.b2, ids.w2].map(String).sort(),
      h3: [ids.c3, ids.n3].map(String).sort(),
    };
    const filtered = (s: StatusView) => s.instances.filter((i) => i.filtered).map((i) => i.instanceId).sort();
    // Agents report at most once a second: wait for reports that include the last change.
    let agents: StatusView[];
    const deadline = Date.now() + 5000;
    for (;;) {
      agents = await json<StatusView[]>('agents');
      const byHost = Object.fromEntries(agents.map((a) => [a.host, filtered(a)]));
      if (JSON.stringify(byHost) === JSON.stringify(expected) || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(Object.fromEntries(agents.map((a) => [a.host, filtered(a)]))).toEqual(expected);
    for (const a of agents) {
      expect(a.lastError).toBeNull();
      expect(a.instances.every((i) => i.filtered && i.lastError === null)).toBe(true);
      expect(a.updatedAt).toMatch(/^\d{4}-/);
    }

    const h2 = await json<StatusView>('status', '--host', 'h2');
    expect(h2.host).toBe('h2');
    expect(h2.lastError).toBeNull();
    expect(h2.instances.map((i) => i.instanceId).sort()).toEqual(expected.h2);
    expect(h2.instances.every((i) => i.filtered)).toBe(true);

    // The tables people read.
    const table = (await v('agents')).stdout;
    for (const host of HOSTS) expect(table).toMatch(new RegExp(`\\b${host}\\b`));
    const status = (await v('status', '--host', 'h2')).stdout;
    expect(status).toMatch(/^host h2: last apply \d{4}-/);
    expect(status).toContain(ids.b2 as string);
    expect(status).not.toContain(ids.a1 as string);
  });
});
