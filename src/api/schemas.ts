/**
 * The wire format, as JSON schemas (TypeBox): OpenStack Neutron's envelopes
 * and snake_case field names. Fastify validates every request against these
 * before a handler runs, serialises every response through them, and
 * @fastify/swagger publishes them as the OpenAPI document.
 *
 * The schemas check shape only (types, required and unknown fields, string
 * lengths). What a value means (a CIDR, a port range for the protocol, an
 * ICMP type, a device name) is checked by the store through the model's
 * validators, so there is one definition of a valid rule for every entry
 * point; `errors.ts` renames the store's field names to the ones below.
 */
import { ID_RE } from '../model/validate.js';
import { HOST_RE } from '../store/input.js';
import { Type, type Static, type TSchema } from '@sinclair/typebox';

// ------------------------------------------------------------------ helpers

/** `T` or JSON null. */
export function Nullable<T extends TSchema>(schema: T) {
  return Type.Union([schema, Type.Null()]);
}

/**
 * A string from a closed list, as one JSON-schema `enum` (not a union of
 * constants), so a bad value gets one error listing the allowed values.
 */
export function StringEnum<const T extends readonly string[]>(values: T, options: { description?: string } = {}) {
  return Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...options });
}

/** A `$ref` to a shared schema (one with an `$id`), typed as that schema. */
export function Ref<T extends TSchema>(schema: T) {
  if (schema.$id === undefined) throw new Error('Ref: the schema has no $id');
  return Type.Unsafe<Static<T>>(Type.Ref(schema.$id));
}

/** Every request body is a one-key envelope: `{"<resource>": {...}}`. */
function Envelope<K extends string, T extends TSchema>(key: K, schema: T) {
  return Type.Object({ [key]: schema } as { [P in K]: T }, { additionalProperties: false });
}

/**
 * Patterns the schemas use, with the phrase an error message gives for each
 * (Ajv's own message would quote the regular expression).
 */
/** The model's rule for ids (model/validate.ts `validateId`; test/api/schemas.test.ts keeps them equal). */
export const ID_PATTERN = ID_RE.source;
/** The store's rule for host names (store/input.ts `checkHost`). */
export const HOST_PATTERN = HOST_RE.source;
export const PATTERN_HINTS: Readonly<Record<string, string>> = Object.freeze({
  [ID_PATTERN]:
    'is not a valid id (1-255 characters: letters, digits and . _ : @ + -, starting with a letter or digit)',
  [HOST_PATTERN]: 'is not a valid host (1-255 characters: letters, digits and . _ -)',
});

/** An id in a request body. Path ids are not checked: an id that cannot exist is simply not found. */
const Id = Type.String({ pattern: ID_PATTERN, description: 'an id: letters, digits and . _ : @ + -' });
const PathId = Type.String({ minLength: 1, maxLength: 255 });
const Name = Type.String({ maxLength: 255 });
const Description = Type.String({ maxLength: 255 });
const Host = Type.String({ pattern: HOST_PATTERN, description: 'the compute host that runs the instance' });
const Timestamp = Type.String({ format: 'date-time' });
/** Admins may create a resource in another project; `tenant_id` is Neutron's older name for it. */
const OwnerFields = {
  project_id: Type.Optional(Id),
  tenant_id: Type.Optional(Id),
};
/** A protocol name (tcp, udp, icmp, ...; `any` for every protocol) or number, as text or integer. */
const ProtocolIn = Type.Union([Type.String({ minLength: 1, maxLength: 32 }), Type.Integer(), Type.Null()], {
  description: 'a protocol name (tcp, udp, icmp, icmpv6, ...) or number 0-255; null or "any" for every protocol',
});
/** Port or ICMP type/code; the model checks the range that applies to the protocol. */
const PortIn = Type.Union([Type.Integer({ minimum: -1, maximum: 65535 }), Type.Null()]);

export const IdParams = Type.Object({ id: PathId });
/** A list that takes no filters: an unknown one is an error rather than silently ignored. */
export const NoQuery = Type.Object({}, { additionalProperties: false });
export type IdParams = Static<typeof IdParams>;

export const NeutronErrorSchema = Type.Object(
  {
    NeutronError: Type.Object({
      type: Type.String({ description: 'the kind of error, e.g. SecurityGroupNotFound' }),
      message: Type.String({ description: 'what went wrong, naming the offending field' }),
      detail: Type.String(),
    }),
  },
  { $id: 'NeutronError', title: 'NeutronError' },
);
export type NeutronErrorBody = Static<typeof NeutronErrorSchema>;
/** The error responses every route documents. */
export const ErrorResponses = {
  '4xx': Ref(NeutronErrorSchema),
  '5xx': Ref(NeutronErrorSchema),
};

// ----------------------------------------------------------- security groups

export const SecurityGroupRule = Type.Object(
  {
    id: Type.String(),
    security_group_id: Type.String(),
    direction: StringEnum(['ingress', 'egress']),
    ethertype: StringEnum(['IPv4', 'IPv6']),
    protocol: Nullable(Type.String({ description: 'lower-case name or decimal number; null = every protocol' })),
    port_range_min: Nullable(Type.Integer({ description: 'first port, or the ICMP type' })),
    port_range_max: Nullable(Type.Integer({ description: 'last port, or the ICMP code' })),
    remote_ip_prefix: Nullable(Type.String()),
    remote_group_id: Nullable(Type.String()),
    description: Type.String(),
    project_id: Type.String(),
    tenant_id: Type.String(),
    created_at: Timestamp,
  },
  { $id: 'SecurityGroupRule', title: 'SecurityGroupRule' },
);
export type SecurityGroupRule = Static<typeof SecurityGroupRule>;

export const SecurityGroup = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    description: Type.String(),
    project_id: Type.String(),
    tenant_id: Type.String(),
    security_group_rules: Type.Array(Ref(SecurityGroupRule)),
    stateful: Type.Boolean(),
    created_at: Timestamp,
    updated_at: Timestamp,
    revision_number: Type.Integer(),
  },
  { $id: 'SecurityGroup', title: 'SecurityGroup' },
);
export type SecurityGroup = Static<typeof SecurityGroup>;

export const SecurityGroupCreateBody = Envelope(
  'security_group',
  Type.Object(
    {
      name: Name,
      description: Type.Optional(Description),
      ...OwnerFields,
    },
    { additionalProperties: false },
  ),
);
export type SecurityGroupCreateBody = Static<typeof SecurityGroupCreateBody>;

export const SecurityGroupUpdateBody = Envelope(
  'security_group',
  Type.Object(
    {
      name: Type.Optional(Name),
      description: Type.Optional(Description),
    },
    { additionalProperties: false },
  ),
);
export type SecurityGroupUpdateBody = Static<typeof SecurityGroupUpdateBody>;

export const SecurityGroupEnvelope = Type.Object({ security_group: Ref(SecurityGroup) });
export const SecurityGroupList = Type.Object({ security_groups: Type.Array(Ref(SecurityGroup)) });

// ----------------------------------------------------- security group rules

export const SecurityGroupRuleCreateBody = Envelope(
  'security_group_rule',
  Type.Object(
    {
      security_group_id: Id,
      direction: StringEnum(['ingress', 'egress']),
      ethertype: Type.Optional(Nullable(StringEnum(['IPv4', 'IPv6']))),
      protocol: Type.Optional(ProtocolIn),
      port_range_min: Type.Optional(PortIn),
      port_range_max: Type.Optional(PortIn),
      remote_ip_prefix: Type.Optional(Nullable(Type.String({ maxLength: 64, description: 'a CIDR' }))),
      remote_group_id: Type.Optional(Nullable(Id)),
      description: Type.Optional(Description),
      ...OwnerFields,
    },
    { additionalProperties: false },
  ),
);
export type SecurityGroupRuleCreateBody = Static<typeof SecurityGroupRuleCreateBody>;

export const SecurityGroupRuleEnvelope = Type.Object({ security_group_rule: Ref(SecurityGroupRule) });
export const SecurityGroupRuleList = Type.Object({ security_group_rules: Type.Array(Ref(SecurityGroupRule)) });
export const SecurityGroupRuleQuery = Type.Object(
  { security_group_id: Type.Optional(Id) },
  { additionalProperties: false },
);

// ---------------------------------------------------------------- instances

/**
 * One Nova VIF. Only the fields the firewall reads are described; Nova's
 * other fields (ovs_interfaceid, details, profile, ...) are kept as given.
 */
const Vif = Type.Object(
  {
    id: Type.Optional(Type.String({ maxLength: 255 })),
    address: Type.String({ description: 'the instance-side MAC address' }),
    devname: Type.String({ description: 'the host-side tap device (at most 15 characters)' }),
    type: Type.Optional(Nullable(Type.String({ description: '"tap" for a routed tap device, else a bridge port' }))),
    network: Type.Optional(
      Nullable(
        Type.Object(
          {
            id: Type.Optional(Type.String()),
            label: Type.Optional(Type.String()),
            bridge: Type.Optional(Type.String()),
            subnets: Type.Optional(Type.Array(Type.Object({}, { additionalProperties: true }))),
          },
          { additionalProperties: true },
        ),
      ),
    ),
  },
  { additionalProperties: true, $id: 'Vif', title: 'Vif', description: 'a Nova VIF (network model JSON)' },
);

export const Instance = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    host: Type.String(),
    project_id: Type.String(),
    tenant_id: Type.String(),
    security_groups: Type.Array(Type.String()),
    network_info: Type.Array(Ref(Vif)),
    created_at: Timestamp,
    updated_at: Timestamp,
    revision_number: Type.Integer(),
  },
  { $id: 'Instance', title: 'Instance' },
);
export type Instance = Static<typeof Instance>;

const GroupIds = Type.Array(Id, { maxItems: 64, description: 'security group ids; none = the project default group' });
const NetworkInfoIn = Type.Array(Ref(Vif), { maxItems: 64 });

export const InstanceCreateBody = Envelope(
  'instance',
  Type.Object(
    {
      id: Type.Optional(Id),
      name: Name,
      host: Host,
      security_groups: Type.Optional(GroupIds),
      network_info: Type.Optional(NetworkInfoIn),
      ...OwnerFields,
    },
    { additionalProperties: false },
  ),
);
export type InstanceCreateBody = Static<typeof InstanceCreateBody>;

export const InstanceUpdateBody = Envelope(
  'instance',
  Type.Object(
    {
      name: Type.Optional(Name),
      host: Type.Optional(Host),
      security_groups: Type.Optional(GroupIds),
      network_info: Type.Optional(NetworkInfoIn),
    },
    { additionalProperties: false },
  ),
);
export type InstanceUpdateBody = Static<typeof InstanceUpdateBody>;

export const InstanceEnvelope = Type.Object({ instance: Ref(Instance) });
export const InstanceList = Type.Object({ instances: Type.Array(Ref(Instance)) });
export const InstanceQuery = Type.Object({ host: Type.Optional(Host) }, { additionalProperties: false });

// ----------------------------------------------------------- provider rules

export const ProviderFirewallRule = Type.Object(
  {
    id: Type.String(),
    cidr: Type.String(),
    protocol: Nullable(Type.String()),
    from_port: Nullable(Type.Integer()),
    to_port: Nullable(Type.Integer()),
    created_at: Timestamp,
  },
  { $id: 'ProviderFirewallRule', title: 'ProviderFirewallRule' },
);
export type ProviderFirewallRule = Static<typeof ProviderFirewallRule>;

export const ProviderFirewallRuleCreateBody = Envelope(
  'provider_firewall_rule',
  Type.Object(
    {
      cidr: Type.String({ maxLength: 64, description: 'the source CIDR whose ingress traffic is dropped' }),
      protocol: Type.Optional(ProtocolIn),
      from_port: Type.Optional(PortIn),
      to_port: Type.Optional(PortIn),
    },
    { additionalProperties: false },
  ),
);
export type ProviderFirewallRuleCreateBody = Static<typeof ProviderFirewallRuleCreateBody>;

export const ProviderFirewallRuleEnvelope = Type.Object({ provider_firewall_rule: Ref(ProviderFirewallRule) });
export const ProviderFirewallRuleList = Type.Object({
  provider_firewall_rules: Type.Array(Ref(ProviderFirewallRule)),
});

// ------------------------------------------------------------- agent, hosts

/**
 * The agent's report, field for field as `AgentStatus` (camelCase, unlike the
 * Neutron resources: it is virtfw's own, and `virtfw status` reads it so).
 */
export const InstanceStatus = Type.Object({
  instanceId: Type.String(),
  filtered: Type.Boolean(),
  lastApply: Nullable(Timestamp),
  lastError: Nullable(Type.String()),
});

export const AgentStatusSchema = Type.Object(
  {
    host: Type.String(),
    instances: Type.Array(InstanceStatus),
    lastApply: Nullable(Timestamp),
    lastError: Nullable(Type.String()),
    appliedSeq: Type.Integer(),
    updatedAt: Type.Optional(Nullable(Timestamp)),
  },
  { $id: 'AgentStatus', title: 'AgentStatus' },
);
export type AgentStatusWire = Static<typeof AgentStatusSchema>;
export const AgentStatusEnvelope = Type.Object({ status: Ref(AgentStatusSchema) });
export const AgentStatusList = Type.Object({ agents: Type.Array(Ref(AgentStatusSchema)) });
export const StatusQuery = Type.Object(
  { host: Type.Optional(Host) },
  { additionalProperties: false },
);

export const HostParams = Type.Object({ host: Host });
export const RulesetQuery = Type.Object(
  { format: Type.Optional(StringEnum(['iptables', 'nft'], { description: 'default iptables' })) },
  { additionalProperties: false },
);
export const RulesetText = Type.String({ description: 'the ruleset the host would apply (text/plain)' });

// ------------------------------------------------------------------- system

export const HealthSchema = Type.Object({ status: Type.Literal('ok') });

/** Schemas referenced by `$ref`: added to Fastify once, listed under components in OpenAPI. */
export const SHARED_SCHEMAS: readonly TSchema[] = [
  NeutronErrorSchema,
  SecurityGroupRule,
  SecurityGroup,
  Vif,
  Instance,
  ProviderFirewallRule,
  AgentStatusSchema,
];
