/**
 * The store under concurrent writers: two Store instances in this process
 * (separate connections or pools) and, for the real thing, two more
 * processes, racing on one database. Nothing may be lost, duplicated or
 * numbered out of commit order; listeners of one store hear another's commits.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ConflictError } from '../../src/errors.js';
import type { Change, Store } from '../../src/store/store.js';
import { channelFor } from '../../src/store/postgres.js';
import { dropSchemas, pgQuery, uniqueSchema } from '../helpers/pg.js';
import type { ChildResult, ChildTask } from '../helpers/store-child.js';
import { DIALECTS, storeHarness, type StoreHarness } from '../helpers/store.js';

const run = promisify(execFile);
const CHILD = fileURLToPath(new URL('../helpers/store-child.ts', import.meta.url));

const newProject = (): string => `proj-${randomUUID()}`;

async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const start = Date.now();
  while (!(await condition())) {
    if (Date.now() - start > timeoutMs) throw new Error('timed out waiting');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function runChild(task: ChildTask): Promise<ChildResult> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', CHILD, JSON.stringify(task)], {
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
    timeout: 60_000,
  });
  return JSON.parse(stdout.trim().split('\n').at(-1) as string) as ChildResult;
}

type Updated = Extract<Change, { kind: 'instance-updated' }>;

/**
 * Replays an instance's logged updates from its first groups: each update
 * must have been applied to the state the previous one left (no lost
 * update), so its membershipChanged is exactly the difference.
 */
function replay(initial: string[], updates: Updated[]): string[] {
  let groups = initial;
  for (const update of updates) {
    const before = new Set(groups);
    const after = new Set(update.groups);
    const diff = [...update.groups.filter((g) => !before.has(g)), ...groups.filter((g) => !after.has(g))].sort();
    expect([...update.membershipChanged].sort()).toEqual(diff);
    groups = update.groups;
  }
  return groups;
}

for (const dialect of DIALECTS) {
  describe(`Store concurrency (${dialect})`, () => {
    let harness: StoreHarness;
    let a: Store;
    let b: Store;

    let setupError: unknown;

    beforeAll(async () => {
      harness = storeHarness(dialect, 'race');
      try {
        a = await harness.open();
        b = await harness.open();
      } catch (error) {
        setupError = error;
      }
    });

    // A database that cannot be reached fails every test: it never skips them.
    beforeEach(() => {
      if (setupError !== undefined) throw setupError;
    });

    afterAll(async () => {
      await harness?.cleanup();
    });

    it('20 racing creates of one rule: exactly one wins, the others conflict naming it', async () => {
      const project = newProject();
      const group = await a.createSecurityGroup(project, { name: 'race' });
      const before = await a.latestChangeSeq();
      const rule = { securityGroupId: group.id, direction: 'ingress' as const, protocol: 'tcp', portRangeMin: 8080, portRangeMax: 8080 };
      const outcomes = await Promise.allSettled(
        Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? a : b).createRule(project, i % 3 === 0 ? { ...rule, protocol: 6 } : rule)),
      );
      const won = outcomes.filter((o) => o.status === 'fulfilled');
      const lost = outcomes.filter((o) => o.status === 'rejected');
      expect(won).toHaveLength(1);
      const winner = (won[0] as PromiseFulfilledResult<{ id: string }>).value.id;
      for (const o of lost) {
        expect(o.reason).toBeInstanceOf(ConflictError);
        expect((o.reason as Error).message).toBe(`Security group rule already exists. Rule id is ${winner}.`);
      }
      const rules = await b.listRules(project, { securityGroupId: group.id });
      expect(rules.filter((r) => r.portRangeMin === 8080).map((r) => r.id)).toEqual([winner]);
      expect((await a.getSecurityGroup(project, group.id)).revisionNumber).toBe(2);
      expect((await a.changesSince(before)).map((c) => c.change)).toEqual([{ kind: 'rules', groupId: group.id }]);
    });

    it('20 racing updates of one instance\'s groups: the last commit wins and every update counts', async () => {
      const project = newProject();
      const groups = await Promise.all([0, 1, 2, 3, 4].map((i) => a.createSecurityGroup(project, { name: `g${i}` })));
      const ids = groups.map((g) => g.id);
      const instance = await a.createInstance(project, { name: 'vm', host: 'h1', securityGroups: [ids[0]!] });
      const before = await a.latestChangeSeq();

      const writes = Array.from({ length: 20 }, (_, i) => {
        const wanted = [ids[i % 5]!, ids[(i + 2) % 5]!];
        return (i % 2 === 0 ? a : b).updateInstance(project, instance.id, { securityGroups: wanted, name: `vm-${i}` });
      });
      const results = await Promise.all(writes);
      expect(new Set(results.map((r) => r.revisionNumber)).size).toBe(20);

      const final = await b.getInstance(project, instance.id);
      expect(final.revisionNumber).toBe(21);
      const updates = (await a.changesSince(before))
        .map((c) => c.change)
        .filter((c): c is Updated => c.kind === 'instance-updated' && c.instanceId === instance.id);
      expect(updates).toHaveLength(20);
      // The last committed write is the final state.
      expect(final.securityGroups).toEqual(updates.at(-1)?.groups);
      const lastWrite = results.find((r) => r.revisionNumber === 21);
      expect(final.name).toBe(lastWrite?.name);
      expect(replay([ids[0]!], updates)).toEqual(final.securityGroups);
      // Membership tables agree.
      for (const id of ids) {
        const members = (await a.getSecurityGroupMembers(id)).map((m) => m.instance.id);
        expect(members.includes(instance.id)).toBe(final.securityGroups.includes(id));
      }
    });

    it('racing ensureDefaultSecurityGroup and default-group instances make one default group', async () => {
      const project = newProject();
      const before = await a.latestChangeSeq();
      const calls: Promise<string>[] = [];
      for (let i = 0; i < 10; i++) {
        const store = i % 2 === 0 ? a : b;
        calls.push(store.ensureDefaultSecurityGroup(project).then((g) => g.id));
        if (i % 3 === 0) calls.push(store.createInstance(project, { name: `vm${i}`, host: 'h1' }).then((x) => x.securityGroups[0]!));
      }
      const ids = await Promise.all(calls);
      expect(new Set(ids).size).toBe(1);
      const groups = await a.listSecurityGroups(project);
      expect(groups.map((g) => g.id)).toEqual([ids[0]]);
      expect(await a.listRules(project, { securityGroupId: ids[0] })).toHaveLength(4);
      const ruleChanges = (await a.changesSince(before)).filter((c) => c.change.kind === 'rules');
      expect(ruleChanges.map((c) => c.change)).toEqual([{ kind: 'rules', groupId: ids[0] }]);
    });

    it('numbers changes in commit order: a reader polling the log misses nothing', async () => {
      const project = newProject();
      const before = await a.latestChangeSeq();
      let last = before;
      const seen: number[] = [];
      let writing = true;
      const poller = (async () => {
        while (writing || last < (await a.latestChangeSeq())) {
          const batch = await b.changesSince(last);
          for (const record of batch) {
            // Never an older number after a newer one was read.
            expect(record.seq).toBeGreaterThan(last);
            last = record.seq;
            seen.push(record.seq);
          }
          await new Promise((resolve) => setImmediate(resolve));
        }
      })();
      await Promise.all(
        Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? a : b).createSecurityGroup(project, { name: `n${i}` })),
      );
      writing = false;
      await poller;
      const all = (await a.changesSince(before)).map((c) => c.seq);
      expect(all).toHaveLength(40);
      expect(seen).toEqual(all);
    });

    it('listeners of one store hear another store\'s commits', async () => {
      const project = newProject();
      const heard: number[] = [];
      const unsubscribe = b.onChange((seq) => heard.push(seq));
      try {
        if (dialect === 'postgres') {
          // The LISTEN connection announces itself with the newest seq once it is up.
          await waitFor(() => heard.length > 0);
        }
        await a.createSecurityGroup(project, { name: 'announced' });
        const seq = await a.latestChangeSeq();
        await waitFor(() => heard.includes(seq));
        await a.createSecurityGroup(project, { name: 'again' });
        const next = await a.latestChangeSeq();
        await waitFor(() => heard.includes(next));
        expect(heard.filter((s) => s === next)).toHaveLength(1);
      } finally {
        unsubscribe();
      }
    });

    if (dialect === 'postgres') {
      it('the LISTEN connection reconnects after a drop and catches up', async () => {
        const listener = await harness.open();
        const project = newProject();
        const heard: number[] = [];
        const unsubscribe = listener.onChange((seq) => heard.push(seq));
        const channel = channelFor(harness.options.schema);
        const backend = async (): Promise<number | undefined> => {
          const rows = await pgQuery<{ pid: number }>(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'virtfw-listener' AND query = $1",
            [`LISTEN "${channel}"`],
          );
          return rows.rows[0]?.pid;
        };
        try {
          await waitFor(() => heard.length > 0);
          const firstPid = await backend();
          expect(firstPid).toBeDefined();
          await pgQuery('SELECT pg_terminate_backend($1)', [firstPid]);
          // Committed while the listener is away: heard through the catch-up on reconnect.
          await a.createSecurityGroup(project, { name: 'while-away' });
          const missed = await a.latestChangeSeq();
          await waitFor(() => heard.some((s) => s >= missed));
          await waitFor(async () => {
            const pid = await backend();
            return pid !== undefined && pid !== firstPid;
          });
          // And NOTIFY works again on the new connection.
          await a.createSecurityGroup(project, { name: 'after' });
          const after = await a.latestChangeSeq();
          await waitFor(() => heard.includes(after));
        } finally {
          unsubscribe();
          await listener.close();
        }
      });
    }

    it('migrate is safe when several stores start on a new database at once', async () => {
      const target = harness.freshTarget();
      const stores = await Promise.all([0, 1, 2].map(() => harness.openAt(target, false)));
      await Promise.all(stores.map((s) => s.migrate()));
      await Promise.all(stores.map((s) => s.migrate()));
      const [s0, s1] = stores as [Store, Store];
      const group = await s0.createSecurityGroup(newProject(), { name: 'after-migrate' });
      expect((await s1.getSecurityGroup(null, group.id)).name).toBe('after-migrate');
    });

    if (dialect === 'postgres') {
      it('migrate is unaffected by other schemas of the server being created and dropped meanwhile', async () => {
        // Another tenant of the server churns schemas with serial columns while stores migrate.
        let churning = true;
        const churn = (async () => {
          let n = 0;
          while (churning) {
            const other = uniqueSchema(`churn${n++}`);
            await pgQuery(`CREATE SCHEMA "${other}"; CREATE TABLE "${other}".t (id serial primary key)`);
            await dropSchemas([other]);
          }
          return n;
        })();
        try {
          for (let i = 0; i < 15; i++) {
            const store = await harness.openAt(harness.freshTarget(), false);
            await store.migrate();
          }
        } finally {
          churning = false;
        }
        expect(await churn).toBeGreaterThan(0);
      });
    }

    it('two other processes and this one race on one database without losing or duplicating', async () => {
      const target = harness.freshTarget();
      const store = await harness.openAt(target, false);
      // The processes migrate too, all at once, as services starting together would.
      const project = newProject();
      const child = (task: Partial<ChildTask>) => runChild({ url: target.url, options: target.options, project, migrate: true, ...task });
      await store.migrate();
      const groups = await Promise.all([0, 1, 2, 3].map((i) => store.createSecurityGroup(project, { name: `p${i}` })));
      const ids = groups.map((g) => g.id);
      const instance = await store.createInstance(project, { name: 'vm', host: 'h1', securityGroups: [ids[0]!] });
      const rule = { securityGroupId: ids[0]!, direction: 'ingress' as const, protocol: 'udp', portRangeMin: 53, portRangeMax: 53 };
      const updatesFor = (offset: number): string[][] =>
        Array.from({ length: 10 }, (_, i) => [ids[(i + offset) % 4]!, ids[(i + offset + 1) % 4]!]);
      const before = await store.latestChangeSeq();

      const [c1, c2, local] = await Promise.all([
        child({ instanceId: instance.id, groupUpdates: updatesFor(0), ruleCreates: 5, rule }),
        child({ instanceId: instance.id, groupUpdates: updatesFor(1), ruleCreates: 5, rule }),
        Promise.allSettled([
          ...updatesFor(2).map((g) => store.updateInstance(project, instance.id, { securityGroups: g })),
          ...Array.from({ length: 5 }, () => store.createRule(project, rule)),
        ]),
      ]);
      expect(c1.errors).toEqual([]);
      expect(c2.errors).toEqual([]);
      const localOk = local.filter((o) => o.status === 'fulfilled').length;
      const localConflicts = local.filter((o) => o.status === 'rejected' && o.reason instanceof ConflictError).length;
      expect(localOk + localConflicts).toBe(15);
      // 30 updates all succeed; of 15 rule creates exactly one does.
      expect(c1.ok + c2.ok + localOk).toBe(31);
      expect(c1.conflicts + c2.conflicts + localConflicts).toBe(14);

      const final = await store.getInstance(project, instance.id);
      expect(final.revisionNumber).toBe(31);
      const changes = (await store.changesSince(before)).map((c) => c.change);
      const updates = changes.filter((c): c is Updated => c.kind === 'instance-updated');
      expect(updates).toHaveLength(30);
      expect(replay([ids[0]!], updates)).toEqual(final.securityGroups);
      expect(changes.filter((c) => c.kind === 'rules')).toHaveLength(1);
      expect((await store.listRules(project, { securityGroupId: ids[0]! })).filter((r) => r.protocol === 'udp')).toHaveLength(1);
    });
  });
}
