/**
 * The Store contract (src/store/store.ts), run against SQLite (a temp file)
 * and PostgreSQL (a unique schema of the `test` database, dropped after):
 * CRUD, Neutron defaults, conflicts, scoping, validation, VirtAPI reads and
 * the change log. Races and cross-store notification: concurrency.test.ts.
 */
import { randomUUID } from 'node:crypto';
import BetterSqlite3 from 'better-sqlite3';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ConflictError, NotFoundError, ValidationError } from '../../src/errors.js';
import { normalizeInstance, normalizeProviderRule, normalizeRule } from '../../src/model/validate.js';
import { openStore, sqlitePath } from '../../src/store/open.js';
import { channelFor, isPostgresUrl } from '../../src/store/postgres.js';
import type { Change, NewRule, Store } from '../../src/store/store.js';
import type { Vif } from '../../src/model/types.js';
import { pgQuery, schemaExists } from '../helpers/pg.js';
import { DIALECTS, storeHarness, type StoreHarness } from '../helpers/store.js';

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const ISO_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;

const newProject = (): string => `proj-${randomUUID()}`;

function vif(n: number): Vif {
  const hex = n.toString(16).padStart(2, '0');
  return {
    id: `vif-${n}`,
    address: `fa:16:3e:00:00:${hex}`,
    devname: `tap${n}`,
    network: { id: 'net', subnets: [{ cidr: '10.0.0.0/24', gateway: { address: '10.0.0.1' }, ips: [{ address: `10.0.0.${n}` }] }] },
  };
}

/** The error a promise rejects with, checked to be of `type`. */
async function rejection<E extends Error>(promise: Promise<unknown>, type: new (...args: never[]) => E): Promise<E> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, 'expected the call to fail').toBeInstanceOf(type);
  return error as E;
}

interface Counts {
  groups: number;
  rules: number;
  instances: number;
  providerRules: number;
  seq: number;
}

async function counts(store: Store): Promise<Counts> {
  return {
    groups: (await store.listSecurityGroups(null)).length,
    rules: (await store.listRules(null)).length,
    instances: (await store.listInstances(null)).length,
    providerRules: (await store.listProviderRules()).length,
    seq: await store.latestChangeSeq(),
  };
}

async function changesAfter(store: Store, seq: number): Promise<Change[]> {
  return (await store.changesSince(seq)).map((r) => r.change);
}

const sorted = (ids: readonly string[]): string[] => [...ids].sort();

for (const dialect of DIALECTS) {
  describe(`Store contract (${dialect})`, () => {
    let harness: StoreHarness;
    let store: Store;

    let setupError: unknown;

    beforeAll(async () => {
      harness = storeHarness(dialect, 'contract');
      try {
        store = await harness.open();
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
      if (dialect === 'postgres') expect(await schemaExists(harness.options.schema as string)).toBe(false);
    });

    // ------------------------------------------------------------- setup

    it('opens the dialect the URL names and migrates idempotently', async () => {
      expect(store.dialect).toBe(dialect);
      await store.migrate();
      await store.migrate();
      if (dialect === 'sqlite') {
        // WAL is a property of the file: another connection sees it.
        const raw = new BetterSqlite3(harness.url.slice('sqlite:'.length), { readonly: true });
        try {
          expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
          const tables = raw.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[];
          expect(tables.map((t) => t.name)).toEqual(expect.arrayContaining(['changes', 'instances', 'security_groups', 'virtfw_migration']));
          const indexes = raw.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'").all() as { name: string }[];
          expect(indexes.map((i) => i.name)).toEqual(
            expect.arrayContaining(['instances_host_idx', 'security_groups_default_uq', 'security_group_rules_fingerprint_uq', 'instance_security_groups_group_idx']),
          );
        } finally {
          raw.close();
        }
      }
      if (dialect === 'postgres') {
        const schema = harness.options.schema as string;
        const tables = await pgQuery<{ table_name: string }>(
          'SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name',
          [schema],
        );
        expect(tables.rows.map((r) => r.table_name)).toEqual([
          'agent_status',
          'changes',
          'instance_security_groups',
          'instances',
          'provider_rules',
          'security_group_rules',
          'security_groups',
          'virtfw_migration',
          'virtfw_migration_lock',
        ]);
        const versions = await pgQuery<{ name: string }>(`SELECT name FROM "${schema}".virtfw_migration`);
        expect(versions.rows.map((r) => r.name)).toEqual(['0001_initial', '0002_agent_status']);
        // Nothing leaked into public.
        const leaked = await pgQuery(
          "SELECT 1 FROM information_schema.tables WHERE table_schema = 'public' AND table_name IN ('changes', 'security_groups')",
        );
        expect(leaked.rowCount).toBe(0);
      }
    });

    it('an empty log has latest and oldest seq 0', async () => {
      const empty = await harness.fresh();
      expect(await empty.latestChangeSeq()).toBe(0);
      expect(await empty.oldestChangeSeq()).toBe(0);
      expect(await empty.changesSince(0)).toEqual([]);
      expect(await empty.pruneChanges(0)).toBe(0);
    });

    // ------------------------------------------------------------ groups

    describe('security groups', () => {
      it('creates a group with Neutron default egress rules', async () => {
        const project = newProject();
        const before = await store.latestChangeSeq();
        const group = await store.createSecurityGroup(project, { name: 'web', description: 'web servers' });
        expect(group).toMatchObject({ projectId: project, name: 'web', description: 'web servers', revisionNumber: 1 });
        expect(group.id).toMatch(UUID_V4);
        expect(group.createdAt).toMatch(ISO_UTC);
        expect(group.updatedAt).toBe(group.createdAt);

        const rules = await store.listRules(project, { securityGroupId: group.id });
        expect(rules).toHaveLength(2);
        expect(rules.map((r) => r.ethertype).sort()).toEqual(['IPv4', 'IPv6']);
        for (const rule of rules) {
          expect(rule).toMatchObject({
            securityGroupId: group.id,
            projectId: project,
            direction: 'egress',
            protocol: null,
            portRangeMin: null,
            portRangeMax: null,
            remoteIpPrefix: null,
            remoteGroupId: null,
            description: '',
          });
          expect(rule.id).toMatch(UUID_V4);
          expect(rule.createdAt).toMatch(ISO_UTC);
        }
        expect(await changesAfter(store, before)).toEqual([{ kind: 'rules', groupId: group.id }]);
      });

      it('gets, lists by scope, updates and deletes a group', async () => {
        const project = newProject();
        const other = newProject();
        const a = await store.createSecurityGroup(project, { name: 'a' });
        const b = await store.createSecurityGroup(project, { name: 'b' });
        const c = await store.createSecurityGroup(other, { name: 'c' });

        expect(await store.getSecurityGroup(project, a.id)).toEqual(a);
        expect(await store.getSecurityGroup(null, c.id)).toEqual(c);
        expect((await store.listSecurityGroups(project)).map((g) => g.id)).toEqual([a.id, b.id]);
        expect((await store.listSecurityGroups(other)).map((g) => g.id)).toEqual([c.id]);
        const all = (await store.listSecurityGroups(null)).map((g) => g.id);
        expect(all).toEqual(expect.arrayContaining([a.id, b.id, c.id]));

        const before = await store.latestChangeSeq();
        const renamed = await store.updateSecurityGroup(project, a.id, { name: 'a2', description: 'renamed' });
        expect(renamed).toMatchObject({ id: a.id, name: 'a2', description: 'renamed', revisionNumber: 2, createdAt: a.createdAt });
        expect(renamed.updatedAt >= a.updatedAt).toBe(true);
        expect(await store.getSecurityGroup(null, a.id)).toEqual(renamed);
        const described = await store.updateSecurityGroup(null, a.id, { description: 'again' });
        expect(described).toMatchObject({ name: 'a2', description: 'again', revisionNumber: 3 });
        // A rename changes nothing the firewall sees.
        expect(await changesAfter(store, before)).toEqual([]);

        await store.deleteSecurityGroup(project, a.id);
        await rejection(store.getSecurityGroup(null, a.id), NotFoundError);
        expect(await store.listRules(null, { securityGroupId: a.id })).toEqual([]);
        expect(await changesAfter(store, before)).toEqual([{ kind: 'group-deleted', groupId: a.id }]);
        await rejection(store.deleteSecurityGroup(project, a.id), NotFoundError);
      });

      it('makes the default group once, with its four rules', async () => {
        const project = newProject();
        const before = await store.latestChangeSeq();
        const group = await store.ensureDefaultSecurityGroup(project);
        expect(group).toMatchObject({ projectId: project, name: 'default', description: 'Default security group', revisionNumber: 1 });
        expect(group.id).toMatch(UUID_V4);
        const again = await store.ensureDefaultSecurityGroup(project);
        expect(again).toEqual(group);
        expect((await store.listSecurityGroups(project)).map((g) => g.id)).toEqual([group.id]);

        const rules = await store.listRules(project, { securityGroupId: group.id });
        const shape = rules
          .map((r) => `${r.direction} ${r.ethertype} ${r.protocol} ${r.remoteIpPrefix} ${r.remoteGroupId === group.id ? 'self' : r.remoteGroupId}`)
          .sort();
        expect(shape).toEqual([
          'egress IPv4 null null null',
          'egress IPv6 null null null',
          'ingress IPv4 null null self',
          'ingress IPv6 null null self',
        ]);
        expect(await changesAfter(store, before)).toEqual([{ kind: 'rules', groupId: group.id }]);
      });

      it('reserves the name default', async () => {
        const project = newProject();
        const group = await store.createSecurityGroup(project, { name: 'web' });
        const def = await store.ensureDefaultSecurityGroup(project);
        const before = await counts(store);

        const named = await rejection(store.createSecurityGroup(project, { name: 'default' }), ConflictError);
        expect(named.message).toMatch(/default/);
        await rejection(store.createSecurityGroup(newProject(), { name: 'default' }), ConflictError);
        await rejection(store.updateSecurityGroup(project, def.id, { name: 'renamed' }), ConflictError);
        await rejection(store.updateSecurityGroup(null, group.id, { name: 'default' }), ConflictError);
        await rejection(store.deleteSecurityGroup(project, def.id), ConflictError);
        await rejection(store.deleteSecurityGroup(null, def.id), ConflictError);

        // The default group may keep its name and change its description.
        expect(await store.updateSecurityGroup(project, def.id, { name: 'default', description: 'mine' })).toMatchObject({
          name: 'default',
          description: 'mine',
        });
        expect(await store.getSecurityGroup(project, group.id)).toMatchObject({ name: 'web', revisionNumber: 1 });
        expect(await counts(store)).toEqual(before);
      });

      it('refuses to delete a group in use by an instance or named by another group\'s rule', async () => {
        const project = newProject();
        const used = await store.createSecurityGroup(project, { name: 'used' });
        const named = await store.createSecurityGroup(project, { name: 'named' });
        const naming = await store.createSecurityGroup(project, { name: 'naming' });
        const instance = await store.createInstance(project, { name: 'vm', host: 'h1', securityGroups: [used.id] });
        const rule = await store.createRule(project, { securityGroupId: naming.id, direction: 'ingress', remoteGroupId: named.id });
        const before = await counts(store);

        const inUse = await rejection(store.deleteSecurityGroup(project, used.id), ConflictError);
        expect(inUse.message).toContain(instance.id);
        const referenced = await rejection(store.deleteSecurityGroup(null, named.id), ConflictError);
        expect(referenced.message).toContain(rule.id);
        expect(await counts(store)).toEqual(before);

        // Once the instance and the rule are gone, both can go.
        await store.deleteInstance(project, instance.id);
        await store.deleteSecurityGroup(project, used.id);
        await store.deleteRule(project, rule.id);
        await store.deleteSecurityGroup(project, named.id);
      });

      it('deletes a group with its own self-referencing rules', async () => {
        const project = newProject();
        const group = await store.createSecurityGroup(project, { name: 'self' });
        await store.createRule(project, { securityGroupId: group.id, direction: 'ingress', remoteGroupId: group.id });
        await store.createRule(project, { securityGroupId: group.id, direction: 'ingress', ethertype: 'IPv6', remoteGroupId: group.id });
        await store.deleteSecurityGroup(project, group.id);
        expect(await store.listRules(null, { securityGroupId: group.id })).toEqual([]);
      });

      it('hides other projects\' groups', async () => {
        const project = newProject();
        const other = newProject();
        const group = await store.createSecurityGroup(project, { name: 'mine' });
        const before = await counts(store);
        const missing = await rejection(store.getSecurityGroup(other, group.id), NotFoundError);
        expect(missing.details).toEqual({ resource: 'security group', id: group.id });
        await rejection(store.updateSecurityGroup(other, group.id, { name: 'theirs' }), NotFoundError);
        await rejection(store.deleteSecurityGroup(other, group.id), NotFoundError);
        await rejection(store.getSecurityGroup(null, randomUUID()), NotFoundError);
        expect(await store.listSecurityGroups(other)).toEqual([]);
        expect(await store.getSecurityGroup(project, group.id)).toEqual(group);
        expect(await counts(store)).toEqual(before);
      });
    });

    // ------------------------------------------------------------- rules

    describe('rules', () => {
      it('creates, gets, lists and deletes rules, bumping the group revision', async () => {
        const project = newProject();
        const group = await store.createSecurityGroup(project, { name: 'web' });
        const before = await store.latestChangeSeq();
        const rule = await store.createRule(project, {
          securityGroupId: group.id,
          direction: 'ingress',
          protocol: 'TCP',
          portRangeMin: 80,
          portRangeMax: 443,
          remoteIpPrefix: '192.0.2.7/24',
          description: 'http',
        });
        expect(rule).toMatchObject({
          securityGroupId: group.id,
          projectId: project,
          direction: 'ingress',
          ethertype: 'IPv4',
          protocol: 'tcp',
          portRangeMin: 80,
          portRangeMax: 443,
          remoteIpPrefix: '192.0.2.0/24',
          remoteGroupId: null,
          description: 'http',
        });
        expect(rule.id).toMatch(UUID_V4);
        expect(rule.createdAt).toMatch(ISO_UTC);
        expect(await store.getRule(project, rule.id)).toEqual(rule);
        expect(await store.getRule(null, rule.id)).toEqual(rule);
        const afterCreate = await store.getSecurityGroup(project, group.id);
        expect(afterCreate.revisionNumber).toBe(2);

        const listed = await store.listRules(project, { securityGroupId: group.id });
        expect(listed).toHaveLength(3);
        expect(listed).toContainEqual(rule);
        expect((await store.listRules(project)).length).toBe(3);

        await store.deleteRule(project, rule.id);
        await rejection(store.getRule(null, rule.id), NotFoundError);
        await rejection(store.deleteRule(null, rule.id), NotFoundError);
        expect((await store.getSecurityGroup(project, group.id)).revisionNumber).toBe(3);
        expect(await changesAfter(store, before)).toEqual([
          { kind: 'rules', groupId: group.id },
          { kind: 'rules', groupId: group.id },
        ]);
      });

      it('stores canonical forms: protocol text, ethertype, prefix, icmp type/code', async () => {
        const project = newProject();
        const group = await store.createSecurityGroup(project, { name: 'forms' });
        const create = (rule: Record<string, unknown>) =>
          store.createRule(project, { securityGroupId: group.id, direction: 'ingress', ...rule });

        expect(await create({ protocol: 6, portRangeMin: 22, portRangeMax: 22 })).toMatchObject({ protocol: '6', ethertype: 'IPv4' });
        expect(await create({ protocol: '017' })).toMatchObject({ protocol: '17' });
        expect(await create({ protocol: 'any', remoteIpPrefix: '198.51.100.0/24' })).toMatchObject({ protocol: null });
        expect(await create({ remoteIpPrefix: '2001:DB8::1/32' })).toMatchObject({
          ethertype: 'IPv6',
          remoteIpPrefix: '2001:db8::/32',
          protocol: null,
        });
        expect(await create({ protocol: 'icmp', portRangeMin: 8, portRangeMax: 0 })).toMatchObject({
          protocol: 'icmp',
          portRangeMin: 8,
          portRangeMax: 0,
        });
        expect(await create({ ethertype: 'IPv6', protocol: 'ICMPv6', portRangeMin: 128 })).toMatchObject({
          ethertype: 'IPv6',
          protocol: 'icmpv6',
          portRangeMin: 128,
          portRangeMax: null,
        });
        // What the store returns is what the driver accepts.
        for (const rule of await store.getSecurityGroupRules(group.id)) expect(() => normalizeRule(rule)).not.toThrow();
      });

      it('refuses duplicates, naming the existing rule, also when written differently', async () => {
        const project = newProject();
        const group = await store.createSecurityGroup(project, { name: 'dups' });
        const other = await store.createSecurityGroup(project, { name: 'other' });
        const tcp = await store.createRule(project, { securityGroupId: group.id, direction: 'ingress', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22 });
        const any = await store.createRule(project, { securityGroupId: group.id, direction: 'ingress', protocol: 'udp' });
        const world = await store.createRule(project, { securityGroupId: group.id, direction: 'ingress', protocol: 'icmp' });
        const before = await counts(store);

        const cases: [Record<string, unknown>, string][] = [
          [{ protocol: 'tcp', portRangeMin: 22, portRangeMax: 22 }, tcp.id],
          [{ protocol: 6, portRangeMin: 22 }, tcp.id],
          [{ protocol: 'TCP', portRangeMin: 22, portRangeMax: 22, ethertype: 'IPv4' }, tcp.id],
          [{ protocol: 'udp', portRangeMin: 1, portRangeMax: 65535 }, any.id],
          [{ protocol: '17', remoteIpPrefix: '0.0.0.0/0' }, any.id],
          [{ protocol: 'icmp', portRangeMin: -1, portRangeMax: -1 }, world.id],
          // the group's default egress rule
        ];
        for (const [rule, id] of cases) {
          const error = await rejection(
            store.createRule(project, { securityGroupId: group.id, direction: 'ingress', ...rule }),
            ConflictError,
          );
          expect(error.message).toBe(`Security group rule already exists. Rule id is ${id}.`);
        }
        const egress = (await store.listRules(project, { securityGroupId: group.id })).find(
          (r) => r.direction === 'egress' && r.ethertype === 'IPv4',
        );
        const dupEgress = await rejection(
          store.createRule(project, { securityGroupId: group.id, direction: 'egress', remoteIpPrefix: '0.0.0.0/0' }),
          ConflictError,
        );
        expect(dupEgress.message).toContain(egress?.id);
        expect(await counts(store)).toEqual(before);

        // The same rule in another group, or a different port, is not a duplicate.
        await store.createRule(project, { securityGroupId: other.id, direction: 'ingress', protocol: 'tcp', portRangeMin: 22 });
        await store.createRule(project, { securityGroupId: group.id, direction: 'ingress', protocol: 'tcp', portRangeMin: 23 });
        await store.createRule(project, { securityGroupId: group.id, direction: 'egress', protocol: 'tcp', portRangeMin: 22 });
        await store.createRule(project, { securityGroupId: group.id, direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 22 });
      });

      it('needs a visible group and a visible remote group', async () => {
        const project = newProject();
        const other = newProject();
        const group = await store.createSecurityGroup(project, { name: 'g' });
        const foreign = await store.createSecurityGroup(other, { name: 'f' });
        const before = await counts(store);

        const unknown = randomUUID();
        const e1 = await rejection(store.createRule(project, { securityGroupId: unknown, direction: 'ingress' }), NotFoundError);
        expect(e1.details).toEqual({ resource: 'security group', id: unknown });
        await rejection(store.createRule(other, { securityGroupId: group.id, direction: 'ingress', protocol: 'tcp' }), NotFoundError);
        const e2 = await rejection(
          store.createRule(project, { securityGroupId: group.id, direction: 'ingress', remoteGroupId: foreign.id }),
          NotFoundError,
        );
        expect(e2.details).toEqual({ resource: 'security group', id: foreign.id });
        await rejection(
          store.createRule(project, { securityGroupId: group.id, direction: 'ingress', remoteGroupId: unknown }),
          NotFoundError,
        );
        expect(await counts(store)).toEqual(before);

        // The admin sees every project: the rule's project is its group's.
        const admin = await store.createRule(null, { securityGroupId: group.id, direction: 'ingress', remoteGroupId: foreign.id });
        expect(admin.projectId).toBe(project);
        await rejection(store.getRule(other, admin.id), NotFoundError);
        await rejection(store.deleteRule(other, admin.id), NotFoundError);
        expect(await store.listRules(other, { securityGroupId: group.id })).toEqual([]);
        await store.deleteRule(project, admin.id);
      });
    });

    // --------------------------------------------------------- instances

    describe('instances', () => {
      it('creates an instance in its groups, in order', async () => {
        const project = newProject();
        const a = await store.createSecurityGroup(project, { name: 'a' });
        const b = await store.createSecurityGroup(project, { name: 'b' });
        const before = await store.latestChangeSeq();
        const instance = await store.createInstance(project, {
          name: 'vm-1',
          host: 'compute-1.example',
          securityGroups: [b.id, a.id, b.id],
          networkInfo: [vif(10)],
        });
        expect(instance).toMatchObject({
          projectId: project,
          name: 'vm-1',
          host: 'compute-1.example',
          securityGroups: [b.id, a.id],
          networkInfo: [vif(10)],
          revisionNumber: 1,
        });
        expect(instance.id).toMatch(UUID_V4);
        expect(instance.createdAt).toMatch(ISO_UTC);
        expect(await store.getInstance(project, instance.id)).toEqual(instance);
        expect(await store.getInstance(null, instance.id)).toEqual(instance);
        expect(await changesAfter(store, before)).toEqual([
          { kind: 'instance-created', instanceId: instance.id, host: 'compute-1.example', groups: [b.id, a.id] },
        ]);
        // No default group was made.
        expect((await store.listSecurityGroups(project)).map((g) => g.name).sort()).toEqual(['a', 'b']);
      });

      it('puts an instance without groups in the project\'s default group, made on first use', async () => {
        const project = newProject();
        const before = await store.latestChangeSeq();
        const first = await store.createInstance(project, { name: 'vm', host: 'h1' });
        const groups = await store.listSecurityGroups(project);
        expect(groups).toHaveLength(1);
        const def = groups[0]!;
        expect(def).toMatchObject({ name: 'default', description: 'Default security group' });
        expect(first.securityGroups).toEqual([def.id]);
        expect(await store.listRules(project, { securityGroupId: def.id })).toHaveLength(4);
        const second = await store.createInstance(project, { name: 'vm2', host: 'h1', securityGroups: [] });
        expect(second.securityGroups).toEqual([def.id]);
        expect(await store.ensureDefaultSecurityGroup(project)).toEqual(def);
        expect(await changesAfter(store, before)).toEqual([
          { kind: 'rules', groupId: def.id },
          { kind: 'instance-created', instanceId: first.id, host: 'h1', groups: [def.id] },
          { kind: 'instance-created', instanceId: second.id, host: 'h1', groups: [def.id] },
        ]);
      });

      it('takes a given id, once', async () => {
        const project = newProject();
        const id = `inst-${randomUUID()}`;
        const instance = await store.createInstance(project, { id, name: 'named', host: 'h1' });
        expect(instance.id).toBe(id);
        const before = await counts(store);
        const duplicate = await rejection(store.createInstance(newProject(), { id, name: 'again', host: 'h2' }), ConflictError);
        expect(duplicate.message).toContain(id);
        expect(await counts(store)).toEqual(before);
      });

      it('updates name, host, groups and network info, bumping the revision', async () => {
        const project = newProject();
        const a = await store.createSecurityGroup(project, { name: 'a' });
        const b = await store.createSecurityGroup(project, { name: 'b' });
        const c = await store.createSecurityGroup(project, { name: 'c' });
        const instance = await store.createInstance(project, { name: 'vm', host: 'h1', securityGroups: [a.id, b.id], networkInfo: [vif(1)] });
        const before = await store.latestChangeSeq();

        const renamed = await store.updateInstance(project, instance.id, { name: 'vm-renamed' });
        expect(renamed).toMatchObject({ name: 'vm-renamed', host: 'h1', securityGroups: [a.id, b.id], revisionNumber: 2 });
        const moved = await store.updateInstance(null, instance.id, { host: 'h2' });
        expect(moved).toMatchObject({ host: 'h2', revisionNumber: 3 });
        const regrouped = await store.updateInstance(project, instance.id, { securityGroups: [c.id, a.id] });
        expect(regrouped).toMatchObject({ securityGroups: [c.id, a.id], revisionNumber: 4 });
        const renetted = await store.updateInstance(project, instance.id, { networkInfo: [vif(1), vif(2)] });
        expect(renetted).toMatchObject({ networkInfo: [vif(1), vif(2)], securityGroups: [c.id, a.id], revisionNumber: 5 });
        const both = await store.updateInstance(project, instance.id, { securityGroups: [b.id], networkInfo: [vif(3)], host: 'h3' });
        expect(both).toMatchObject({ securityGroups: [b.id], host: 'h3', revisionNumber: 6 });
        expect(await store.getInstance(project, instance.id)).toEqual(both);
        expect(both.createdAt).toBe(instance.createdAt);

        const changes = await changesAfter(store, before);
        const base = { kind: 'instance-updated', instanceId: instance.id };
        expect(changes).toHaveLength(5);
        expect(changes[0]).toEqual({ ...base, host: 'h1', previousHost: 'h1', membershipChanged: [], groups: [a.id, b.id], networkChanged: false });
        expect(changes[1]).toEqual({ ...base, host: 'h2', previousHost: 'h1', membershipChanged: [], groups: [a.id, b.id], networkChanged: false });
        expect(changes[2]).toMatchObject({ ...base, host: 'h2', previousHost: 'h2', groups: [c.id, a.id], networkChanged: false });
        expect(sorted((changes[2] as { membershipChanged: string[] }).membershipChanged)).toEqual(sorted([c.id, b.id]));
        expect(changes[3]).toMatchObject({ ...base, groups: [c.id, a.id], networkChanged: true });
        expect(sorted((changes[3] as { membershipChanged: string[] }).membershipChanged)).toEqual(sorted([c.id, a.id]));
        expect(changes[4]).toMatchObject({ ...base, host: 'h3', previousHost: 'h2', groups: [b.id], networkChanged: true });
        expect(sorted((changes[4] as { membershipChanged: string[] }).membershipChanged)).toEqual(sorted([a.id, b.id, c.id]));

        // An empty list means the default group, as on create.
        const defaulted = await store.updateInstance(project, instance.id, { securityGroups: [] });
        const def = await store.ensureDefaultSecurityGroup(project);
        expect(defaulted.securityGroups).toEqual([def.id]);
      });

      it('lists by host and scope, and deletes', async () => {
        const project = newProject();
        const other = newProject();
        const host = `host-${randomUUID().slice(0, 8)}`;
        const x = await store.createInstance(project, { name: 'x', host, networkInfo: [vif(5)] });
        const y = await store.createInstance(other, { name: 'y', host });
        const z = await store.createInstance(project, { name: 'z', host: `${host}-b` });

        expect((await store.instancesOnHost(host)).map((i) => i.id)).toEqual([x.id, y.id]);
        expect(await store.instancesOnHost(host)).toContainEqual(x);
        expect((await store.listInstances(null, { host })).map((i) => i.id)).toEqual([x.id, y.id]);
        expect((await store.listInstances(project)).map((i) => i.id)).toEqual([x.id, z.id]);
        expect((await store.listInstances(project, { host })).map((i) => i.id)).toEqual([x.id]);
        expect(await store.instancesOnHost(`${host}-none`)).toEqual([]);

        const before = await store.latestChangeSeq();
        await store.deleteInstance(project, x.id);
        await rejection(store.getInstance(null, x.id), NotFoundError);
        await rejection(store.deleteInstance(project, x.id), NotFoundError);
        expect((await store.instancesOnHost(host)).map((i) => i.id)).toEqual([y.id]);
        expect(await changesAfter(store, before)).toEqual([
          { kind: 'instance-deleted', instanceId: x.id, host, groups: x.securityGroups },
        ]);
      });

      it('needs groups of the instance\'s own project and hides other projects\' instances', async () => {
        const project = newProject();
        const other = newProject();
        const mine = await store.createSecurityGroup(project, { name: 'mine' });
        const theirs = await store.createSecurityGroup(other, { name: 'theirs' });
        const instance = await store.createInstance(project, { name: 'vm', host: 'h1', securityGroups: [mine.id] });
        const before = await counts(store);

        const e1 = await rejection(
          store.createInstance(project, { name: 'vm2', host: 'h1', securityGroups: [mine.id, theirs.id] }),
          NotFoundError,
        );
        expect(e1.details).toEqual({ resource: 'security group', id: theirs.id });
        const unknown = randomUUID();
        const e2 = await rejection(store.createInstance(project, { name: 'vm3', host: 'h1', securityGroups: [unknown] }), NotFoundError);
        expect(e2.details).toEqual({ resource: 'security group', id: unknown });
        // Even the admin cannot put an instance in another project's group.
        await rejection(store.updateInstance(null, instance.id, { securityGroups: [theirs.id] }), NotFoundError);

        const e3 = await rejection(store.getInstance(other, instance.id), NotFoundError);
        expect(e3.details).toEqual({ resource: 'instance', id: instance.id });
        await rejection(store.updateInstance(other, instance.id, { name: 'stolen' }), NotFoundError);
        await rejection(store.deleteInstance(other, instance.id), NotFoundError);
        await rejection(store.getInstance(null, randomUUID()), NotFoundError);
        expect(await store.listInstances(other)).toEqual([]);
        expect(await store.getInstance(project, instance.id)).toEqual(instance);
        expect(await counts(store)).toEqual(before);
      });
    });

    // ----------------------------------------------------- provider rules

    describe('provider rules', () => {
      it('creates, lists and deletes provider rules with a canonical cidr', async () => {
        const before = await store.latestChangeSeq();
        const rule = await store.createProviderRule({ cidr: '203.0.113.9/24', protocol: 'UDP', fromPort: 53, toPort: 53 });
        expect(rule).toMatchObject({ cidr: '203.0.113.0/24', protocol: 'udp', fromPort: 53, toPort: 53 });
        expect(rule.id).toMatch(UUID_V4);
        expect(rule.createdAt).toMatch(ISO_UTC);
        const v6 = await store.createProviderRule({ cidr: '2001:db8::5' });
        expect(v6).toMatchObject({ cidr: '2001:db8::5/128', protocol: null, fromPort: null, toPort: null });
        expect(await store.listProviderRules()).toEqual(expect.arrayContaining([rule, v6]));
        const api = await store.getProviderRules();
        expect(api).toContainEqual({ id: rule.id, cidr: '203.0.113.0/24', protocol: 'udp', fromPort: 53, toPort: 53 });
        for (const r of api) expect(() => normalizeProviderRule(r)).not.toThrow();

        await store.deleteProviderRule(rule.id);
        await store.deleteProviderRule(v6.id);
        const missing = await rejection(store.deleteProviderRule(rule.id), NotFoundError);
        expect(missing.details).toEqual({ resource: 'provider rule', id: rule.id });
        expect((await store.listProviderRules()).map((r) => r.id)).not.toContain(rule.id);
        expect(await changesAfter(store, before)).toEqual([
          { kind: 'provider-rules' },
          { kind: 'provider-rules' },
          { kind: 'provider-rules' },
          { kind: 'provider-rules' },
        ]);
      });
    });

    // -------------------------------------------------------- validation

    describe('validation', () => {
      let project: string;
      let group: string;
      let instance: string;

      beforeAll(async () => {
        if (setupError !== undefined) return;
        project = newProject();
        group = (await store.createSecurityGroup(project, { name: 'v' })).id;
        instance = (await store.createInstance(project, { name: 'vm', host: 'h1', securityGroups: [group] })).id;
      });

      // Deliberately unchecked: these are the wrong inputs a caller might send.
      const rule = (extra: Record<string, unknown>) => ({ securityGroupId: group, direction: 'ingress', ...extra }) as unknown as NewRule;
      const cases: [string, string, (s: Store) => Promise<unknown>][] = [
        ['group projectId', 'projectId', (s) => s.createSecurityGroup('bad project', { name: 'x' })],
        ['group name type', 'name', (s) => s.createSecurityGroup(project, { name: 42 as unknown as string })],
        ['group name length', 'name', (s) => s.createSecurityGroup(project, { name: 'x'.repeat(256) })],
        ['group name control', 'name', (s) => s.createSecurityGroup(project, { name: 'a\nb' })],
        ['group description', 'description', (s) => s.createSecurityGroup(project, { name: 'x', description: 'd'.repeat(300) })],
        ['group rename', 'name', (s) => s.updateSecurityGroup(project, group, { name: 'tab\there' })],
        ['ensure default projectId', 'projectId', (s) => s.ensureDefaultSecurityGroup('')],
        ['rule group id', 'rule.securityGroupId', (s) => s.createRule(project, rule({ securityGroupId: '-x' }))],
        ['rule direction missing', 'rule.direction', (s) => s.createRule(project, rule({ direction: undefined }))],
        ['rule direction', 'rule.direction', (s) => s.createRule(project, rule({ direction: 'inbound' }))],
        ['rule ethertype', 'rule.ethertype', (s) => s.createRule(project, rule({ ethertype: 'IPv5' }))],
        ['rule protocol', 'rule.protocol', (s) => s.createRule(project, rule({ protocol: 'bogus' }))],
        ['rule protocol 0', 'rule.protocol', (s) => s.createRule(project, rule({ protocol: 0 }))],
        ['icmpv6 on IPv4', 'rule.protocol', (s) => s.createRule(project, rule({ protocol: 'icmpv6' }))],
        ['port too high', 'rule.portRangeMax', (s) => s.createRule(project, rule({ protocol: 'tcp', portRangeMin: 1, portRangeMax: 70000 }))],
        ['port range reversed', 'rule.portRangeMin', (s) => s.createRule(project, rule({ protocol: 'tcp', portRangeMin: 90, portRangeMax: 80 }))],
        ['ports without protocol', 'rule.portRangeMin', (s) => s.createRule(project, rule({ portRangeMin: 80 }))],
        ['ports on gre', 'rule.portRangeMin', (s) => s.createRule(project, rule({ protocol: 'gre', portRangeMin: 80 }))],
        ['icmp type', 'rule.portRangeMin', (s) => s.createRule(project, rule({ protocol: 'icmp', portRangeMin: 300 }))],
        ['icmp code without type', 'rule.portRangeMax', (s) => s.createRule(project, rule({ protocol: 'icmp', portRangeMax: 3 }))],
        ['prefix', 'rule.remoteIpPrefix', (s) => s.createRule(project, rule({ remoteIpPrefix: '10.0.0.300/24' }))],
        ['prefix family', 'rule.remoteIpPrefix', (s) => s.createRule(project, rule({ ethertype: 'IPv6', remoteIpPrefix: '10.0.0.0/8' }))],
        ['two remotes', 'rule.remoteGroupId', (s) => s.createRule(project, rule({ remoteIpPrefix: '10.0.0.0/8', remoteGroupId: group }))],
        ['remote group id', 'rule.remoteGroupId', (s) => s.createRule(project, rule({ remoteGroupId: 'a b' }))],
        ['rule description', 'rule.description', (s) => s.createRule(project, rule({ description: 'x'.repeat(256) }))],
        ['instance projectId', 'projectId', (s) => s.createInstance('', { name: 'x', host: 'h1' })],
        ['instance id', 'id', (s) => s.createInstance(project, { id: 'has space', name: 'x', host: 'h1' })],
        ['instance name', 'name', (s) => s.createInstance(project, { name: 'bell\u0007', host: 'h1' })],
        ['instance name length', 'name', (s) => s.createInstance(project, { name: 'n'.repeat(256), host: 'h1' })],
        ['instance host missing', 'host', (s) => s.createInstance(project, { name: 'x' } as never)],
        ['instance host chars', 'host', (s) => s.createInstance(project, { name: 'x', host: 'h 1' })],
        ['instance host length', 'host', (s) => s.createInstance(project, { name: 'x', host: 'h'.repeat(256) })],
        ['instance groups', 'securityGroups', (s) => s.createInstance(project, { name: 'x', host: 'h', securityGroups: 'g' as never })],
        ['instance group id', 'securityGroups[1]', (s) => s.createInstance(project, { name: 'x', host: 'h', securityGroups: [group, ''] })],
        ['network info', 'networkInfo', (s) => s.createInstance(project, { name: 'x', host: 'h', networkInfo: {} as never })],
        [
          'devname',
          'networkInfo[0].devname',
          (s) => s.createInstance(project, { name: 'x', host: 'h', networkInfo: [{ ...vif(1), devname: 'a-very-long-device-name' }] }),
        ],
        [
          'duplicate devname',
          'networkInfo[1].devname',
          (s) => s.createInstance(project, { name: 'x', host: 'h', networkInfo: [vif(1), { ...vif(2), devname: 'tap1' }] }),
        ],
        [
          'fixed ip',
          'networkInfo[0].network.subnets[0].ips[0].address',
          (s) =>
            s.createInstance(project, {
              name: 'x',
              host: 'h',
              networkInfo: [{ ...vif(1), network: { subnets: [{ cidr: '10.0.0.0/24', ips: [{ address: '2001:db8::1' }] }] } }],
            }),
        ],
        ['mac', 'networkInfo[0].address', (s) => s.updateInstance(project, instance, { networkInfo: [{ ...vif(1), address: 'ff:ff:ff:ff:ff:ff' }] })],
        ['update host', 'host', (s) => s.updateInstance(project, instance, { host: '' })],
        ['update name', 'name', (s) => s.updateInstance(null, instance, { name: 'x\u007f' })],
        ['update groups', 'securityGroups[0]', (s) => s.updateInstance(null, instance, { securityGroups: [7.5 as never] })],
        ['provider cidr', 'providerRule.cidr', (s) => s.createProviderRule({ cidr: 'nope' })],
        ['provider protocol', 'providerRule.protocol', (s) => s.createProviderRule({ cidr: '10.0.0.0/8', protocol: 'bogus' })],
        ['provider ports', 'providerRule.fromPort', (s) => s.createProviderRule({ cidr: '10.0.0.0/8', fromPort: 80 })],
        ['provider port range', 'providerRule.toPort', (s) => s.createProviderRule({ cidr: '10.0.0.0/8', protocol: 'tcp', fromPort: 80, toPort: 99999 })],
        ['changes limit', 'limit', (s) => s.changesSince(0, 0)],
        ['prune keep', 'keepSeconds', (s) => s.pruneChanges(-1)],
      ];

      it.each(cases)('%s → ValidationError on %s, nothing stored', async (_name, field, call) => {
        const before = await counts(store);
        const instanceBefore = await store.getInstance(null, instance);
        const error = await rejection(call(store), ValidationError);
        expect(error.field).toBe(field);
        expect(error.message.startsWith(`${field}: `)).toBe(true);
        expect(await counts(store)).toEqual(before);
        expect(await store.getInstance(null, instance)).toEqual(instanceBefore);
      });
    });

    // ----------------------------------------------------------- VirtAPI

    describe('VirtAPI reads', () => {
      it('answers the driver\'s questions, across hosts and projects', async () => {
        const project = newProject();
        const web = await store.createSecurityGroup(project, { name: 'web' });
        const db = await store.createSecurityGroup(project, { name: 'db' });
        const rule = await store.createRule(project, {
          securityGroupId: db.id,
          direction: 'ingress',
          protocol: 'tcp',
          portRangeMin: 5432,
          portRangeMax: 5432,
          remoteGroupId: web.id,
        });
        const w1 = await store.createInstance(project, { name: 'w1', host: 'h1', securityGroups: [web.id, db.id], networkInfo: [vif(11)] });
        const w2 = await store.createInstance(project, { name: 'w2', host: 'h2', securityGroups: [web.id], networkInfo: [vif(12)] });

        expect(await store.getInstanceSecurityGroups(w1.id)).toEqual([
          { id: web.id, name: 'web' },
          { id: db.id, name: 'db' },
        ]);
        const rules = await store.getSecurityGroupRules(db.id);
        expect(rules).toHaveLength(3);
        expect(rules).toContainEqual({
          id: rule.id,
          securityGroupId: db.id,
          direction: 'ingress',
          ethertype: 'IPv4',
          protocol: 'tcp',
          portRangeMin: 5432,
          portRangeMax: 5432,
          remoteIpPrefix: null,
          remoteGroupId: web.id,
        });
        for (const r of rules) expect(() => normalizeRule(r)).not.toThrow();

        const members = await store.getSecurityGroupMembers(web.id);
        expect(members).toEqual([
          { instance: { id: w1.id, name: 'w1', host: 'h1' }, networkInfo: [vif(11)] },
          { instance: { id: w2.id, name: 'w2', host: 'h2' }, networkInfo: [vif(12)] },
        ]);
        for (const m of members) expect(() => normalizeInstance(m.instance, m.networkInfo)).not.toThrow();
        expect((await store.getSecurityGroupMembers(db.id)).map((m) => m.instance.id)).toEqual([w1.id]);

        // Membership and network changes show at once.
        await store.updateInstance(project, w2.id, { securityGroups: [db.id], networkInfo: [vif(13)] });
        expect((await store.getSecurityGroupMembers(web.id)).map((m) => m.instance.id)).toEqual([w1.id]);
        expect(await store.getSecurityGroupMembers(db.id)).toContainEqual({
          instance: { id: w2.id, name: 'w2', host: 'h2' },
          networkInfo: [vif(13)],
        });

        expect(await store.getInstanceSecurityGroups(randomUUID())).toEqual([]);
        expect(await store.getSecurityGroupRules(randomUUID())).toEqual([]);
        expect(await store.getSecurityGroupMembers(randomUUID())).toEqual([]);
        expect(Array.isArray(await store.getProviderRules())).toBe(true);
      });
    });

    // -------------------------------------------------------- change log

    describe('change log', () => {
      it('records every write\'s changes, in order', async () => {
        const project = newProject();
        const before = await store.latestChangeSeq();
        const a = await store.createSecurityGroup(project, { name: 'a' });
        const b = await store.createSecurityGroup(project, { name: 'b' });
        const r = await store.createRule(project, { securityGroupId: a.id, direction: 'ingress', remoteGroupId: b.id });
        const vm = await store.createInstance(project, { name: 'vm', host: 'h1', securityGroups: [a.id], networkInfo: [vif(1)] });
        await store.updateInstance(project, vm.id, { securityGroups: [a.id, b.id] });
        await store.updateInstance(project, vm.id, { host: 'h2', networkInfo: [vif(2)] });
        await store.deleteRule(project, r.id);
        const p = await store.createProviderRule({ cidr: '192.0.2.0/24' });
        await store.deleteProviderRule(p.id);
        await store.deleteInstance(project, vm.id);
        await store.deleteSecurityGroup(project, b.id);
        const def = await store.ensureDefaultSecurityGroup(project);

        const records = await store.changesSince(before);
        expect(records.map((c) => c.change)).toEqual([
          { kind: 'rules', groupId: a.id },
          { kind: 'rules', groupId: b.id },
          { kind: 'rules', groupId: a.id },
          { kind: 'instance-created', instanceId: vm.id, host: 'h1', groups: [a.id] },
          { kind: 'instance-updated', instanceId: vm.id, host: 'h1', previousHost: 'h1', membershipChanged: [b.id], groups: [a.id, b.id], networkChanged: false },
          { kind: 'instance-updated', instanceId: vm.id, host: 'h2', previousHost: 'h1', membershipChanged: [a.id, b.id], groups: [a.id, b.id], networkChanged: true },
          { kind: 'rules', groupId: a.id },
          { kind: 'provider-rules' },
          { kind: 'provider-rules' },
          { kind: 'instance-deleted', instanceId: vm.id, host: 'h2', groups: [a.id, b.id] },
          { kind: 'group-deleted', groupId: b.id },
          { kind: 'rules', groupId: def.id },
        ]);
        const seqs = records.map((c) => c.seq);
        expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
        expect(new Set(seqs).size).toBe(seqs.length);
        expect(seqs[0]).toBeGreaterThan(before);
        for (const c of records) expect(c.at).toMatch(ISO_UTC);
        expect(await store.latestChangeSeq()).toBe(seqs.at(-1));

        // Pages: `after` is exclusive, `limit` caps.
        const page = await store.changesSince(before, 3);
        expect(page).toEqual(records.slice(0, 3));
        expect(await store.changesSince(seqs[2]!, 2)).toEqual(records.slice(3, 5));
        expect(await store.changesSince(seqs.at(-1)!)).toEqual([]);
      });

      it('prunes old entries, always keeping the newest', async () => {
        const log = await harness.fresh();
        const project = newProject();
        await log.createSecurityGroup(project, { name: 'a' });
        await log.createSecurityGroup(project, { name: 'b' });
        await log.createSecurityGroup(project, { name: 'c' });
        const latest = await log.latestChangeSeq();
        expect(latest).toBe(3);
        expect(await log.oldestChangeSeq()).toBe(1);
        expect(await log.pruneChanges(3600)).toBe(0);
        expect(await log.oldestChangeSeq()).toBe(1);
        await new Promise((resolve) => setTimeout(resolve, 5));
        expect(await log.pruneChanges(0)).toBe(2);
        expect(await log.oldestChangeSeq()).toBe(latest);
        expect(await log.latestChangeSeq()).toBe(latest);
        expect((await log.changesSince(0)).map((c) => c.seq)).toEqual([latest]);
        expect(await log.pruneChanges(0)).toBe(0);
        // Numbers are never reused after a prune.
        await log.createSecurityGroup(project, { name: 'd' });
        expect(await log.latestChangeSeq()).toBe(latest + 1);
      });

      it('calls listeners after the commit, with the newest seq', async () => {
        const project = newProject();
        const seen: { seq: number; visible: Change[] }[] = [];
        const pending: Promise<void>[] = [];
        const unsubscribe = store.onChange((seq) => {
          // The change is committed and readable when the listener hears of it.
          pending.push(store.changesSince(seq - 1).then((records) => void seen.push({ seq, visible: records.map((r) => r.change) })));
        });
        try {
          const group = await store.createSecurityGroup(project, { name: 'heard' });
          const seq = await store.latestChangeSeq();
          await waitFor(() => seen.some((s) => s.seq === seq));
          await Promise.all(pending);
          expect(seen.find((s) => s.seq === seq)?.visible).toEqual([{ kind: 'rules', groupId: group.id }]);
        } finally {
          unsubscribe();
        }
        const count = seen.length;
        await store.createSecurityGroup(project, { name: 'unheard' });
        await new Promise((resolve) => setTimeout(resolve, 200));
        expect(seen.length).toBe(count);
      });

      it('logs nothing for a failed write', async () => {
        const project = newProject();
        const group = await store.createSecurityGroup(project, { name: 'g' });
        const before = await counts(store);
        await rejection(store.createRule(project, { securityGroupId: group.id, direction: 'egress' }), ConflictError);
        await rejection(store.deleteSecurityGroup(newProject(), group.id), NotFoundError);
        await rejection(store.createInstance(project, { name: 'x', host: 'h', securityGroups: [randomUUID()] }), NotFoundError);
        expect(await counts(store)).toEqual(before);
      });
    });
  });
}

describe('openStore', () => {
  it('reads the URL: PostgreSQL URLs, sqlite: prefixes, plain paths', () => {
    expect(sqlitePath('sqlite:./virtfw.db')).toBe('./virtfw.db');
    expect(sqlitePath('sqlite:///var/lib/virtfw/virtfw.db')).toBe('/var/lib/virtfw/virtfw.db');
    expect(sqlitePath('/tmp/x.db')).toBe('/tmp/x.db');
    expect(isPostgresUrl('postgres://u@h/db')).toBe(true);
    expect(isPostgresUrl('postgresql://u@h/db')).toBe(true);
    expect(isPostgresUrl('./postgres.db')).toBe(false);
  });

  it('opens an in-memory SQLite store', async () => {
    const store = openStore(':memory:');
    try {
      expect(store.dialect).toBe('sqlite');
      await store.migrate();
      const group = await store.ensureDefaultSecurityGroup('p');
      expect((await store.listSecurityGroups(null)).map((g) => g.id)).toEqual([group.id]);
    } finally {
      await store.close();
    }
  });

  it('refuses options that cannot work', () => {
    expect(() => openStore(':memory:', { schema: 'x' })).toThrow(/PostgreSQL only/);
    expect(() => openStore('sqlite:')).toThrow(/file path/);
    expect(() => openStore('postgres://postgres@127.0.0.1/test', { schema: 'Bad-Name' })).toThrow(/schema/);
    expect(() => openStore('postgres://postgres@127.0.0.1/test', { poolSize: 0 })).toThrow(/poolSize/);
  });

  it('names a channel per schema, within PostgreSQL\'s 63 bytes', () => {
    expect(channelFor(undefined)).toBe('virtfw_changes');
    expect(channelFor('abc')).toBe('virtfw_changes:abc');
    const long = channelFor('s'.repeat(63));
    expect(long.length).toBeLessThanOrEqual(63);
    expect(long).not.toBe(channelFor(`${'s'.repeat(62)}t`));
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const start = Date.now();
  while (!condition()) {
    if (Date.now() - start > timeoutMs) throw new Error('timed out waiting');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
