/**
 * The edge of the model: every value that enters a driver (from a caller or
 * from the data store) passes through here once. A bad value raises a
 * ValidationError naming the field by path; a good one comes back normalised,
 * and the renderer never checks it again.
 */
import { ValidationError } from '../errors.js';
import { parseAddress, parseCidr, parseMac } from './addresses.js';
import { ANY_PROTOCOL_NAMES, ICMP, ICMPV6, PORT_PROTOCOLS, PROTOCOL_NUMBERS, protocolFor } from './protocols.js';
import {
  DIRECTIONS,
  ETHERTYPES,
  type Direction,
  type Instance,
  type IpVersion,
  type NetworkInfo,
  type NormalizedInstance,
  type NormalizedProviderRule,
  type NormalizedRule,
  type NormalizedSubnet,
  type NormalizedVif,
  type PortMatch,
  type Protocol,
  type ProviderRule,
  type Remote,
  type SecurityGroupRule,
} from './types.js';

/**
 * Identifiers (instances, groups, rules) end up in chain-name hashes and logs,
 * never in rule text, but they are still held to a plain alphabet: no spaces,
 * quotes, newlines, and nothing that starts like an option.
 */
export const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,254}$/;
/** A network device name: IFNAMSIZ is 16 bytes with the terminating NUL. */
export const DEVNAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;

function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}...` : value);
  if (value === undefined) return 'missing';
  return JSON.stringify(value) ?? String(value);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function validateId(field: string, value: unknown): string {
  const text = typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? String(value) : value;
  if (typeof text !== 'string' || !ID_RE.test(text)) {
    throw new ValidationError(
      field,
      `${describe(value)} is not a valid id (1-255 characters: letters, digits and . _ : @ + -, starting with a letter or digit)`,
    );
  }
  return text;
}

export function validateDevname(field: string, value: unknown): string {
  if (typeof value !== 'string' || !DEVNAME_RE.test(value)) {
    throw new ValidationError(
      field,
      `${describe(value)} is not a valid device name (1-15 characters: letters, digits and _ . -, starting with a letter or digit)`,
    );
  }
  return value;
}

function validateAddress(field: string, value: unknown, version?: IpVersion): string {
  const parsed = parseAddress(value);
  if (!parsed || (version !== undefined && parsed.version !== version)) throw addressError(field, value, version);
  return parsed.address;
}

/** The error for a value that is not an address (of `version`, when given). */
function addressError(field: string, value: unknown, version?: IpVersion): ValidationError {
  return parseAddress(value) && version !== undefined
    ? new ValidationError(field, `${describe(value)} is not an IPv${version} address`)
    : new ValidationError(field, `${describe(value)} is not a valid IP address`);
}

function validateCidr(field: string, value: unknown): { cidr: string; version: IpVersion; prefixLength: number } {
  const parsed = parseCidr(value);
  if (!parsed) throw new ValidationError(field, `${describe(value)} is not a valid CIDR`);
  return parsed;
}

function optionalBoolean(field: string, value: unknown): boolean {
  if (value === undefined || value === null) return false;
  if (typeof value !== 'boolean') throw new ValidationError(field, `${describe(value)} is not a boolean`);
  return value;
}

// ------------------------------------------------------------------ instances

export function validateInstance(value: unknown, field = 'instance'): { id: string; name: string | null; deleted: boolean } {
  if (!isRecord(value)) throw new ValidationError(field, 'must be an object with an id');
  const id = validateId(`${field}.id`, value.id);
  let name: string | null = null;
  if (value.name !== undefined && value.name !== null) {
    // eslint-disable-next-line no-control-regex
    if (typeof value.name !== 'string' || value.name.length > 255 || /[\u0000-\u001f\u007f]/.test(value.name)) {
      throw new ValidationError(`${field}.name`, `${describe(value.name)} is not a valid name`);
    }
    name = value.name;
  }
  return { id, name, deleted: optionalBoolean(`${field}.deleted`, value.deleted) };
}

function validateSubnet(field: string, value: unknown): NormalizedSubnet {
  if (!isRecord(value)) throw new ValidationError(field, 'must be an object');
  const { cidr, version } = validateCidr(`${field}.cidr`, value.cidr);
  if (value.version !== undefined && value.version !== null && value.version !== version) {
    throw new ValidationError(`${field}.version`, `${describe(value.version)} does not match cidr ${cidr}`);
  }
  let gateway: string | null = null;
  const gw = value.gateway;
  if (typeof gw === 'string') {
    gateway = validateAddress(`${field}.gateway`, gw, version);
  } else if (isRecord(gw)) {
    if (gw.address !== undefined && gw.address !== null) {
      gateway = validateAddress(`${field}.gateway.address`, gw.address, version);
    }
  } else if (gw !== undefined && gw !== null) {
    throw new ValidationError(`${field}.gateway`, `${describe(gw)} is not an address or {address}`);
  }
  let dhcpServer: string | null = null;
  if (value.meta !== undefined && value.meta !== null) {
    if (!isRecord(value.meta)) throw new ValidationError(`${field}.meta`, 'must be an object');
    const server = value.meta.dhcp_server;
    if (server !== undefined && server !== null && server !== '') {
      dhcpServer = validateAddress(`${field}.meta.dhcp_server`, server, version);
    }
  }
  const ips: string[] = [];
  if (value.ips !== undefined && value.ips !== null) {
    if (!Array.isArray(value.ips)) throw new ValidationError(`${field}.ips`, 'must be an array');
    value.ips.forEach((ip, k) => {
      const ipField = `${field}.ips[${k}]`;
      if (!isRecord(ip)) throw new ValidationError(ipField, 'must be an object with an address');
      const address = validateAddress(`${ipField}.address`, ip.address, version);
      if (!ips.includes(address)) ips.push(address);
    });
  }
  return { cidr, version, gateway, dhcpServer, ips };
}

function validateVif(field: string, value: unknown): NormalizedVif {
  if (!isRecord(value)) throw new ValidationError(field, 'must be an object (a Nova VIF)');
  const mac = parseMac(value.address);
  if (!mac) throw new ValidationError(`${field}.address`, `${describe(value.address)} is not a unicast MAC address`);
  const devname = validateDevname(`${field}.devname`, value.devname);
  if (value.type !== undefined && value.type !== null && typeof value.type !== 'string') {
    throw new ValidationError(`${field}.type`, `${describe(value.type)} is not a string`);
  }
  const subnets: NormalizedSubnet[] = [];
  const network = value.network;
  if (network !== undefined && network !== null) {
    if (!isRecord(network)) throw new ValidationError(`${field}.network`, 'must be an object');
    if (network.subnets !== undefined && network.subnets !== null) {
      if (!Array.isArray(network.subnets)) throw new ValidationError(`${field}.network.subnets`, 'must be an array');
      network.subnets.forEach((s, k) => subnets.push(validateSubnet(`${field}.network.subnets[${k}]`, s)));
    }
  }
  return { devname, mac, routed: value.type === 'tap', subnets };
}

export function validateNetworkInfo(value: unknown, field = 'networkInfo'): NormalizedVif[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw new ValidationError(field, 'must be an array of VIFs');
  const vifs = value.map((v, i) => validateVif(`${field}[${i}]`, v));
  const seen = new Set<string>();
  vifs.forEach((vif, i) => {
    if (seen.has(vif.devname)) {
      throw new ValidationError(`${field}[${i}].devname`, `${vif.devname} is used by another VIF of this instance`);
    }
    seen.add(vif.devname);
  });
  return vifs;
}

/** A field name built only when an error needs it (hot paths validate thousands of records). */
type LazyField = string | (() => string);
/** `field` + `suffix`; an empty field names just the suffix (`.networkInfo` -> `networkInfo`). */
const fieldAt = (field: LazyField, suffix: string): string => {
  const base = typeof field === 'string' ? field : field();
  return base ? base + suffix : suffix.replace(/^\./, '');
};

/** A member's addresses per family. */
interface FamilyAddresses {
  4: string[];
  6: string[];
}

/**
 * The fixed addresses of a member of a remote group, per family, or null for
 * a deleted member (Nova: its info cache is gone). Only what membership needs
 * is checked: the id, the deleted flag and each address (which must be an
 * address of its subnet's family); a member's name, devices and MACs are its
 * own host's business and do not block rules that name its group elsewhere.
 * An empty `field` names the record's parts alone (`instance.id`, `networkInfo[0]...`).
 */
export function memberAddresses(record: unknown, field: LazyField): FamilyAddresses | null {
  const out: FamilyAddresses = { 4: [], 6: [] };
  return addMemberAddresses(record, field, out) ? out : null;
}

/**
 * The addresses of a group's members (the records the data store gave for
 * it), per family, sorted, each once. `field` names the list, for errors.
 *
 * Every member change re-reads the whole group, so this is plain loops over
 * memoised parses with no closure per member: small for the JIT to compile
 * (its compile lands inside a member change on a busy two-core host) and
 * well under a microsecond per member once warm.
 */
export function groupMemberAddresses(records: readonly unknown[], field: string): FamilyAddresses {
  const out: FamilyAddresses = { 4: [], 6: [] };
  let index = 0;
  const recordField = () => `${field}[${index}]`;
  for (; index < records.length; index++) addMemberAddresses(records[index], recordField, out);
  return { 4: sortedUnique(out[4]), 6: sortedUnique(out[6]) };
}

/** A group's member addresses per family, canonical, sorted, each once. */
type CheckedAddresses = { readonly 4: readonly string[]; readonly 6: readonly string[] };

/** Member-address answers known to be valid that cannot change (frozen): an answer given again costs one lookup. */
const checkedAnswers = new WeakMap<object, CheckedAddresses>();

/**
 * Marks a frozen answer (with frozen lists) as checked: for a store that
 * built it from addresses it validated when they were written, canonical,
 * sorted and each once, so drivers take it as it is.
 */
export function vouchForMemberAddresses<T extends CheckedAddresses>(answer: T): T {
  if (!unchangeable(answer, answer[4], answer[6])) throw new TypeError('only a frozen answer with frozen lists can be vouched for');
  checkedAnswers.set(answer, answer);
  return answer;
}

/**
 * A group's member addresses as a data store gives them ready-made (per
 * family, as Neutron's RPC hands its agents `sg_member_ips`): each must be an
 * address of its family; the result is canonical, sorted, each once. An
 * answer that is frozen, with frozen lists, cannot change, so the same answer
 * given again (the store's group did not change) is not checked again.
 */
export function givenMemberAddresses(value: unknown, field: string): CheckedAddresses {
  if (typeof value === 'object' && value !== null) {
    const hit = checkedAnswers.get(value);
    if (hit) return hit;
  }
  if (!isRecord(value)) throw new ValidationError(field, 'must be an object with the addresses of each family (4, 6)');
  const v4 = value[4];
  const v6 = value[6];
  const out: FamilyAddresses = { 4: givenFamily(v4, 4, `${field}[4]`), 6: givenFamily(v6, 6, `${field}[6]`) };
  if (unchangeable(value, v4, v6)) checkedAnswers.set(value, out);
  return out;
}

function givenFamily(list: unknown, version: IpVersion, field: string): string[] {
  if (list === undefined || list === null) return [];
  if (!Array.isArray(list)) throw new ValidationError(field, 'must be an array of addresses');
  const out: string[] = new Array<string>(list.length);
  let ordered = true;
  for (let i = 0; i < list.length; i++) {
    const value: unknown = list[i];
    const parsed = parseAddress(value);
    if (!parsed || parsed.version !== version) throw addressError(`${field}[${i}]`, value, version);
    out[i] = parsed.address;
    if (i > 0 && !((out[i - 1] as string) < parsed.address)) ordered = false;
  }
  return ordered ? out : sortedUnique(out);
}

/** Frozen, with its lists as plain frozen data properties: nothing can change what it says. */
function unchangeable(value: object, v4: unknown, v6: unknown): boolean {
  if (!Object.isFrozen(value)) return false;
  for (const key of ['4', '6']) {
    const own = Object.getOwnPropertyDescriptor(value, key);
    if (own && !('value' in own)) return false;
  }
  return [v4, v6].every((list) => list === undefined || list === null || Object.isFrozen(list));
}

/** Appends a member's addresses to `out`; false for a deleted member. */
function addMemberAddresses(record: unknown, field: LazyField, out: FamilyAddresses): boolean {
  if (!isRecord(record)) throw new ValidationError(fieldAt(field, ''), 'must be an object with an instance and its networkInfo');
  const instance = record.instance;
  if (!isRecord(instance)) throw new ValidationError(fieldAt(field, '.instance'), 'must be an object with an id');
  if (typeof instance.id !== 'string' || !ID_RE.test(instance.id)) validateId(fieldAt(field, '.instance.id'), instance.id);
  const deleted = instance.deleted;
  if (deleted === true) return false;
  if (deleted !== undefined && deleted !== null && deleted !== false) optionalBoolean(fieldAt(field, '.instance.deleted'), deleted);
  const vifs = record.networkInfo;
  if (vifs === undefined || vifs === null) return true;
  if (!Array.isArray(vifs)) throw new ValidationError(fieldAt(field, '.networkInfo'), 'must be an array of VIFs');
  for (let i = 0; i < vifs.length; i++) {
    const vif: unknown = vifs[i];
    const subnets = isRecord(vif) && isRecord(vif.network) ? vif.network.subnets : undefined;
    if (!Array.isArray(subnets)) continue;
    for (let k = 0; k < subnets.length; k++) {
      const subnet: unknown = subnets[k];
      if (!isRecord(subnet) || !Array.isArray(subnet.ips)) continue;
      const subnetVersion = parseCidr(subnet.cidr)?.version;
      const ips: unknown[] = subnet.ips;
      for (let j = 0; j < ips.length; j++) {
        const ip = ips[j];
        const value = isRecord(ip) ? ip.address : undefined;
        const parsed = parseAddress(value);
        if (!parsed || (subnetVersion !== undefined && parsed.version !== subnetVersion)) {
          throw addressError(fieldAt(field, `.networkInfo[${i}].network.subnets[${k}].ips[${j}].address`), value, subnetVersion);
        }
        out[parsed.version].push(parsed.address);
      }
    }
  }
  return true;
}

/** Sorts in place and drops repeats. */
function sortedUnique(list: string[]): string[] {
  list.sort();
  let n = 0;
  for (let i = 0; i < list.length; i++) if (n === 0 || list[i] !== list[n - 1]) list[n++] = list[i] as string;
  list.length = n;
  return list;
}

export function normalizeInstance(instance: Instance, networkInfo: NetworkInfo | unknown, field = 'instance'): NormalizedInstance {
  const base = validateInstance(instance, field);
  return { ...base, vifs: validateNetworkInfo(networkInfo) };
}

// --------------------------------------------------------------------- rules

function validateProtocol(field: string, value: unknown): number | null {
  if (value === undefined || value === null) return null;
  if (typeof value === 'string') {
    const name = value.toLowerCase();
    if (ANY_PROTOCOL_NAMES.includes(name)) return null;
    if (/^[0-9]{1,3}$/.test(name)) return validateProtocol(field, Number(name));
    const number = PROTOCOL_NUMBERS[name];
    if (number === undefined) {
      throw new ValidationError(
        field,
        `${describe(value)} is not a known protocol (use a name such as tcp, udp, icmp, icmpv6, or a number 1-255)`,
      );
    }
    return number;
  }
  if (typeof value === 'number' && Number.isInteger(value) && value >= 1 && value <= 255) return value;
  if (value === 0) {
    throw new ValidationError(field, 'protocol 0 would match every protocol in the kernel; leave the protocol unset instead');
  }
  throw new ValidationError(field, `${describe(value)} is not a protocol name or a number 1-255`);
}

function optionalInteger(field: string, value: unknown): number | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw new ValidationError(field, `${describe(value)} is not an integer`);
  }
  return value;
}

/**
 * Port or ICMP type/code match. `minField`/`maxField` name the caller's fields
 * (portRangeMin/portRangeMax, or fromPort/toPort for provider rules).
 */
function validatePorts(
  protocol: Protocol | null,
  min: unknown,
  max: unknown,
  minField: string,
  maxField: string,
): PortMatch {
  const from = optionalInteger(minField, min);
  const to = optionalInteger(maxField, max);
  if (protocol !== null && (protocol.number === ICMP || protocol.number === ICMPV6)) {
    const type = from ?? -1;
    const code = to ?? -1;
    if (type < -1 || type > 255) throw new ValidationError(minField, `icmp type ${type} is outside -1..255`);
    if (code < -1 || code > 255) throw new ValidationError(maxField, `icmp code ${code} is outside -1..255`);
    if (type === -1 && code !== -1) throw new ValidationError(maxField, 'an icmp code needs an icmp type');
    return type === -1 ? { kind: 'any' } : { kind: 'icmp', type, code };
  }
  if (protocol !== null && PORT_PROTOCOLS.has(protocol.number)) {
    if (from === null && to === null) return { kind: 'any' };
    if (from === null) throw new ValidationError(minField, `is required when ${maxField} is set`);
    const top = to ?? from;
    if (from < 1 || from > 65535) throw new ValidationError(minField, `port ${from} is outside 1-65535`);
    if (top < 1 || top > 65535) throw new ValidationError(maxField, `port ${top} is outside 1-65535`);
    if (from > top) throw new ValidationError(minField, `port ${from} is greater than ${maxField} ${top}`);
    if (from === 1 && top === 65535) return { kind: 'any' };
    return { kind: 'ports', from, to: top };
  }
  if (from !== null || to !== null) {
    const field = from !== null ? minField : maxField;
    throw new ValidationError(
      field,
      protocol === null
        ? 'ports need a protocol (tcp, udp, sctp, dccp, udplite, icmp or icmpv6)'
        : `protocol ${protocol.name} has no ports`,
    );
  }
  return { kind: 'any' };
}

function resolveProtocol(field: string, number: number | null, version: IpVersion): Protocol | null {
  if (number === null) return null;
  const protocol = protocolFor(number, version);
  if (!protocol) throw new ValidationError(field, 'icmpv6 needs ethertype IPv6');
  return protocol;
}

/** Checks one security-group rule and returns its canonical form. */
export function normalizeRule(value: unknown, field = 'rule'): NormalizedRule {
  if (!isRecord(value)) throw new ValidationError(field, 'must be an object');
  const r = value as SecurityGroupRule & Record<string, unknown>;
  const id = r.id === undefined || r.id === null ? '' : validateId(`${field}.id`, r.id);
  let direction: Direction = 'ingress';
  if (r.direction !== undefined && r.direction !== null) {
    if (!DIRECTIONS.includes(r.direction)) {
      throw new ValidationError(`${field}.direction`, `${describe(r.direction)} is not ingress or egress`);
    }
    direction = r.direction;
  }
  let ethertypeVersion: IpVersion | null = null;
  if (r.ethertype !== undefined && r.ethertype !== null) {
    if (!ETHERTYPES.includes(r.ethertype)) {
      throw new ValidationError(`${field}.ethertype`, `${describe(r.ethertype)} is not IPv4 or IPv6`);
    }
    ethertypeVersion = r.ethertype === 'IPv4' ? 4 : 6;
  }
  const hasPrefix = r.remoteIpPrefix !== undefined && r.remoteIpPrefix !== null;
  const hasGroup = r.remoteGroupId !== undefined && r.remoteGroupId !== null;
  if (hasPrefix && hasGroup) {
    throw new ValidationError(`${field}.remoteGroupId`, 'set either remoteIpPrefix or remoteGroupId, not both');
  }
  let remote: Remote = { kind: 'any' };
  let version: IpVersion = ethertypeVersion ?? 4;
  if (hasPrefix) {
    const parsed = validateCidr(`${field}.remoteIpPrefix`, r.remoteIpPrefix);
    if (ethertypeVersion !== null && parsed.version !== ethertypeVersion) {
      throw new ValidationError(`${field}.remoteIpPrefix`, `${parsed.cidr} is not an ${r.ethertype} prefix`);
    }
    version = parsed.version;
    // A prefix of the whole address space is the same rule as no remote at all.
    remote = parsed.prefixLength === 0 ? { kind: 'any' } : { kind: 'cidr', cidr: parsed.cidr };
  } else if (hasGroup) {
    remote = { kind: 'group', groupId: validateId(`${field}.remoteGroupId`, r.remoteGroupId) };
  }
  const protocol = resolveProtocol(`${field}.protocol`, validateProtocol(`${field}.protocol`, r.protocol), version);
  const ports = validatePorts(protocol, r.portRangeMin, r.portRangeMax, `${field}.portRangeMin`, `${field}.portRangeMax`);
  return { id, direction, version, protocol, ports, remote };
}

/** Checks one provider (admin drop) rule and returns its canonical form. */
export function normalizeProviderRule(value: unknown, field = 'providerRule'): NormalizedProviderRule {
  if (!isRecord(value)) throw new ValidationError(field, 'must be an object');
  const r = value as ProviderRule & Record<string, unknown>;
  const id = r.id === undefined || r.id === null ? '' : validateId(`${field}.id`, r.id);
  const { cidr, version } = validateCidr(`${field}.cidr`, r.cidr);
  const protocol = resolveProtocol(`${field}.protocol`, validateProtocol(`${field}.protocol`, r.protocol), version);
  const ports = validatePorts(protocol, r.fromPort, r.toPort, `${field}.fromPort`, `${field}.toPort`);
  return { id, version, cidr, protocol, ports };
}
