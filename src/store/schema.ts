/**
 * Kysely table types: one schema for SQLite and PostgreSQL. Column names are
 * snake_case in the database; the store maps them to the camelCase rows of
 * store.ts. Timestamps are ISO-8601 UTC text; JSON is stored as text, so both
 * dialects read and write the same values.
 */
import type { ColumnType, Insertable, Selectable } from 'kysely';

export interface SecurityGroupsTable {
  id: string;
  project_id: string;
  name: string;
  description: string;
  created_at: string;
  updated_at: string;
  revision_number: number;
}

export interface SecurityGroupRulesTable {
  id: string;
  security_group_id: string;
  project_id: string;
  direction: 'ingress' | 'egress';
  ethertype: 'IPv4' | 'IPv6';
  protocol: string | null;
  port_range_min: number | null;
  port_range_max: number | null;
  remote_ip_prefix: string | null;
  remote_group_id: string | null;
  description: string;
  created_at: string;
  /**
   * The rule's canonical meaning (group, direction, ethertype, protocol
   * number, port match, remote), unique: two rules that mean the same are
   * duplicates even when written differently (`tcp` and `6`, or a full port
   * range and none), and NULLs cannot slip past the unique index.
   */
  fingerprint: string;
}

export interface InstancesTable {
  id: string;
  project_id: string;
  name: string;
  host: string;
  /** Nova network model, JSON text */
  network_info: string;
  created_at: string;
  updated_at: string;
  revision_number: number;
}

export interface InstanceSecurityGroupsTable {
  instance_id: string;
  security_group_id: string;
  /** the group's place in the instance's list */
  position: number;
}

export interface ProviderRulesTable {
  id: string;
  cidr: string;
  protocol: string | null;
  from_port: number | null;
  to_port: number | null;
  created_at: string;
}

export interface ChangesTable {
  /** PostgreSQL returns bigint as text: always read through Number(). */
  seq: ColumnType<number | string, never, never>;
  at: string;
  /** a Change, JSON text */
  change: string;
}

export interface AgentStatusTable {
  host: string;
  applied_seq: ColumnType<number | string, number, number>;
  last_apply: string | null;
  last_error: string | null;
  /** InstanceStatus[], JSON text */
  instances: string;
  updated_at: string;
}

export interface Database {
  security_groups: SecurityGroupsTable;
  security_group_rules: SecurityGroupRulesTable;
  instances: InstancesTable;
  instance_security_groups: InstanceSecurityGroupsTable;
  provider_rules: ProviderRulesTable;
  changes: ChangesTable;
  agent_status: AgentStatusTable;
}

export type SecurityGroupRecord = Selectable<SecurityGroupsTable>;
export type RuleRecord = Selectable<SecurityGroupRulesTable>;
export type NewRuleRecord = Insertable<SecurityGroupRulesTable>;
export type InstanceRecordRow = Selectable<InstancesTable>;
export type ProviderRuleRecord = Selectable<ProviderRulesTable>;
