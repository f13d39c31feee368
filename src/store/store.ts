/**
 * The data store: security groups, rules, instances and provider rules, with
 * a durable change log. SQLite (embedded, the default) and PostgreSQL share
 * one schema and one query layer (Kysely); `openStore(url)` picks the dialect.
 *
 * Every write runs in one transaction that also appends its change(s) to the
 * change log, so a reader of the log never misses a committed change and
 * never sees an uncommitted one. Changes are numbered in commit order.
 *
 * Project scoping: methods that take `projectId` only see that project's
 * resources; `null` means admin (every project). A resource of another
 * project is reported as not found, never as forbidden.
 */
import type { InstanceStatus } from '../drivers/firewall-driver.js';
import type { Instance, NetworkInfo } from '../model/types.js';
import type { VirtAPI } from '../virtapi/virtapi.js';

export type ProjectScope = string | null;

export interface SecurityGroupRow {
  id: string;
  projectId: string;
  name: string;
  description: string;
  createdAt: string;
  updatedAt: string;
  revisionNumber: number;
}

export interface RuleRow {
  id: string;
  securityGroupId: string;
  projectId: string;
  direction: 'ingress' | 'egress';
  ethertype: 'IPv4' | 'IPv6';
  /** lower-case protocol name or decimal number as text; null = every protocol */
  protocol: string | null;
  portRangeMin: number | null;
  portRangeMax: number | null;
  /** canonical CIDR */
  remoteIpPrefix: string | null;
  remoteGroupId: string | null;
  description: string;
  createdAt: string;
}

export interface InstanceRow {
  id: string;
  projectId: string;
  name: string;
  host: string;
  /** group ids, in the order given */
  securityGroups: string[];
  networkInfo: NetworkInfo;
  createdAt: string;
  updatedAt: string;
  revisionNumber: number;
}

export interface ProviderRuleRow {
  id: string;
  cidr: string;
  protocol: string | null;
  fromPort: number | null;
  toPort: number | null;
  createdAt: string;
}

export interface NewSecurityGroup {
  name: string;
  description?: string;
}

export interface NewRule {
  securityGroupId: string;
  direction: 'ingress' | 'egress';
  ethertype?: 'IPv4' | 'IPv6';
  protocol?: string | number | null;
  portRangeMin?: number | null;
  portRangeMax?: number | null;
  remoteIpPrefix?: string | null;
  remoteGroupId?: string | null;
  description?: string;
}

export interface NewInstance {
  id?: string;
  name: string;
  host: string;
  /** empty or missing: the project's `default` group */
  securityGroups?: string[];
  networkInfo?: NetworkInfo;
}

export interface InstanceUpdate {
  name?: string;
  host?: string;
  securityGroups?: string[];
  networkInfo?: NetworkInfo;
}

export interface NewProviderRule {
  cidr: string;
  protocol?: string | number | null;
  fromPort?: number | null;
  toPort?: number | null;
}

/** What a host's agent last reported. */
export interface AgentStatusRow {
  host: string;
  /** the last change-log entry applied to the kernel */
  appliedSeq: number;
  lastApply: string | null;
  lastError: string | null;
  instances: InstanceStatus[];
  updatedAt: string;
}

/**
 * What a committed write changed. The agent turns each into the driver call
 * the seed names for it (see agent/).
 */
export type Change =
  | { kind: 'rules'; groupId: string }
  | { kind: 'group-deleted'; groupId: string }
  | { kind: 'instance-created'; instanceId: string; host: string; groups: string[] }
  | {
      kind: 'instance-updated';
      instanceId: string;
      host: string;
      previousHost: string;
      /** groups the instance joined or left (their member lists changed) */
      membershipChanged: string[];
      groups: string[];
      networkChanged: boolean;
    }
  | { kind: 'instance-deleted'; instanceId: string; host: string; groups: string[] }
  | { kind: 'provider-rules' };

export interface ChangeRecord {
  seq: number;
  at: string;
  change: Change;
}

export interface Store extends VirtAPI {
  readonly dialect: 'sqlite' | 'postgres';

  /** Runs pending migrations (idempotent; safe with several processes starting at once). */
  migrate(): Promise<void>;
  close(): Promise<void>;

  // ------------------------------------------------------------- groups
  /** A new group gets Neutron's default egress rules (IPv4 and IPv6, any). Name `default` is reserved. */
  createSecurityGroup(projectId: string, input: NewSecurityGroup): Promise<SecurityGroupRow>;
  /**
   * The project's `default` group, made on first use: egress any (IPv4, IPv6)
   * and ingress from its own members (IPv4, IPv6).
   */
  ensureDefaultSecurityGroup(projectId: string): Promise<SecurityGroupRow>;
  listSecurityGroups(scope: ProjectScope): Promise<SecurityGroupRow[]>;
  getSecurityGroup(scope: ProjectScope, id: string): Promise<SecurityGroupRow>;
  /** Renaming the default group, or naming another group `default`, is a conflict. */
  updateSecurityGroup(scope: ProjectScope, id: string, input: Partial<NewSecurityGroup>): Promise<SecurityGroupRow>;
  /** Conflict if an instance uses it or another group's rule names it; the default group cannot be deleted. */
  deleteSecurityGroup(scope: ProjectScope, id: string): Promise<void>;

  // -------------------------------------------------------------- rules
  /** Conflict for a duplicate of an existing rule of the group; not found for an unknown group or remote group. */
  createRule(scope: ProjectScope, input: NewRule): Promise<RuleRow>;
  listRules(scope: ProjectScope, filter?: { securityGroupId?: string }): Promise<RuleRow[]>;
  getRule(scope: ProjectScope, id: string): Promise<RuleRow>;
  deleteRule(scope: ProjectScope, id: string): Promise<void>;

  // ---------------------------------------------------------- instances
  /** `projectId` owns it; with no groups it joins the project's `default` group. */
  createInstance(projectId: string, input: NewInstance): Promise<InstanceRow>;
  listInstances(scope: ProjectScope, filter?: { host?: string }): Promise<InstanceRow[]>;
  getInstance(scope: ProjectScope, id: string): Promise<InstanceRow>;
  updateInstance(scope: ProjectScope, id: string, input: InstanceUpdate): Promise<InstanceRow>;
  deleteInstance(scope: ProjectScope, id: string): Promise<void>;

  // ----------------------------------------------------- provider rules
  createProviderRule(input: NewProviderRule): Promise<ProviderRuleRow>;
  listProviderRules(): Promise<ProviderRuleRow[]>;
  deleteProviderRule(id: string): Promise<void>;

  // --------------------------------------------------------- change log
  /** Changes with seq > `after`, oldest first, at most `limit`. */
  changesSince(after: number, limit?: number): Promise<ChangeRecord[]>;
  /** The newest seq (0 when the log is empty). */
  latestChangeSeq(): Promise<number>;
  /** The oldest seq still in the log (0 when empty); older ones were pruned. */
  oldestChangeSeq(): Promise<number>;
  /** Drops log entries older than `keep` seconds, always keeping the newest. Returns how many were dropped. */
  pruneChanges(keepSeconds: number): Promise<number>;
  /**
   * Calls `listener` after each commit of this store's process (SQLite), or on
   * every NOTIFY from any process (PostgreSQL). Returns an unsubscribe function.
   */
  onChange(listener: (seq: number) => void): () => void;

  // -------------------------------------------------------------- reads
  instancesOnHost(host: string): Promise<InstanceRow[]>;

  // ----------------------------------------------------- agents' reports
  /** Records (replaces) what a host's agent last did. Not a change: agents do not react to it. */
  reportAgentStatus(status: Omit<AgentStatusRow, 'updatedAt'>): Promise<void>;
  getAgentStatus(host: string): Promise<AgentStatusRow | null>;
  listAgentStatus(): Promise<AgentStatusRow[]>;
}

/** The instance part of an InstanceRow, as the driver takes it. */
export function driverInstance(row: InstanceRow): Instance {
  return { id: row.id, name: row.name, host: row.host };
}
