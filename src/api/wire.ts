/**
 * Wire (Neutron JSON, snake_case) ⇄ store rows (camelCase). Pure functions:
 * no I/O, no checks beyond what the types say — the schemas checked the
 * request shape, and the store checks what the values mean.
 */
import type { InstanceStatus } from '../drivers/firewall-driver.js';
import type { NetworkInfo } from '../model/types.js';
import type {
  InstanceRow,
  InstanceUpdate,
  NewInstance,
  NewProviderRule,
  NewRule,
  NewSecurityGroup,
  ProviderRuleRow,
  RuleRow,
  SecurityGroupRow,
} from '../store/store.js';
import type {
  AgentStatusWire,
  Instance,
  InstanceCreateBody,
  InstanceUpdateBody,
  ProviderFirewallRule,
  ProviderFirewallRuleCreateBody,
  SecurityGroup,
  SecurityGroupCreateBody,
  SecurityGroupRule,
  SecurityGroupRuleCreateBody,
  SecurityGroupUpdateBody,
} from './schemas.js';

/** What an agent reports about the host it filters (GET /v2.0/status). */
export interface AgentStatus {
  host: string;
  instances: InstanceStatus[];
  /** ISO time of the last successful apply */
  lastApply: string | null;
  /** the error of the last failed apply, null once an apply succeeds */
  lastError: string | null;
  /** the change-log seq the host's rules reflect */
  appliedSeq: number;
  /** when the agent last reported it (absent for the agent of this process) */
  updatedAt?: string | null;
}

// ------------------------------------------------------------- store → wire

export function ruleToWire(row: RuleRow): SecurityGroupRule {
  return {
    id: row.id,
    security_group_id: row.securityGroupId,
    direction: row.direction,
    ethertype: row.ethertype,
    protocol: row.protocol,
    port_range_min: row.portRangeMin,
    port_range_max: row.portRangeMax,
    remote_ip_prefix: row.remoteIpPrefix,
    remote_group_id: row.remoteGroupId,
    description: row.description,
    project_id: row.projectId,
    tenant_id: row.projectId,
    created_at: row.createdAt,
  };
}

/** `rules` may hold other groups' rules too; only the group's own are kept. */
export function groupToWire(row: SecurityGroupRow, rules: readonly RuleRow[]): SecurityGroup {
  return {
    id: row.id,
    name: row.name,
    description: row.description,
    project_id: row.projectId,
    tenant_id: row.projectId,
    security_group_rules: rules.filter((r) => r.securityGroupId === row.id).map(ruleToWire),
    // Connection tracking is how the kernel enforces every group.
    stateful: true,
    created_at: row.createdAt,
    updated_at: row.updatedAt,
    revision_number: row.revisionNumber,
  };
}

/** Many groups at once: one pass over the rules instead of one filter per group. */
export function groupsToWire(rows: readonly SecurityGroupRow[], rules: readonly RuleRow[]): SecurityGroup[] {
  const byGroup = new Map<string, RuleRow[]>();
  for (const rule of rules) {
    const list = byGroup.get(rule.securityGroupId);
    if (list) list.push(rule);
    else byGroup.set(rule.securityGroupId, [rule]);
  }
  return rows.map((row) => groupToWire(row, byGroup.get(row.id) ?? []));
}

export function instanceToWire(row: InstanceRow): Instance {
  return {
    id: row.id,
    name: row.name,
    host: row.host,
    project_id: row.projectId,
    tenant_id: row.projectId,
    security_groups: [...row.securityGroups],
    network_info: row.networkInfo,
    created_at: row.createdAt,
    updated_at: row.updatedAt,
    revision_number: row.revisionNumber,
  };
}

export function providerRuleToWire(row: ProviderRuleRow): ProviderFirewallRule {
  return {
    id: row.id,
    cidr: row.cidr,
    protocol: row.protocol,
    from_port: row.fromPort,
    to_port: row.toPort,
    created_at: row.createdAt,
  };
}

/** The status as served: the AgentStatus fields (camelCase, as `virtfw status` reads them), nothing else. */
export function statusToWire(status: AgentStatus): AgentStatusWire {
  return {
    host: status.host,
    instances: status.instances.map((i) => ({
      instanceId: i.instanceId,
      filtered: i.filtered,
      lastApply: i.lastApply,
      lastError: i.lastError,
    })),
    lastApply: status.lastApply,
    lastError: status.lastError,
    appliedSeq: status.appliedSeq,
    ...(status.updatedAt !== undefined ? { updatedAt: status.updatedAt } : {}),
  };
}

// ------------------------------------------------------------- wire → store

/** Copies the keys whose value is not `undefined` (so "absent" stays absent for the store). */
function defined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T;
}

export function newSecurityGroupFromWire(body: SecurityGroupCreateBody): NewSecurityGroup {
  const g = body.security_group;
  return defined({ name: g.name, description: g.description });
}

export function securityGroupUpdateFromWire(body: SecurityGroupUpdateBody): Partial<NewSecurityGroup> {
  const g = body.security_group;
  return defined({ name: g.name, description: g.description });
}

export function newRuleFromWire(body: SecurityGroupRuleCreateBody): NewRule {
  const r = body.security_group_rule;
  return defined<NewRule>({
    securityGroupId: r.security_group_id,
    direction: r.direction,
    ethertype: r.ethertype ?? undefined,
    protocol: r.protocol,
    portRangeMin: r.port_range_min,
    portRangeMax: r.port_range_max,
    remoteIpPrefix: r.remote_ip_prefix,
    remoteGroupId: r.remote_group_id,
    description: r.description,
  });
}

export function newInstanceFromWire(body: InstanceCreateBody): NewInstance {
  const i = body.instance;
  return defined<NewInstance>({
    id: i.id,
    name: i.name,
    host: i.host,
    securityGroups: i.security_groups,
    // The schema checked the VIF shape loosely (Nova adds many fields); the store validates it.
    networkInfo: i.network_info as NetworkInfo | undefined,
  });
}

export function instanceUpdateFromWire(body: InstanceUpdateBody): InstanceUpdate {
  const i = body.instance;
  return defined<InstanceUpdate>({
    name: i.name,
    host: i.host,
    securityGroups: i.security_groups,
    networkInfo: i.network_info as NetworkInfo | undefined,
  });
}

export function newProviderRuleFromWire(body: ProviderFirewallRuleCreateBody): NewProviderRule {
  const r = body.provider_firewall_rule;
  return defined<NewProviderRule>({ cidr: r.cidr, protocol: r.protocol, fromPort: r.from_port, toPort: r.to_port });
}

// ----------------------------------------------------------- field names

/**
 * Store and model field names (camelCase, as the model's validators name
 * them) and their wire names. Listed rather than derived so that a value
 * quoted in a message is never rewritten.
 */
const WIRE_NAMES: Readonly<Record<string, string>> = Object.freeze({
  securityGroupId: 'security_group_id',
  portRangeMin: 'port_range_min',
  portRangeMax: 'port_range_max',
  remoteIpPrefix: 'remote_ip_prefix',
  remoteGroupId: 'remote_group_id',
  projectId: 'project_id',
  securityGroups: 'security_groups',
  networkInfo: 'network_info',
  fromPort: 'from_port',
  toPort: 'to_port',
  revisionNumber: 'revision_number',
  createdAt: 'created_at',
  updatedAt: 'updated_at',
});

/** The resource prefixes the model and store put before a field (`rule.portRangeMin`), with their envelope names. */
const RESOURCE_PREFIXES: Readonly<Record<string, string>> = Object.freeze({
  rule: 'security_group_rule',
  securityGroupRule: 'security_group_rule',
  group: 'security_group',
  securityGroup: 'security_group',
  instance: 'instance',
  providerRule: 'provider_firewall_rule',
  providerFirewallRule: 'provider_firewall_rule',
});

function snake(name: string): string {
  return WIRE_NAMES[name] ?? name.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase();
}

/**
 * A store/model field path as the client wrote it:
 * `rule.portRangeMin` → `port_range_min`, `networkInfo[0].devname` →
 * `network_info[0].devname`, `instance.id` → `id`, `rule` → `security_group_rule`.
 * Keys inside Nova's VIF JSON are already snake_case and stay as they are.
 */
export function wireField(field: string): string {
  const segments = field.split('.');
  const first = segments[0] ?? '';
  const prefix = RESOURCE_PREFIXES[first];
  if (prefix !== undefined) {
    if (segments.length === 1) return prefix;
    segments.shift();
  }
  return segments.map((segment) => segment.replace(/^[A-Za-z][A-Za-z0-9]*/, snake)).join('.');
}

/** A store/model message with the field paths it mentions in their wire form (`rule.portRangeMax` → `port_range_max`). */
export function wireText(text: string): string {
  const prefixes = Object.keys(RESOURCE_PREFIXES).join('|');
  return text
    .replace(new RegExp(`\\b(?:${prefixes})\\.(?=[a-z])`, 'g'), '')
    .replace(/\b[a-z]+(?:[A-Z][a-z0-9]*)+\b/g, (word) => WIRE_NAMES[word] ?? word);
}
