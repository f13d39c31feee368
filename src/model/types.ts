/**
 * The data virtfw filters on. Instances and network info follow Nova's
 * network model JSON, so a compute manager passes what it already has;
 * security-group rules follow Neutron's field meanings in camelCase.
 *
 * These are the *input* shapes; `validate.ts` turns them into the checked,
 * normalised forms in this file's second half, which the renderer trusts.
 */

export type IpVersion = 4 | 6;
export const DIRECTIONS = ['ingress', 'egress'] as const;
export type Direction = (typeof DIRECTIONS)[number];
export const ETHERTYPES = ['IPv4', 'IPv6'] as const;
export type Ethertype = (typeof ETHERTYPES)[number];
export const FALLBACK_ACTIONS = ['DROP', 'REJECT'] as const;
export type FallbackAction = (typeof FALLBACK_ACTIONS)[number];

// ---------------------------------------------------------------- inputs

/** An instance as the compute manager knows it. Only `id` is required. */
export interface Instance {
  id: string;
  name?: string;
  host?: string;
  /** Nova: a member whose info cache is deleted is skipped in group expansion. */
  deleted?: boolean;
}

export interface FixedIp {
  address: string;
  type?: string;
  version?: number;
  floating_ips?: unknown[];
}

export interface Subnet {
  cidr: string;
  version?: number;
  /** Nova writes `{address, type, version}`; a bare address string is accepted too. */
  gateway?: { address?: string | null } | string | null;
  ips?: FixedIp[];
  meta?: { dhcp_server?: string | null; [key: string]: unknown };
}

export interface Network {
  id?: string;
  label?: string;
  bridge?: string;
  subnets?: Subnet[];
  meta?: Record<string, unknown>;
}

/** One virtual interface (Nova VIF). */
export interface Vif {
  id?: string;
  /** The instance-side MAC address. */
  address: string;
  /** The host-side tap device. */
  devname: string;
  /** Nova's VIF type: `tap` means a routed tap device, anything else a bridge port. */
  type?: string;
  network?: Network | null;
}

export type NetworkInfo = Vif[];

export interface SecurityGroup {
  id: string;
  name?: string;
}

/**
 * A security-group rule. Field meanings follow Neutron: `protocol` null means
 * every protocol; for tcp/udp/sctp/dccp/udplite the port range is a destination
 * port range; for icmp/icmpv6 `portRangeMin` is the type and `portRangeMax`
 * the code, null or -1 meaning any (Nova's convention). No remote means any
 * source (ingress) or destination (egress) of the rule's ethertype.
 */
export interface SecurityGroupRule {
  id?: string;
  securityGroupId?: string;
  direction?: Direction;
  /** Defaults to the remote prefix's family, else IPv4. */
  ethertype?: Ethertype;
  protocol?: string | number | null;
  portRangeMin?: number | null;
  portRangeMax?: number | null;
  remoteIpPrefix?: string | null;
  remoteGroupId?: string | null;
}

/** An admin rule that drops matching ingress traffic for every instance on the host. */
export interface ProviderRule {
  id?: string;
  cidr: string;
  protocol?: string | number | null;
  fromPort?: number | null;
  toPort?: number | null;
}

// ---------------------------------------------------------- normalised

/** A protocol as rendered: `name` for iptables `-p`, `number` for the wire. */
export interface Protocol {
  name: string;
  number: number;
}

export type PortMatch =
  | { kind: 'any' }
  | { kind: 'ports'; from: number; to: number }
  /** type -1 means any type; code -1 means any code */
  | { kind: 'icmp'; type: number; code: number };

export type Remote = { kind: 'any' } | { kind: 'cidr'; cidr: string } | { kind: 'group'; groupId: string };

export interface NormalizedRule {
  id: string;
  direction: Direction;
  version: IpVersion;
  /** null: every protocol */
  protocol: Protocol | null;
  ports: PortMatch;
  remote: Remote;
}

export interface NormalizedProviderRule {
  id: string;
  version: IpVersion;
  cidr: string;
  protocol: Protocol | null;
  ports: PortMatch;
}

export interface NormalizedSubnet {
  cidr: string;
  version: IpVersion;
  gateway: string | null;
  dhcpServer: string | null;
  ips: string[];
}

export interface NormalizedVif {
  devname: string;
  mac: string;
  routed: boolean;
  subnets: NormalizedSubnet[];
}

export interface NormalizedInstance {
  id: string;
  name: string | null;
  deleted: boolean;
  vifs: NormalizedVif[];
}
