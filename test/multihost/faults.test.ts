/**
 * Faults around the host agent, with real processes, a real PostgreSQL and
 * real packets. Every test builds its own compute host(s) (a host namespace
 * with a bridge; instances x, y; an unfiltered namespace o on the same bridge
 * that probes them), its own database (a schema of the shared server, or a
 * private cluster when PostgreSQL itself is stopped), its own `virtfw api`
 * and agent(s) in the root namespace (`--netns` into the host), and removes
 * all of it afterwards, failed or not.
 *
 * "The kernel's ruleset" below is the canonical `iptables-save -t filter`
 * (and `ip6tables-save`) of the host namespace: counters zeroed, chains
 * sorted, each chain's rules in order (see canonicalFilter); "nothing
 * changed" checks also compare the namespace's ipsets and virtfw's nftables
 * bridge table.
 *
 * Run with VIRTFW_TEST_TIMINGS=1 to see the measured delays.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Names } from '../../src/render/names.js';
import { openStore } from '../../src/store/open.js';
import { ensureBuilt, within } from '../helpers/cli.js';
import {
  ComputeHost,
  RestoreWrapper,
  allowTcp,
  createGroup,
  createInstance,
  http,
  httpOk,
  metric,
  probeTable,
  processCount,
  processReport,
  quick,
  reach,
  setGroups,
  settledTable,
  sleep,
  startAgent,
  startApi,
  stopAllProcesses,
  until,
  virtfwJson,
  type AgentOptions,
  type KernelState,
  type VirtfwProcess,
  type Vm,
} from '../helpers/multihost.js';
import { PG_TEST_URL, dropSchemas, uniqueSchema } from '../helpers/pg.js';
import { PrivatePostgres } from '../helpers/private-pg.js';
import { pidAlive } from '../helpers/topology.js';

const names = new Names('virtfw');

interface StatusView {
  host: string;
  lastError: string | null;
  appliedSeq: number;
  instances: { instanceId: string; filtered: boolean; lastError: string | null }[];
}

/** One compute host with two instances' namespaces (x, y) and an unfiltered prober (o) on its bridge. */
interface Site {
  host: ComputeHost;
  x: Vm;
  y: Vm;
  o: Vm;
}

// -------------------------------------------------------------- clean-up

const cleanups: (() => unknown)[] = [];
/** Runs after the test, failed or not, in reverse order of registration. */
const defer = (fn: () => unknown) => cleanups.push(fn);

afterEach(async () => {
  const errors: unknown[] = [];
  for (const fn of cleanups.splice(0).reverse()) {
    try {
      await fn();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length) throw errors[0];
});

afterAll(async () => {
  await stopAllProcesses();
});

beforeAll(() => {
  ensureBuilt();
});

// A failed test shows what its processes said.
beforeEach(({ onTestFailed }) => {
  const since = processCount();
  onTestFailed(() => console.error(processReport(since)));
});

// --------------------------------------------------------------- builders

async function site(name = 'h1', index = 1): Promise<Site> {
  const host = await ComputeHost.create(name, index);
  defer(() => host.destroy());
  const x = await host.vm('x', 10);
  const y = await host.vm('y', 11);
  const o = await host.vm('o', 99); // never an instance: unfiltered
  await host.serve(x, y);
  return { host, x, y, o };
}

/** A fresh schema of the shared server, dropped after the test (after the processes using it stopped). */
function sharedDb(tag: string): string {
  const schema = uniqueSchema(tag);
  defer(() => dropSchemas([schema]));
  return `${PG_TEST_URL}?schema=${schema}&pool=3`;
}

async function api(db: string, name?: string): Promise<VirtfwProcess> {
  const p = await startApi(db, name);
  defer(() => p.stop());
  return p;
}

async function agent(o: AgentOptions): Promise<VirtfwProcess> {
  const p = await startAgent(o);
  defer(() => p.stop());
  return p;
}

/** Promise.all that waits for every promise (so each registers its clean-up) before it rejects. */
async function all<T extends readonly unknown[]>(...ps: { [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const settled = await Promise.allSettled(ps);
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return settled.map((r) => (r as PromiseFulfilledResult<unknown>).value) as unknown as T;
}

async function statusOf(url: string, host: string): Promise<StatusView> {
  return (await httpOk<{ status: StatusView }>(url, 'GET', `/v2.0/status?host=${host}`)).status;
}

/** The last lines of a log. */
function tail(log: string, lines: number): string {
  return log.trimEnd().split('\n').slice(-lines).join('\n');
}

/** Measured timings, printed when VIRTFW_TEST_TIMINGS is set. */
function note(text: string): void {
  if (process.env.VIRTFW_TEST_TIMINGS) console.info(`[faults] ${text}`);
}

/** How many chains two canonical dumps differ in. */
function changedChains(x: string, y: string): number {
  const [p, q] = [new Set(x.split('\n')), new Set(y.split('\n'))];
  const chains = new Set<string>();
  for (const l of [...[...p].filter((l) => !q.has(l)), ...[...q].filter((l) => !p.has(l))]) {
    const c = /^(?::|-A )(\S+)/.exec(l)?.[1];
    if (c) chains.add(c);
  }
  return chains.size;
}

function show(state: KernelState | { v4: string; v6: string }): string {
  return `--- v4\n${state.v4}\n--- v6\n${state.v6}`;
}

// ------------------------------------------------------------------ tests

describe('agents through faults', () => {
  it('PostgreSQL stopped while agents run and the API writes: the last ruleset stays in force, nobody crashes; restarted: agents reconnect and catch up, also after an agent restart', async () => {
    const pg = await PrivatePostgres.start();
    defer(() => pg.stop());
    const db = `${pg.url()}?pool=3`;
    const made = await all<[Site, Site, VirtfwProcess]>(site('h1', 1), site('h2', 2), api(db));
    const [s1, s2] = made;
    let a = made[2];
    const web = await createGroup(a.url, 'web');
    await allowTcp(a.url, web, 80);
    const agentOpts = (s: Site): AgentOptions => ({ host: s.host.name, db, netns: s.host.ns });
    const started = await all<[VirtfwProcess, VirtfwProcess]>(agent(agentOpts(s1)), agent(agentOpts(s2)));
    let ag1 = started[0];
    const ag2 = started[1];
    await createInstance(a.url, s1.x, [web]);
    await createInstance(a.url, s2.x, [web]);
    await within(3000, true, quick(s1.o, s1.x.ip, 80), 'o -> x@h1:80');
    await within(3000, true, quick(s2.o, s2.x.ip, 80), 'o -> x@h2:80');

    const allowed = { 'x@h1:80': true, 'x@h1:81': false, 'y@h1:80 (not an instance yet: unfiltered)': true, 'x@h2:80': true, 'x@h2:81': false };
    const paths = {
      'x@h1:80': reach(s1.o, s1.x.ip, 80),
      'x@h1:81': reach(s1.o, s1.x.ip, 81),
      'y@h1:80 (not an instance yet: unfiltered)': reach(s1.o, s1.y.ip, 80),
      'x@h2:80': reach(s2.o, s2.x.ip, 80),
      'x@h2:81': reach(s2.o, s2.x.ip, 81),
    };
    const table = () => probeTable(paths);
    expect(await settledTable(paths, allowed)).toEqual(allowed);
    const before1 = await s1.host.snapshot();
    const before2 = await s2.host.snapshot();

    // The API is busy writing when PostgreSQL goes away (renaming an instance of a host without an agent).
    const busy = await httpOk<{ instance: { id: string } }>(a.url, 'POST', '/v2.0/instances', { instance: { name: 'busy', host: 'h9', security_groups: [web] } }, 201);
    let writing = true;
    let written = 0;
    const writers = Array.from({ length: 4 }, async (_, i) => {
      for (let n = 0; writing; n++) {
        const r = await http(a.url, 'PUT', `/v2.0/instances/${busy.instance.id}`, { instance: { name: `busy-${i}-${n}` } }).catch(() => ({ status: 0 }));
        if (r.status === 200) written += 1;
        else await sleep(50);
      }
    });
    await until(5000, () => written >= 20, 'the API is writing');

    // ---- outage: nothing flushed, packets as before, the agents know the store is gone
    pg.stopServer();
    const outageStarted = performance.now();
    await sleep(1000);
    writing = false;
    await Promise.all(writers);
    let checks = 0;
    while (performance.now() - outageStarted < 4500) {
      expect(await s1.host.snapshot()).toEqual(before1);
      expect(await s2.host.snapshot()).toEqual(before2);
      expect(await table()).toEqual(allowed);
      checks += 1;
      await sleep(400);
    }
    expect(checks).toBeGreaterThanOrEqual(2);
    // Nobody dies of it. (Soft: a process that died is replaced after the outage, so the rest is still checked.)
    const dead = [a, ag1, ag2].filter((p) => !p.running());
    expect
      .soft(dead.map((p) => p.name), `died when PostgreSQL went away:\n${dead.map((p) => `==== ${p.name}\n${tail(p.log(), 30)}`).join('\n')}`)
      .toEqual([]);
    const survivors = [ag1, ag2].filter((p) => p.running());
    for (const ag of survivors) {
      const health = await http<{ status: string; reason?: string }>(ag.url, 'GET', '/healthz');
      expect(health.status).toBe(503);
      // Failed attempts are retried with a growing delay.
      const delays = ag.records('agent apply failed; previous ruleset kept').map((r) => Number(r.retryInMs));
      expect(delays.length, ag.log()).toBeGreaterThanOrEqual(2);
      expect(delays.every((d, i) => i === 0 || d > (delays[i - 1] as number))).toBe(true);
    }

    // ---- back: a change committed right away reaches both kernels within a few seconds
    pg.startAgain();
    const restarted = performance.now();
    if (!a.running()) a = await api(db);
    if (!ag1.running()) ag1 = await agent(agentOpts(s1));
    if (!ag2.running()) await agent(agentOpts(s2));
    await allowTcp(a.url, web, 81);
    const ms1 = await within(10_000, true, quick(s1.o, s1.x.ip, 81), 'o -> x@h1:81 after the restart');
    const ms2 = await within(10_000, true, quick(s2.o, s2.x.ip, 81), 'o -> x@h2:81 after the restart');
    for (const ag of survivors) await ag.waitForLog(/"msg":"change listener reconnected"/, 15_000);
    await until(5000, async () => (await http(ag1.url, 'GET', '/healthz')).status === 200, 'agent h1 healthy again');
    await until(5000, async () => (await statusOf(a.url, 'h1')).lastError === null, 'h1 reports no error');
    note(`after PostgreSQL restart: h1 in ${Math.round(ms1)} ms, h2 in ${Math.round(ms2)} ms (restart->both: ${Math.round(performance.now() - restarted)} ms); died: ${dead.map((p) => p.name).join(', ') || 'none'}`);

    // ---- a change committed while an agent is stopped is caught up when it starts again
    await ag1.stop();
    const stopped1 = await s1.host.snapshot();
    const yId = await createInstance(a.url, s1.y, [web]);
    await allowTcp(a.url, web, 8000);
    await within(2000, true, quick(s2.o, s2.x.ip, 8000), 'o -> x@h2:8000 (h2 agent runs)');
    expect(await reach(s1.o, s1.x.ip, 8000)()).toBe(false);
    expect(await s1.host.snapshot()).toEqual(stopped1); // nobody touched h1 meanwhile
    ag1 = await agent(agentOpts(s1));
    expect(
      await probeTable({
        'x@h1:8000 (rule added while stopped)': reach(s1.o, s1.x.ip, 8000),
        'y@h1:80 (instance created while stopped)': reach(s1.o, s1.y.ip, 80),
        'y@h1:81': reach(s1.o, s1.y.ip, 81),
        'y@h1:22 (no rule: now filtered)': reach(s1.o, s1.y.ip, 22),
      }),
    ).toEqual({
      'x@h1:8000 (rule added while stopped)': true,
      'y@h1:80 (instance created while stopped)': true,
      'y@h1:81': true,
      'y@h1:22 (no rule: now filtered)': false,
    });
    // Both agents end at the same place in the change log.
    await until(
      5000,
      async () => {
        const [r1, r2] = await Promise.all([statusOf(a.url, 'h1'), statusOf(a.url, 'h2')]);
        return r1.appliedSeq > 0 && r1.appliedSeq === r2.appliedSeq && r1.instances.some((i) => i.instanceId === yId && i.filtered);
      },
      'h1 and h2 report the same applied change',
    );
  });

  it('an agent SIGKILLed in the middle of an apply leaves each family whole, never unprotected; restarted, it converges', async () => {
    /*
     * What "never a mix" means for iptables: each family's apply is ONE
     * `iptables-restore --noflush` (`ip6tables-restore`) run, i.e. one
     * nf_tables transaction: the kernel holds that family's old ruleset or
     * its new one, never part of each. IPv4, IPv6 and the nftables bridge
     * table are separate transactions, so right after a crash IPv4 may be new
     * while IPv6 is still old: that is allowed; a family half-written is not.
     *
     * The restores are made slow (a stand-in sleeps 1.5 s, then execs the real
     * tool on the same stdin) and the agent is SIGKILLed while one sleeps:
     *  1. the agent and its restores die together (systemd killing the
     *     unit's cgroup): nothing of the new ruleset reaches the kernel;
     *  2. only the agent dies (the OOM killer): the orphaned restore goes on
     *     with the input it was given, and completes it or nothing.
     * Throughout, the kernel is sampled and a probe every state blocks runs.
     */
    const db = sharedDb('kill9');
    const [s, a] = await all<[Site, VirtfwProcess]>(site(), api(db));
    const [A, B, C] = (await Promise.all([createGroup(a.url, 'A'), createGroup(a.url, 'B'), createGroup(a.url, 'C')])) as [string, string, string];
    await allowTcp(a.url, A, 80);
    await allowTcp(a.url, B, 8000);
    await allowTcp(a.url, C, 8001);
    const xId = await createInstance(a.url, s.x, [A]);
    await createInstance(a.url, s.y, [A]);
    const wrapper = new RestoreWrapper();
    defer(() => wrapper.remove());
    const opts: AgentOptions = { host: 'h1', db, netns: s.host.ns, resyncSeconds: 0 };
    let ag = await agent({ ...opts, pathFirst: wrapper.dir });
    expect(await reach(s.o, s.x.ip, 80)()).toBe(true);
    const state = async () => ({ v4: await s.host.filter(4), v6: await s.host.filter(6) });
    const initial = await state();

    const crash = async (
      phase: string,
      change: () => Promise<unknown>,
      killRestores: boolean,
      converged: () => Promise<boolean>,
      restartWith: AgentOptions,
    ) => {
      const before = await state();
      // Sample the kernel, and probe what every state blocks, continuously.
      let sampling = true;
      const samples: { v4: string; v6: string }[] = [];
      let sampleErrors = 0;
      const leaks: string[] = [];
      let rounds = 0;
      const sampler = (async () => {
        while (sampling) {
          try {
            samples.push(await state());
          } catch {
            sampleErrors += 1;
          }
        }
      })();
      const prober = (async () => {
        while (sampling) {
          const r = await probeTable({ 'x:81': reach(s.o, s.x.ip, 81, 500), 'y:81': reach(s.o, s.y.ip, 81, 500), 'y:8000': reach(s.o, s.y.ip, 8000, 500) });
          rounds += 1;
          for (const [k, open] of Object.entries(r)) if (open) leaks.push(k);
        }
      })();
      try {
        wrapper.setDelay(1.5);
        await change();
        await until(5000, () => wrapper.started().length > 0, `${phase}: a delayed restore started`);
        const inFlight = wrapper.started().filter((r) => pidAlive(r.pid));
        expect(inFlight.length, `${phase}: a restore in flight at the kill`).toBeGreaterThan(0);
        await ag.kill9();
        if (killRestores) {
          // Every restore the agent had started by then (another family's may have been spawned a moment
          // after the first marker): each is still in its sleep, before the real tool runs.
          await sleep(500);
          for (const r of wrapper.started()) if (pidAlive(r.pid)) process.kill(r.pid, 'SIGKILL');
        }
        await wrapper.settle(5000); // an orphan finishes by itself
        const afterKill = await state();
        wrapper.setDelay(null);
        wrapper.clearMarkers();
        await sleep(200);

        ag = await agent(restartWith);
        await until(3000, converged, `${phase}: converged after the restart`);
        const after = await state();
        sampling = false;
        await Promise.all([sampler, prober]);

        const whole = (x: { v4: string; v6: string }) => ({
          v4: x.v4 === before.v4 ? 'old' : x.v4 === after.v4 ? 'new' : 'MIXED',
          v6: x.v6 === before.v6 ? 'old' : x.v6 === after.v6 ? 'new' : 'MIXED',
        });
        const k = whole(afterKill);
        expect(k.v4, `${phase}: IPv4 right after the kill:\n${show(afterKill)}`).not.toBe('MIXED');
        expect(k.v6, `${phase}: IPv6 right after the kill:\n${show(afterKill)}`).not.toBe('MIXED');
        if (killRestores) expect(k, `${phase}: nothing of the new ruleset without its restores`).toEqual({ v4: 'old', v6: 'old' });
        const firstMixed = samples.find((x) => whole(x).v4 === 'MIXED' || whole(x).v6 === 'MIXED');
        expect(firstMixed, firstMixed ? `${phase}: a sample neither old nor new:\n${show(firstMixed)}` : '').toBeUndefined();
        expect(samples.length).toBeGreaterThan(10);
        expect(sampleErrors).toBeLessThan(samples.length);
        expect(leaks, `${phase}: probes that got through (${rounds} rounds)`).toEqual([]);
        expect(rounds).toBeGreaterThan(3);
        note(
          `kill -9 mid-apply (${phase}): right after: v4 ${k.v4}, v6 ${k.v6}; ${samples.length} kernel samples, ${rounds} probe rounds, ${sampleErrors} failed saves`,
        );
        return { before, after };
      } finally {
        sampling = false;
        await Promise.all([sampler, prober]);
      }
    };

    // 1. x leaves A for B and C (its two chains and four new group chains per family, one batch); the agent
    //    dies with its restores. It comes back behind the stand-in (doing nothing now) for the next round.
    const one = await crash('agent and its restores', () => setGroups(a.url, xId, [B, C]), true, () => reach(s.o, s.x.ip, 8000)(), {
      ...opts,
      pathFirst: wrapper.dir,
    });
    expect(one.after.v4).not.toBe(initial.v4);
    expect(one.after.v6).not.toBe(initial.v6);
    expect(changedChains(initial.v4, one.after.v4)).toBeGreaterThanOrEqual(4);
    expect(
      await probeTable({ 'x:80 (left A)': reach(s.o, s.x.ip, 80), 'x:8001 (C)': reach(s.o, s.x.ip, 8001), 'y:80 (A)': reach(s.o, s.y.ip, 80) }),
    ).toEqual({ 'x:80 (left A)': false, 'x:8001 (C)': true, 'y:80 (A)': true });

    // 2. x goes back to A, and only the agent dies: its orphaned restore goes on alone. Restarted without the stand-in.
    const two = await crash('agent only', () => setGroups(a.url, xId, [A]), false, async () => !(await quick(s.o, s.x.ip, 8000)()), opts);
    // Back in A alone: exactly the first ruleset again.
    expect(two.after).toEqual(initial);
    expect(await probeTable({ 'x:80 (A)': reach(s.o, s.x.ip, 80), 'x:8001': reach(s.o, s.x.ip, 8001) })).toEqual({ 'x:80 (A)': true, 'x:8001': false });
  });

  it('iptables-restore failing: the previous ruleset stays, the error is reported, and the change lands once restore works', async () => {
    const db = sharedDb('fail');
    const [s, a] = await all<[Site, VirtfwProcess]>(site(), api(db));
    const A = await createGroup(a.url, 'A');
    await allowTcp(a.url, A, 80);
    const xId = await createInstance(a.url, s.x, [A]);
    const wrapper = new RestoreWrapper();
    defer(() => wrapper.remove());
    const ag = await agent({ host: 'h1', db, netns: s.host.ns, resyncSeconds: 0, pathFirst: wrapper.dir });
    expect(await reach(s.o, s.x.ip, 80)()).toBe(true);
    const before = await s.host.snapshot();
    const errorsBefore = await metric(ag.url, 'virtfw_apply_errors_total');

    const message = 'injected failure: restore refused by the test';
    wrapper.setFailure(message);
    await allowTcp(a.url, A, 81);
    await until(5000, async () => (await statusOf(a.url, 'h1')).lastError?.includes(message) === true, 'lastError reported');

    // Through the CLI, as an operator sees it.
    const status = await virtfwJson<StatusView>(a.url, ['status', '--host', 'h1']);
    expect(status.lastError).toContain(message);
    expect(status.lastError).toContain('previous ruleset kept');
    // x's rules are the ones that failed (its group's new rule): its own line says so too.
    expect(status.instances.find((i) => i.instanceId === xId)?.lastError ?? '', "x's own status carries the error").toContain(message);
    expect(await metric(ag.url, 'virtfw_apply_errors_total')).toBeGreaterThan(errorsBefore);
    expect((await http(ag.url, 'GET', '/healthz')).status).toBe(503);

    expect(await s.host.snapshot()).toEqual(before);
    expect(await probeTable({ 'x:80': reach(s.o, s.x.ip, 80), 'x:81 (new rule: not applied)': reach(s.o, s.x.ip, 81) })).toEqual({
      'x:80': true,
      'x:81 (new rule: not applied)': false,
    });
    await sleep(1500); // a few retries fail too
    expect(await s.host.snapshot()).toEqual(before);
    const attempts = ag.records('agent apply failed; previous ruleset kept').length;
    expect(attempts).toBeGreaterThanOrEqual(2);

    wrapper.setFailure(null);
    const ms = await within(15_000, true, quick(s.o, s.x.ip, 81), 'o -> x:81 once restore works');
    await until(5000, async () => (await statusOf(a.url, 'h1')).lastError === null, 'lastError cleared');
    expect((await http(ag.url, 'GET', '/healthz')).status).toBe(200);
    note(`restore failing: ${attempts} failed attempts; applied ${Math.round(ms)} ms after the failure was lifted`);
  });

  it('drift: a flushed instance chain and a deleted hook rule are back within one resync period, logged and counted', async () => {
    const db = sharedDb('drift');
    const [s, a] = await all<[Site, VirtfwProcess]>(site(), api(db));
    const A = await createGroup(a.url, 'A');
    await allowTcp(a.url, A, 80);
    const xId = await createInstance(a.url, s.x, [A]);
    await createInstance(a.url, s.y, [A]);
    const ag = await agent({ host: 'h1', db, netns: s.host.ns, resyncSeconds: 2 });
    expect(await probeTable({ 'x:80': reach(s.o, s.x.ip, 80), 'x:81': reach(s.o, s.x.ip, 81) })).toEqual({ 'x:80': true, 'x:81': false });
    // Let a periodic resync pass on the intact kernel: it must repair nothing.
    await sleep(2200);
    const before = await s.host.snapshot();
    const repairsBefore = await metric(ag.url, 'virtfw_drift_repairs_total');
    expect(ag.records('repaired drift in the kernel')).toEqual([]);

    const ingress = names.instanceIngress(xId);
    await s.host.must(['iptables', '-F', ingress]);
    await s.host.must(['iptables', '-D', 'FORWARD', '-m', 'comment', '--comment', `${names.commentTag}hook`, '-j', names.forward]);
    const drifted = performance.now();
    const ms = await until(2000 + 1500, async () => (await s.host.filter(4)) === before.v4, 'IPv4 ruleset repaired', 100);
    expect(await s.host.snapshot()).toEqual(before);
    await ag.waitForLog(/"msg":"repaired drift in the kernel"/, 2000);
    // One repair of both, or (if a resync fell between the two commands) two.
    const logged = ag.records('repaired drift in the kernel');
    expect(logged.length).toBeGreaterThanOrEqual(1);
    for (const record of logged) expect(record).toMatchObject({ host: 'h1', level: 40 });
    expect(logged.reduce((n, r) => n + Number(r.repaired), 0)).toBeGreaterThanOrEqual(2); // the chain and the hook rule
    expect(await metric(ag.url, 'virtfw_drift_repairs_total')).toBeGreaterThanOrEqual(repairsBefore + 2);
    expect(
      await probeTable({ 'x:80': reach(s.o, s.x.ip, 80), 'x:81': reach(s.o, s.x.ip, 81), 'y:81': reach(s.o, s.y.ip, 81) }),
    ).toEqual({ 'x:80': true, 'x:81': false, 'y:81': false });
    note(`drift repaired ${Math.round(ms)} ms after it was made (period 2 s); ${Math.round(performance.now() - drifted)} ms to all checks`);
  });

  it('two API processes writing at once: one rule create wins, no instance update is lost, the kernel follows the last', async () => {
    const db = sharedDb('twoapi');
    const [s, a1, a2] = await all<[Site, VirtfwProcess, VirtfwProcess]>(site(), api(db, 'api-1'), api(db, 'api-2'));
    const apis = [a1.url, a2.url];
    const G = await Promise.all([8001, 8002, 8003, 8004].map(async (port) => {
      const id = await createGroup(a1.url, `g${port}`);
      await allowTcp(a2.url, id, port);
      return { id, port };
    }));
    const xId = await createInstance(a1.url, s.x, [(G[0] as { id: string }).id]);
    await agent({ host: 'h1', db, netns: s.host.ns });

    // ~40 identical creates, split across both APIs
    const rule = { security_group_id: (G[0] as { id: string }).id, direction: 'ingress', protocol: 'tcp', port_range_min: 9000, port_range_max: 9000 };
    const creates = await Promise.all(
      Array.from({ length: 40 }, (_, i) => http<{ NeutronError?: { type: string } }>(apis[i % 2] as string, 'POST', '/v2.0/security-group-rules', { security_group_rule: rule })),
    );
    const codes = creates.map((r) => r.status);
    expect(codes.filter((c) => c === 201)).toHaveLength(1);
    expect(codes.filter((c) => c === 409)).toHaveLength(39);
    expect(new Set(creates.filter((r) => r.status === 409).map((r) => r.body.NeutronError?.type))).toEqual(new Set(['SecurityGroupRuleExists']));
    const listed = await httpOk<{ security_group_rules: { port_range_min: number | null }[] }>(
      a2.url, 'GET', `/v2.0/security-group-rules?security_group_id=${(G[0] as { id: string }).id}`,
    );
    expect(listed.security_group_rules.filter((r) => r.port_range_min === 9000)).toHaveLength(1);

    // ~20 concurrent group changes of one instance, split across both APIs
    const r0 = (await httpOk<{ instance: { revision_number: number } }>(a1.url, 'GET', `/v2.0/instances/${xId}`)).instance.revision_number;
    const writes = Array.from({ length: 20 }, (_, i) => {
      const mask = (i % 15) + 1; // a non-empty subset of the four groups
      return G.filter((_g, k) => mask & (1 << k)).map((g) => g.id);
    });
    const puts = await Promise.all(
      writes.map((groups, i) => http<{ instance: { revision_number: number; security_groups: string[] } }>(apis[i % 2] as string, 'PUT', `/v2.0/instances/${xId}`, { instance: { security_groups: groups } })),
    );
    expect(puts.map((p) => p.status)).toEqual(writes.map(() => 200));
    const revisions = puts.map((p) => p.body.instance.revision_number).sort((p, q) => p - q);
    expect(revisions).toEqual(Array.from({ length: 20 }, (_, i) => r0 + 1 + i));
    const final = (await httpOk<{ instance: { revision_number: number; security_groups: string[] } }>(a2.url, 'GET', `/v2.0/instances/${xId}`)).instance;
    expect(final.revision_number).toBe(r0 + 20);
    const last = puts.find((p) => p.body.instance.revision_number === r0 + 20)?.body.instance;
    expect(final.security_groups).toEqual(last?.security_groups);
    expect(writes.map((w) => JSON.stringify(w))).toContain(JSON.stringify(final.security_groups));

    // The kernel ends with the final groups: x's ingress chain jumps to exactly their chains, and packets agree.
    const jumps = async () => {
      const chain = names.instanceIngress(xId);
      return (await s.host.filter(4))
        .split('\n')
        .filter((l) => l.startsWith(`-A ${chain} `))
        .map((l) => / -j (virtfw-gi\S+)/.exec(l)?.[1])
        .filter((c): c is string => c !== undefined)
        .sort();
    };
    const want = final.security_groups.map((g) => names.group(g, 'ingress')).sort();
    await until(3000, async () => JSON.stringify(await jumps()) === JSON.stringify(want), "x's ingress chain jumps to its final groups' chains");
    const expected = Object.fromEntries(G.map((g) => [`x:${g.port}`, final.security_groups.includes(g.id)]));
    expect(await probeTable(Object.fromEntries(G.map((g) => [`x:${g.port}`, reach(s.o, s.x.ip, g.port)])))).toEqual(expected);
  });

  it('missed notifications and a pruned change log: the agent notices the gap, resyncs fully and ends correct', async () => {
    const db = sharedDb('prune');
    const [s, a] = await all<[Site, VirtfwProcess]>(site(), api(db));
    const [A, B] = await Promise.all([createGroup(a.url, 'A'), createGroup(a.url, 'B')]);
    await allowTcp(a.url, A as string, 80);
    await allowTcp(a.url, B as string, 8000);
    const xId = await createInstance(a.url, s.x, [A as string]);
    const yId = await createInstance(a.url, s.y, [A as string]);
    const opts: AgentOptions = { host: 'h1', db, netns: s.host.ns, resyncSeconds: 0 };
    const ag = await agent(opts);
    const store = openStore(db);
    defer(() => store.close());
    expect(await reach(s.o, s.y.ip, 80)()).toBe(true);

    // 1. A running agent misses everything (frozen), and the log is pruned past it.
    process.kill(ag.pid, 'SIGSTOP');
    try {
      await allowTcp(a.url, A as string, 81);
      await setGroups(a.url, yId, [B as string]);
      await allowTcp(a.url, B as string, 8001);
      await sleep(50);
      expect(await store.pruneChanges(0)).toBeGreaterThan(0);
      expect(await store.oldestChangeSeq()).toBe(await store.latestChangeSeq());
    } finally {
      process.kill(ag.pid, 'SIGCONT');
    }
    await within(3000, true, quick(s.o, s.x.ip, 81), 'o -> x:81 after the gap');
    expect(
      await probeTable({ 'y:80 (left A)': reach(s.o, s.y.ip, 80), 'y:8000 (B)': reach(s.o, s.y.ip, 8000), 'y:8001 (B, new rule)': reach(s.o, s.y.ip, 8001) }),
    ).toEqual({ 'y:80 (left A)': false, 'y:8000 (B)': true, 'y:8001 (B, new rule)': true });
    expect(ag.records('change log no longer reaches back; full resync')).toHaveLength(1);

    // 2. A stopped agent: changes committed, the log pruned, then it starts.
    await ag.stop();
    await allowTcp(a.url, A as string, 8002);
    await setGroups(a.url, xId, [A as string, B as string]);
    await sleep(50);
    expect(await store.pruneChanges(0)).toBeGreaterThan(0);
    const latest = await store.latestChangeSeq();
    await agent(opts);
    expect(
      await probeTable({ 'x:8002 (new rule of A)': reach(s.o, s.x.ip, 8002), 'x:8000 (joined B)': reach(s.o, s.x.ip, 8000), 'x:22': reach(s.o, s.x.ip, 22) }),
    ).toEqual({ 'x:8002 (new rule of A)': true, 'x:8000 (joined B)': true, 'x:22': false });
    await until(5000, async () => (await statusOf(a.url, 'h1')).appliedSeq === latest, 'h1 reports the newest change applied');
  });
});
