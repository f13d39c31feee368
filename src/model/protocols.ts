/**
 * IP protocols a rule may name. Names are Neutron's (so API clients can keep
 * their habits); each maps to its IANA number. iptables resolves only a few
 * names without /etc/protocols, so every other protocol is rendered by number.
 */
import type { IpVersion, Protocol } from './types.js';

export const PROTOCOL_NUMBERS: Readonly<Record<string, number>> = Object.freeze({
  ah: 51,
  dccp: 33,
  egp: 8,
  esp: 50,
  gre: 47,
  icmp: 1,
  igmp: 2,
  ipip: 4,
  'ipv6-encap': 41,
  'ipv6-frag': 44,
  'ipv6-icmp': 58,
  icmpv6: 58,
  'ipv6-nonxt': 59,
  'ipv6-opts': 60,
  'ipv6-route': 43,
  ospf: 89,
  pgm: 113,
  rsvp: 46,
  sctp: 132,
  tcp: 6,
  udp: 17,
  udplite: 136,
  vrrp: 112,
});

/** Names that mean "every protocol", as Neutron accepts them. */
export const ANY_PROTOCOL_NAMES: readonly string[] = ['any', 'all'];

/** Protocols whose rules may carry a destination port range. */
export const PORT_PROTOCOLS: ReadonlySet<number> = new Set([6, 17, 33, 132, 136]);
export const ICMP = 1;
export const ICMPV6 = 58;

/** What iptables calls each protocol number it knows without /etc/protocols. */
const IPTABLES_NAMES: Readonly<Record<number, string>> = {
  1: 'icmp',
  6: 'tcp',
  17: 'udp',
  33: 'dccp',
  50: 'esp',
  51: 'ah',
  58: 'ipv6-icmp',
  132: 'sctp',
  136: 'udplite',
};

/**
 * The protocol for a family: ICMP named in an IPv6 rule means ICMPv6 (as in
 * Neutron). Returns null for an ICMPv6 rule on IPv4, which callers reject.
 */
export function protocolFor(number: number, version: IpVersion): Protocol | null {
  let n = number;
  if (version === 6 && n === ICMP) n = ICMPV6;
  if (version === 4 && n === ICMPV6) return null;
  return { number: n, name: IPTABLES_NAMES[n] ?? String(n) };
}

export function isIcmp(protocol: Protocol | null): boolean {
  return protocol !== null && (protocol.number === ICMP || protocol.number === ICMPV6);
}
