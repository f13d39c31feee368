/**
 * The store on Kysely: one query layer for SQLite and PostgreSQL. The dialect
 * differences (locking, change-log ordering and announcement, migrations,
 * error codes) live in the backends (sqlite.ts, postgres.ts).
 *
 * Every write goes through #write: one transaction that does the work, then
 * appends the write's Change(s) to the log, as its last statements, so a
 * writer holds the change-log lock (PostgreSQL) for as short a time as it can
 * and never waits for a row lock while holding it. Listeners hear about the
 * commit after it happened.
 */
import { randomUUID } from 'node:crypto';
import type { Kysely, Selectable, Transaction } from 'kysely';
import { ConflictError, FirewallError, NotFoundError, ValidationError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { parseCidr } from '../model/addresses.js';
import type { NetworkInfo, ProviderRule, SecurityGroup, SecurityGroupRule } from '../model/types.js';
import { normalizeProviderRule, normalizeRule, validateId, validateNetworkInfo } from '../model/validate.js';
import type { InstanceRecord } from '../virtapi/virtapi.js';
import type { ErrorClass, StoreBackend } from './backend.js';
import {
  checkDescription,
  checkHost,
  checkLimit,
  checkName,
  requireRecord,
  ruleFingerprint,
  storedProtocol,
} from './input.js';
import type {
  AgentStatusTable,
  Database,
  InstanceRecordRow,
  NewRuleRecord,
  ProviderRuleRecord,
  RuleRecord,
  SecurityGroupRecord,
} from './schema.js';
import type {
  AgentStatusRow,
  Change,
  ChangeRecord,
  InstanceRow,
  InstanceUpdate,
  NewInstance,
  NewProviderRule,
  NewRule,
  NewSecurityGroup,
  ProjectScope,
  ProviderRuleRow,
  RuleRow,
  SecurityGroupRow,
  Store,
} from './store.js';

export const DEFAULT_GROUP_NAME = 'default';
export const DEFAULT_GROUP_DESCRIPTION = 'Default security group';
/** How many changes changesSince returns when no limit is given. */
export const DEFAULT_CHANGES_LIMIT = 1000;
/** Attempts of a write transaction that failed for a reason a retry can cure. */
const MAX_ATTEMPTS = 8;
/** Ids per `in (...)` list. */
const CHUNK = 500;

type Trx = Transaction<Database>;
/** The store's database, or a transaction on it. */
type Db = Kysely<Database>;

interface WriteContext {
  trx: Trx;
  /** the write's changes, appended to the log at the end of the transaction */
  changes: Change[];
  /** the write's timestamp */
  now: string;
}

/** A rule before it gets its group: the default rules of new groups. */
interface RuleTemplate {
  direction: 'ingress' | 'egress';
  ethertype: 'IPv4' | 'IPv6';
  remoteSelf?: boolean;
}

const NEW_GROUP_RULES: readonly RuleTemplate[] = [
  { direction: 'egress', ethertype: 'IPv4' },
  { direction: 'egress', ethertype: 'IPv6' },
];

const DEFAULT_GROUP_RULES: readonly RuleTemplate[] = [
  ...NEW_GROUP_RULES,
  { direction: 'ingress', ethertype: 'IPv4', remoteSelf: true },
  { direction: 'ingress', ethertype: 'IPv6', remoteSelf: true },
];

function chunks<T>(items: readonly T[]): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += CHUNK) out.push(items.slice(i, i + CHUNK));
  return out;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function groupRow(r: SecurityGroupRecord): SecurityGroupRow {
  return {
    id: r.id,
    projectId: r.project_id,
    name: r.name,
    description: r.description,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    revisionNumber: Number(r.revision_number),
  };
}

function ruleRow(r: RuleRecord): RuleRow {
  return {
    id: r.id,
    securityGroupId: r.security_group_id,
    projectId: r.project_id,
    direction: r.direction,
    ethertype: r.ethertype,
    protocol: r.protocol,
    portRangeMin: r.port_range_min === null ? null : Number(r.port_range_min),
    portRangeMax: r.port_range_max === null ? null : Number(r.port_range_max),
    remoteIpPrefix: r.remote_ip_prefix,
    remoteGroupId: r.remote_group_id,
    description: r.description,
    createdAt: r.created_at,
  };
}

/** A rule as the driver reads it (VirtAPI): the row without what only the API shows. */
function driverRule(r: RuleRecord): SecurityGroupRule {
  const { projectId: _project, description: _description, createdAt: _created, ...rule } = ruleRow(r);
  return rule;
}

function instanceRow(r: InstanceRecordRow, groups: string[]): InstanceRow {
  return {
    id: r.id,
    projectId: r.project_id,
    name: r.name,
    host: r.host,
    securityGroups: groups,
    networkInfo: JSON.parse(r.network_info) as NetworkInfo,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    revisionNumber: Number(r.revision_number),
  };
}

function providerRuleRow(r: ProviderRuleRecord): ProviderRuleRow {
  return {
    id: r.id,
    cidr: r.cidr,
    protocol: r.protocol,
    fromPort: r.from_port === null ? null : Number(r.from_port),
    toPort: r.to_port === null ? null : Number(r.to_port),
    createdAt: r.created_at,
  };
}

/** Checked and canonical instance groups: ids, no repeats, in the order given. */
function checkGroupList(field: string, value: unknown): string[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw new ValidationError(field, 'must be an array of security group ids');
  const ids: string[] = [];
  value.forEach((id, i) => {
    const checked = validateId(`${field}[${i}]`, id);
    if (!ids.includes(checked)) ids.push(checked);
  });
  return ids;
}

function checkNetworkInfo(value: unknown): string {
  validateNetworkInfo(value, 'networkInfo');
  return JSON.stringify(value ?? []);
}

export interface KyselyStoreOptions {
  logger?: Logger;
}

export class KyselyStore implements Store {
  readonly dialect: 'sqlite' | 'postgres';
  readonly #b: StoreBackend;
  readonly #pg: boolean;
  readonly #logger: Logger;
  readonly #listeners = new Set<(seq: number) => void>();
  #lastDelivered = 0;
  #closed: Promise<void> | null = null;

  constructor(backend: StoreBackend, options: KyselyStoreOptions = {}) {
    this.#b = backend;
    this.dialect = backend.dialect;
    this.#pg = backend.dialect === 'postgres';
    this.#logger = options.logger ?? silentLogger;
    backend.attach((seq, force) => this.#deliver(seq, force ?? false));
  }

  get #db() {
    return this.#b.db;
  }

  async migrate(): Promise<void> {
    await this.#b.migrate();
  }

  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.#listeners.clear();
      await this.#b.close();
    })();
    return this.#closed;
  }

  // ------------------------------------------------------------ plumbing

  /**
   * Runs `fn` in a write transaction and appends its changes to the log, as
   * the transaction's last statements. Retries what a retry can cure (a lock
   * timeout, a deadlock, a row that a concurrent writer added or removed
   * under it: the retry sees it and answers properly); maps the rest.
   */
  async #write<T>(fn: (ctx: WriteContext) => Promise<T>, onUnique?: (target: string) => Promise<Error>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        const { result, seq } = await this.#b.writeTransaction(async (trx) => {
          const changes: Change[] = [];
          const result = await fn({ trx, changes, now: timestamp() });
          const seq = await this.#appendChanges(trx, changes);
          return { result, seq };
        });
        if (seq > 0) this.#b.committed(seq);
        return result;
      } catch (error) {
        if (error instanceof FirewallError) throw error;
        const kind = this.#b.classifyError(error);
        if (kind !== null && attempt < MAX_ATTEMPTS && this.#retryable(kind)) {
          if (kind.kind === 'transient') await sleep(Math.floor(Math.random() * 20 * attempt));
          continue;
        }
        throw await this.#mapError(error, kind, onUnique);
      }
    }
  }

  #retryable(kind: ErrorClass): boolean {
    // A default group made by someone else, or a referenced row that went
    // away: the next attempt reads the committed state and answers properly.
    return kind.kind === 'transient' || kind.kind === 'foreign-key' || (kind.kind === 'unique' && kind.target === 'default-group');
  }

  async #mapError(error: unknown, kind: ErrorClass | null, onUnique?: (target: string) => Promise<Error>): Promise<unknown> {
    if (kind?.kind === 'unique') {
      if (onUnique) return onUnique(kind.target);
      return new ConflictError('the resource already exists', { cause: String(error) });
    }
    if (kind?.kind === 'foreign-key') {
      return new ConflictError('a resource this write refers to was changed concurrently; try again');
    }
    return error;
  }

  async #appendChanges(trx: Trx, changes: Change[]): Promise<number> {
    if (changes.length === 0) return 0;
    await this.#b.beforeChanges(trx);
    let seq = 0;
    for (const change of changes) {
      const row = await trx
        .insertInto('changes')
        .values({ at: timestamp(), change: JSON.stringify(change) })
        .returning('seq')
        .executeTakeFirstOrThrow();
      seq = Number(row.seq);
    }
    await this.#b.afterChanges(trx, seq);
    return seq;
  }

  #deliver(seq: number, force: boolean): void {
    if (!force && seq <= this.#lastDelivered) return;
    this.#lastDelivered = Math.max(this.#lastDelivered, seq);
    for (const listener of [...this.#listeners]) {
      try {
        listener(seq);
      } catch (error) {
        this.#logger.error({ err: error, seq }, 'change listener threw');
      }
    }
  }

  // --------------------------------------------------------------- groups

  async #insertRules(ctx: WriteContext, group: SecurityGroupRecord, templates: readonly RuleTemplate[]): Promise<void> {
    const rows: NewRuleRecord[] = templates.map((t) => {
      const remoteGroupId = t.remoteSelf ? group.id : null;
      const normalized = normalizeRule({ direction: t.direction, ethertype: t.ethertype, remoteGroupId });
      return {
        id: randomUUID(),
        security_group_id: group.id,
        project_id: group.project_id,
        direction: t.direction,
        ethertype: t.ethertype,
        protocol: null,
        port_range_min: null,
        port_range_max: null,
        remote_ip_prefix: null,
        remote_group_id: remoteGroupId,
        description: '',
        created_at: ctx.now,
        fingerprint: ruleFingerprint(group.id, normalized),
      };
    });
    await ctx.trx.insertInto('security_group_rules').values(rows).execute();
  }

  async #insertGroup(ctx: WriteContext, projectId: string, name: string, description: string): Promise<SecurityGroupRecord> {
    const group: SecurityGroupRecord = {
      id: randomUUID(),
      project_id: projectId,
      name,
      description,
      created_at: ctx.now,
      updated_at: ctx.now,
      revision_number: 1,
    };
    await ctx.trx.insertInto('security_groups').values(group).execute();
    return group;
  }

  async #findDefault(db: Db, projectId: string): Promise<SecurityGroupRecord | undefined> {
    return db
      .selectFrom('security_groups')
      .selectAll()
      .where('project_id', '=', projectId)
      .where('name', '=', DEFAULT_GROUP_NAME)
      .executeTakeFirst();
  }

  /** The project's default group, made in this transaction when it has none. */
  async #ensureDefault(ctx: WriteContext, projectId: string): Promise<SecurityGroupRecord> {
    const existing = await this.#findDefault(ctx.trx, projectId);
    if (existing) return existing;
    const group = await this.#insertGroup(ctx, projectId, DEFAULT_GROUP_NAME, DEFAULT_GROUP_DESCRIPTION);
    await this.#insertRules(ctx, group, DEFAULT_GROUP_RULES);
    ctx.changes.push({ kind: 'rules', groupId: group.id });
    return group;
  }

  async createSecurityGroup(projectId: string, input: NewSecurityGroup): Promise<SecurityGroupRow> {
    const project = validateId('projectId', projectId);
    const body = requireRecord('securityGroup', input);
    const name = checkName('name', body.name);
    const description = checkDescription('description', body.description);
    if (name === DEFAULT_GROUP_NAME) {
      throw new ConflictError(`Security group name "${DEFAULT_GROUP_NAME}" is reserved for the project's default group`, { type: 'SecurityGroupDefaultAlreadyExists' });
    }
    const group = await this.#write(async (ctx) => {
      const group = await this.#insertGroup(ctx, project, name, description);
      await this.#insertRules(ctx, group, NEW_GROUP_RULES);
      ctx.changes.push({ kind: 'rules', groupId: group.id });
      return group;
    });
    return groupRow(group);
  }

  async ensureDefaultSecurityGroup(projectId: string): Promise<SecurityGroupRow> {
    const project = validateId('projectId', projectId);
    const existing = await this.#findDefault(this.#db, project);
    if (existing) return groupRow(existing);
    return groupRow(await this.#write((ctx) => this.#ensureDefault(ctx, project)));
  }

  async listSecurityGroups(scope: ProjectScope): Promise<SecurityGroupRow[]> {
    const rows = await this.#db
      .selectFrom('security_groups')
      .selectAll()
      .$if(scope !== null, (qb) => qb.where('project_id', '=', scope as string))
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map(groupRow);
  }

  async #group(db: Db, scope: ProjectScope, id: string, forUpdate = false): Promise<SecurityGroupRecord> {
    const row = await db
      .selectFrom('security_groups')
      .selectAll()
      .where('id', '=', id)
      .$if(scope !== null, (qb) => qb.where('project_id', '=', scope as string))
      .$if(forUpdate && this.#pg, (qb) => qb.forUpdate())
      .executeTakeFirst();
    if (!row) throw new NotFoundError('security group', String(id));
    return row;
  }

  async getSecurityGroup(scope: ProjectScope, id: string): Promise<SecurityGroupRow> {
    return groupRow(await this.#group(this.#db, scope, id));
  }

  async updateSecurityGroup(scope: ProjectScope, id: string, input: Partial<NewSecurityGroup>): Promise<SecurityGroupRow> {
    const body = requireRecord('securityGroup', input);
    const name = body.name === undefined ? undefined : checkName('name', body.name);
    const description = body.description === undefined ? undefined : checkDescription('description', body.description);
    const updated = await this.#write(async (ctx) => {
      const group = await this.#group(ctx.trx, scope, id, true);
      if (name !== undefined && name !== group.name) {
        if (group.name === DEFAULT_GROUP_NAME) throw new ConflictError('The default security group cannot be renamed', { type: 'SecurityGroupCannotUpdateDefault' });
        if (name === DEFAULT_GROUP_NAME) {
          throw new ConflictError(`Security group name "${DEFAULT_GROUP_NAME}" is reserved for the project's default group`, { type: 'SecurityGroupDefaultAlreadyExists' });
        }
      }
      const next: SecurityGroupRecord = {
        ...group,
        name: name ?? group.name,
        description: description ?? group.description,
        updated_at: ctx.now,
        revision_number: Number(group.revision_number) + 1,
      };
      await ctx.trx
        .updateTable('security_groups')
        .set({ name: next.name, description: next.description, updated_at: next.updated_at, revision_number: next.revision_number })
        .where('id', '=', group.id)
        .execute();
      return next;
    });
    return groupRow(updated);
  }

  async deleteSecurityGroup(scope: ProjectScope, id: string): Promise<void> {
    await this.#write(async (ctx) => {
      const group = await this.#group(ctx.trx, scope, id, true);
      if (group.name === DEFAULT_GROUP_NAME) throw new ConflictError('The default security group cannot be deleted', { type: 'SecurityGroupCannotRemoveDefault' });
      const member = await ctx.trx
        .selectFrom('instance_security_groups')
        .select('instance_id')
        .where('security_group_id', '=', group.id)
        .limit(1)
        .executeTakeFirst();
      if (member) {
        throw new ConflictError(`Security group ${group.id} is in use by instance ${member.instance_id}`, {
          securityGroupId: group.id,
          instanceId: member.instance_id,
          type: 'SecurityGroupInUse',
        });
      }
      const referrer = await ctx.trx
        .selectFrom('security_group_rules')
        .select(['id', 'security_group_id'])
        .where('remote_group_id', '=', group.id)
        .where('security_group_id', '!=', group.id)
        .limit(1)
        .executeTakeFirst();
      if (referrer) {
        throw new ConflictError(
          `Security group ${group.id} is in use by rule ${referrer.id} of security group ${referrer.security_group_id}`,
          { securityGroupId: group.id, ruleId: referrer.id, type: 'SecurityGroupInUse' },
        );
      }
      await ctx.trx.deleteFrom('security_group_rules').where('security_group_id', '=', group.id).execute();
      await ctx.trx.deleteFrom('security_groups').where('id', '=', group.id).execute();
      ctx.changes.push({ kind: 'group-deleted', groupId: group.id });
    });
  }

  // ---------------------------------------------------------------- rules

  async #duplicateOf(fingerprint: string): Promise<Error> {
    const existing = await this.#db
      .selectFrom('security_group_rules')
      .select('id')
      .where('fingerprint', '=', fingerprint)
      .executeTakeFirst();
    return existing
      ? new ConflictError(`Security group rule already exists. Rule id is ${existing.id}.`, { ruleId: existing.id, type: 'SecurityGroupRuleExists' })
      : new ConflictError('Security group rule already exists.', { type: 'SecurityGroupRuleExists' });
  }

  async createRule(scope: ProjectScope, input: NewRule): Promise<RuleRow> {
    const body = requireRecord('rule', input);
    const groupId = validateId('rule.securityGroupId', body.securityGroupId);
    if (body.direction === undefined || body.direction === null) {
      throw new ValidationError('rule.direction', 'is required (ingress or egress)');
    }
    const normalized = normalizeRule(
      {
        direction: body.direction,
        ethertype: body.ethertype,
        protocol: body.protocol,
        portRangeMin: body.portRangeMin,
        portRangeMax: body.portRangeMax,
        remoteIpPrefix: body.remoteIpPrefix,
        remoteGroupId: body.remoteGroupId,
      },
      'rule',
    );
    const description = checkDescription('rule.description', body.description);
    const remoteGroupId = normalized.remote.kind === 'group' ? normalized.remote.groupId : null;
    const prefix = body.remoteIpPrefix === undefined || body.remoteIpPrefix === null ? null : parseCidr(body.remoteIpPrefix);
    const fingerprint = ruleFingerprint(groupId, normalized);

    const row = await this.#write(
      async (ctx) => {
        // Locks the group: its rules and revision change only one writer at a time.
        const group = await this.#group(ctx.trx, scope, groupId, true);
        if (remoteGroupId !== null && remoteGroupId !== group.id) {
          await this.#group(ctx.trx, scope, remoteGroupId);
        }
        const duplicate = await ctx.trx
          .selectFrom('security_group_rules')
          .select('id')
          .where('fingerprint', '=', fingerprint)
          .executeTakeFirst();
        if (duplicate) {
          throw new ConflictError(`Security group rule already exists. Rule id is ${duplicate.id}.`, { ruleId: duplicate.id, type: 'SecurityGroupRuleExists' });
        }
        const rule: RuleRecord = {
          id: randomUUID(),
          security_group_id: group.id,
          project_id: group.project_id,
          direction: normalized.direction,
          ethertype: normalized.version === 4 ? 'IPv4' : 'IPv6',
          protocol: storedProtocol(body.protocol),
          port_range_min: (body.portRangeMin as number | null | undefined) ?? null,
          port_range_max: (body.portRangeMax as number | null | undefined) ?? null,
          remote_ip_prefix: prefix?.cidr ?? null,
          remote_group_id: remoteGroupId,
          description,
          created_at: ctx.now,
          fingerprint,
        };
        await ctx.trx.insertInto('security_group_rules').values(rule).execute();
        await this.#touchGroup(ctx, group);
        ctx.changes.push({ kind: 'rules', groupId: group.id });
        return rule;
      },
      (target) => (target === 'rule' ? this.#duplicateOf(fingerprint) : Promise.resolve(new ConflictError('the rule already exists', { type: 'SecurityGroupRuleExists' }))),
    );
    return ruleRow(row);
  }

  async #touchGroup(ctx: WriteContext, group: SecurityGroupRecord): Promise<void> {
    await ctx.trx
      .updateTable('security_groups')
      .set({ updated_at: ctx.now, revision_number: Number(group.revision_number) + 1 })
      .where('id', '=', group.id)
      .execute();
  }

  async listRules(scope: ProjectScope, filter: { securityGroupId?: string } = {}): Promise<RuleRow[]> {
    const groupId = filter.securityGroupId;
    const rows = await this.#db
      .selectFrom('security_group_rules')
      .selectAll()
      .$if(scope !== null, (qb) => qb.where('project_id', '=', scope as string))
      .$if(groupId !== undefined, (qb) => qb.where('security_group_id', '=', groupId as string))
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map(ruleRow);
  }

  async #rule(db: Db, scope: ProjectScope, id: string): Promise<RuleRecord> {
    const row = await db
      .selectFrom('security_group_rules')
      .selectAll()
      .where('id', '=', id)
      .$if(scope !== null, (qb) => qb.where('project_id', '=', scope as string))
      .executeTakeFirst();
    if (!row) throw new NotFoundError('security group rule', String(id));
    return row;
  }

  async getRule(scope: ProjectScope, id: string): Promise<RuleRow> {
    return ruleRow(await this.#rule(this.#db, scope, id));
  }

  async deleteRule(scope: ProjectScope, id: string): Promise<void> {
    await this.#write(async (ctx) => {
      const rule = await this.#rule(ctx.trx, scope, id);
      const group = await this.#group(ctx.trx, null, rule.security_group_id, true).catch((error: unknown) => {
        // The group (and with it the rule) was deleted concurrently.
        throw error instanceof NotFoundError ? new NotFoundError('security group rule', String(id)) : error;
      });
      const deleted = await ctx.trx.deleteFrom('security_group_rules').where('id', '=', rule.id).executeTakeFirst();
      if (Number(deleted.numDeletedRows) === 0) throw new NotFoundError('security group rule', String(id));
      await this.#touchGroup(ctx, group);
      ctx.changes.push({ kind: 'rules', groupId: group.id });
    });
  }

  // ------------------------------------------------------------ instances

  /** The given groups, checked to exist in the project; none: the project's default group. */
  async #resolveGroups(ctx: WriteContext, projectId: string, groupIds: string[]): Promise<string[]> {
    if (groupIds.length === 0) return [(await this.#ensureDefault(ctx, projectId)).id];
    const found = new Set<string>();
    for (const part of chunks(groupIds)) {
      const rows = await ctx.trx
        .selectFrom('security_groups')
        .select('id')
        .where('project_id', '=', projectId)
        .where('id', 'in', part)
        .execute();
      for (const r of rows) found.add(r.id);
    }
    const missing = groupIds.find((id) => !found.has(id));
    if (missing !== undefined) throw new NotFoundError('security group', missing);
    return groupIds;
  }

  async #insertMemberships(trx: Trx, instanceId: string, groups: string[]): Promise<void> {
    if (groups.length === 0) return;
    await trx
      .insertInto('instance_security_groups')
      .values(groups.map((groupId, position) => ({ instance_id: instanceId, security_group_id: groupId, position })))
      .execute();
  }

  async #groupsOf(db: Db, instanceId: string): Promise<string[]> {
    const rows = await db
      .selectFrom('instance_security_groups')
      .select('security_group_id')
      .where('instance_id', '=', instanceId)
      .orderBy('position')
      .execute();
    return rows.map((r) => r.security_group_id);
  }

  async createInstance(projectId: string, input: NewInstance): Promise<InstanceRow> {
    const project = validateId('projectId', projectId);
    const body = requireRecord('instance', input);
    const id = body.id === undefined || body.id === null ? randomUUID() : validateId('id', body.id);
    const name = checkName('name', body.name ?? '');
    const host = checkHost('host', body.host);
    const requested = checkGroupList('securityGroups', body.securityGroups);
    const networkInfo = checkNetworkInfo(body.networkInfo);

    const created = await this.#write(
      async (ctx) => {
        const existing = await ctx.trx.selectFrom('instances').select('id').where('id', '=', id).executeTakeFirst();
        if (existing) throw new ConflictError(`Instance ${id} already exists`, { instanceId: id, type: 'InstanceExists' });
        const groups = await this.#resolveGroups(ctx, project, requested);
        const row: InstanceRecordRow = {
          id,
          project_id: project,
          name,
          host,
          network_info: networkInfo,
          created_at: ctx.now,
          updated_at: ctx.now,
          revision_number: 1,
        };
        await ctx.trx.insertInto('instances').values(row).execute();
        await this.#insertMemberships(ctx.trx, id, groups);
        ctx.changes.push({ kind: 'instance-created', instanceId: id, host, groups });
        return instanceRow(row, groups);
      },
      async (target) =>
        target === 'instance'
          ? new ConflictError(`Instance ${id} already exists`, { instanceId: id, type: 'InstanceExists' })
          : new ConflictError('the instance conflicts with an existing resource'),
    );
    return created;
  }

  async #withGroups(rows: InstanceRecordRow[]): Promise<InstanceRow[]> {
    const groups = new Map<string, string[]>(rows.map((r) => [r.id, []]));
    for (const part of chunks(rows.map((r) => r.id))) {
      const memberships = await this.#db
        .selectFrom('instance_security_groups')
        .select(['instance_id', 'security_group_id'])
        .where('instance_id', 'in', part)
        .orderBy('instance_id')
        .orderBy('position')
        .execute();
      for (const m of memberships) groups.get(m.instance_id)?.push(m.security_group_id);
    }
    return rows.map((r) => instanceRow(r, groups.get(r.id) ?? []));
  }

  async listInstances(scope: ProjectScope, filter: { host?: string } = {}): Promise<InstanceRow[]> {
    const host = filter.host;
    const rows = await this.#db
      .selectFrom('instances')
      .selectAll()
      .$if(scope !== null, (qb) => qb.where('project_id', '=', scope as string))
      .$if(host !== undefined, (qb) => qb.where('host', '=', host as string))
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return this.#withGroups(rows);
  }

  async #instance(db: Db, scope: ProjectScope, id: string, forUpdate = false): Promise<InstanceRecordRow> {
    const row = await db
      .selectFrom('instances')
      .selectAll()
      .where('id', '=', id)
      .$if(scope !== null, (qb) => qb.where('project_id', '=', scope as string))
      .$if(forUpdate && this.#pg, (qb) => qb.forUpdate())
      .executeTakeFirst();
    if (!row) throw new NotFoundError('instance', String(id));
    return row;
  }

  async getInstance(scope: ProjectScope, id: string): Promise<InstanceRow> {
    const row = await this.#instance(this.#db, scope, id);
    return instanceRow(row, await this.#groupsOf(this.#db, row.id));
  }

  async updateInstance(scope: ProjectScope, id: string, input: InstanceUpdate): Promise<InstanceRow> {
    const body = requireRecord('instance', input);
    const name = body.name === undefined ? undefined : checkName('name', body.name);
    const host = body.host === undefined ? undefined : checkHost('host', body.host);
    const requested = body.securityGroups === undefined ? undefined : checkGroupList('securityGroups', body.securityGroups);
    const networkInfo = body.networkInfo === undefined ? undefined : checkNetworkInfo(body.networkInfo);

    return this.#write(async (ctx) => {
      // Locks the instance: concurrent updates apply one after the other, each to the latest state.
      const current = await this.#instance(ctx.trx, scope, id, true);
      const before = await this.#groupsOf(ctx.trx, current.id);
      const after = requested === undefined ? before : await this.#resolveGroups(ctx, current.project_id, requested);
      const next: InstanceRecordRow = {
        ...current,
        name: name ?? current.name,
        host: host ?? current.host,
        network_info: networkInfo ?? current.network_info,
        updated_at: ctx.now,
        revision_number: Number(current.revision_number) + 1,
      };
      await ctx.trx
        .updateTable('instances')
        .set({
          name: next.name,
          host: next.host,
          network_info: next.network_info,
          updated_at: next.updated_at,
          revision_number: next.revision_number,
        })
        .where('id', '=', current.id)
        .execute();
      if (before.join('\n') !== after.join('\n')) {
        await ctx.trx.deleteFrom('instance_security_groups').where('instance_id', '=', current.id).execute();
        await this.#insertMemberships(ctx.trx, current.id, after);
      }
      const networkChanged = next.network_info !== current.network_info;
      const beforeSet = new Set(before);
      const afterSet = new Set(after);
      const membershipChanged = new Set<string>();
      for (const g of after) if (networkChanged || !beforeSet.has(g)) membershipChanged.add(g);
      for (const g of before) if (!afterSet.has(g)) membershipChanged.add(g);
      ctx.changes.push({
        kind: 'instance-updated',
        instanceId: current.id,
        host: next.host,
        previousHost: current.host,
        membershipChanged: [...membershipChanged],
        groups: after,
        networkChanged,
      });
      return instanceRow(next, after);
    });
  }

  async deleteInstance(scope: ProjectScope, id: string): Promise<void> {
    await this.#write(async (ctx) => {
      const current = await this.#instance(ctx.trx, scope, id, true);
      const groups = await this.#groupsOf(ctx.trx, current.id);
      await ctx.trx.deleteFrom('instance_security_groups').where('instance_id', '=', current.id).execute();
      await ctx.trx.deleteFrom('instances').where('id', '=', current.id).execute();
      ctx.changes.push({ kind: 'instance-deleted', instanceId: current.id, host: current.host, groups });
    });
  }

  async instancesOnHost(host: string): Promise<InstanceRow[]> {
    return this.listInstances(null, { host });
  }

  // ------------------------------------------------------ agents' reports

  async reportAgentStatus(status: Omit<AgentStatusRow, 'updatedAt'>): Promise<void> {
    const host = checkHost('host', status.host);
    const values = {
      applied_seq: status.appliedSeq,
      last_apply: status.lastApply,
      last_error: status.lastError,
      instances: JSON.stringify(status.instances),
      updated_at: timestamp(),
    };
    await this.#b.writeTransaction((trx) =>
      trx
        .insertInto('agent_status')
        .values({ host, ...values })
        .onConflict((oc) => oc.column('host').doUpdateSet(values))
        .execute(),
    );
  }

  async getAgentStatus(host: string): Promise<AgentStatusRow | null> {
    const row = await this.#db.selectFrom('agent_status').selectAll().where('host', '=', host).executeTakeFirst();
    return row ? agentStatusRow(row) : null;
  }

  async listAgentStatus(): Promise<AgentStatusRow[]> {
    const rows = await this.#db.selectFrom('agent_status').selectAll().orderBy('host').execute();
    return rows.map(agentStatusRow);
  }

  // ------------------------------------------------------- provider rules

  async createProviderRule(input: NewProviderRule): Promise<ProviderRuleRow> {
    const body = requireRecord('providerRule', input);
    const normalized = normalizeProviderRule(
      { cidr: body.cidr as string, protocol: body.protocol, fromPort: body.fromPort, toPort: body.toPort },
      'providerRule',
    );
    const row = await this.#write(async (ctx) => {
      const rule: ProviderRuleRecord = {
        id: randomUUID(),
        cidr: normalized.cidr,
        protocol: storedProtocol(body.protocol),
        from_port: (body.fromPort as number | null | undefined) ?? null,
        to_port: (body.toPort as number | null | undefined) ?? null,
        created_at: ctx.now,
      };
      await ctx.trx.insertInto('provider_rules').values(rule).execute();
      ctx.changes.push({ kind: 'provider-rules' });
      return rule;
    });
    return providerRuleRow(row);
  }

  async listProviderRules(): Promise<ProviderRuleRow[]> {
    const rows = await this.#db.selectFrom('provider_rules').selectAll().orderBy('created_at').orderBy('id').execute();
    return rows.map(providerRuleRow);
  }

  async deleteProviderRule(id: string): Promise<void> {
    await this.#write(async (ctx) => {
      const deleted = await ctx.trx.deleteFrom('provider_rules').where('id', '=', id).executeTakeFirst();
      if (Number(deleted.numDeletedRows) === 0) throw new NotFoundError('provider rule', String(id));
      ctx.changes.push({ kind: 'provider-rules' });
    });
  }

  // ----------------------------------------------------------- change log

  async changesSince(after: number, limit?: number): Promise<ChangeRecord[]> {
    if (typeof after !== 'number' || !Number.isSafeInteger(after)) {
      throw new ValidationError('after', `${String(after)} is not an integer`);
    }
    const max = checkLimit('limit', limit, DEFAULT_CHANGES_LIMIT);
    const rows = await this.#db
      .selectFrom('changes')
      .selectAll()
      .where('seq', '>', after)
      .orderBy('seq')
      .limit(max)
      .execute();
    return rows.map((r) => ({ seq: Number(r.seq), at: r.at, change: JSON.parse(r.change) as Change }));
  }

  async latestChangeSeq(): Promise<number> {
    const row = await this.#db
      .selectFrom('changes')
      .select((eb) => eb.fn.max('seq').as('seq'))
      .executeTakeFirst();
    return Number(row?.seq ?? 0);
  }

  async oldestChangeSeq(): Promise<number> {
    const row = await this.#db
      .selectFrom('changes')
      .select((eb) => eb.fn.min('seq').as('seq'))
      .executeTakeFirst();
    return Number(row?.seq ?? 0);
  }

  async pruneChanges(keepSeconds: number): Promise<number> {
    if (typeof keepSeconds !== 'number' || !Number.isFinite(keepSeconds) || keepSeconds < 0) {
      throw new ValidationError('keepSeconds', `${String(keepSeconds)} is not a non-negative number of seconds`);
    }
    const cutoff = `${new Date(Date.now() - keepSeconds * 1000).toISOString().slice(0, 23)}000Z`;
    return this.#write(async ({ trx }) => {
      // Drop a prefix of the log (everything up to the newest entry older than
      // the cutoff), never the newest entry, so the log stays contiguous.
      const newest = await trx
        .selectFrom('changes')
        .select((eb) => eb.fn.max('seq').as('seq'))
        .executeTakeFirst();
      const old = await trx
        .selectFrom('changes')
        .select((eb) => eb.fn.max('seq').as('seq'))
        .where('at', '<', cutoff)
        .executeTakeFirst();
      const upTo = Math.min(Number(old?.seq ?? 0), Number(newest?.seq ?? 0) - 1);
      if (upTo <= 0) return 0;
      const deleted = await trx.deleteFrom('changes').where('seq', '<=', upTo).executeTakeFirst();
      return Number(deleted.numDeletedRows);
    });
  }

  onChange(listener: (seq: number) => void): () => void {
    if (typeof listener !== 'function') throw new TypeError('listener must be a function');
    // A wrapper per subscription, so one function may subscribe twice.
    const wrapped = (seq: number): void => listener(seq);
    this.#listeners.add(wrapped);
    this.#b.startListening();
    return () => {
      this.#listeners.delete(wrapped);
    };
  }

  // -------------------------------------------------------------- VirtAPI

  async getInstanceSecurityGroups(instanceId: string): Promise<SecurityGroup[]> {
    const rows = await this.#db
      .selectFrom('instance_security_groups as m')
      .innerJoin('security_groups as g', 'g.id', 'm.security_group_id')
      .select(['g.id', 'g.name'])
      .where('m.instance_id', '=', instanceId)
      .orderBy('m.position')
      .execute();
    return rows.map((r) => ({ id: r.id, name: r.name }));
  }

  async getSecurityGroupRules(groupId: string): Promise<SecurityGroupRule[]> {
    const rows = await this.#db
      .selectFrom('security_group_rules')
      .selectAll()
      .where('security_group_id', '=', groupId)
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map(driverRule);
  }

  async getSecurityGroupMembers(groupId: string): Promise<InstanceRecord[]> {
    const rows = await this.#db
      .selectFrom('instance_security_groups as m')
      .innerJoin('instances as i', 'i.id', 'm.instance_id')
      .select(['i.id', 'i.name', 'i.host', 'i.network_info'])
      .where('m.security_group_id', '=', groupId)
      .orderBy('i.created_at')
      .orderBy('i.id')
      .execute();
    return rows.map((r) => ({
      instance: { id: r.id, name: r.name, host: r.host },
      networkInfo: JSON.parse(r.network_info) as NetworkInfo,
    }));
  }

  async getProviderRules(): Promise<ProviderRule[]> {
    const rows = await this.#db.selectFrom('provider_rules').selectAll().orderBy('created_at').orderBy('id').execute();
    return rows.map((r) => ({
      id: r.id,
      cidr: r.cidr,
      protocol: r.protocol,
      fromPort: r.from_port === null ? null : Number(r.from_port),
      toPort: r.to_port === null ? null : Number(r.to_port),
    }));
  }
}

let lastMicros = 0;

/**
 * An ISO-8601 UTC time with microseconds that never repeats or goes back
 * within this process, so rows created in one millisecond still list in the
 * order they were made (lists sort by created_at, then id).
 */
export function timestamp(): string {
  const micros = Math.max(Date.now() * 1000, lastMicros + 1);
  lastMicros = micros;
  const iso = new Date(Math.floor(micros / 1000)).toISOString();
  return `${iso.slice(0, 23)}${String(micros % 1000).padStart(3, '0')}Z`;
}

function agentStatusRow(r: Selectable<AgentStatusTable>): AgentStatusRow {
  return {
    host: r.host,
    appliedSeq: Number(r.applied_seq),
    lastApply: r.last_apply,
    lastError: r.last_error,
    instances: JSON.parse(r.instances) as AgentStatusRow['instances'],
    updatedAt: r.updated_at,
  };
}
