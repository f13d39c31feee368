/**
 * Checks of the store's inputs that the model's validators do not cover
 * (names, hosts, descriptions), and the canonical forms the store keeps:
 * protocol text and the rule fingerprint. Semantic rule, provider-rule and
 * network-info checks are the driver's own (model/validate.ts), so the store
 * refuses exactly what the driver would refuse.
 */
import { ValidationError } from '../errors.js';
import type { NormalizedRule } from '../model/types.js';
import { ANY_PROTOCOL_NAMES } from '../model/protocols.js';

// eslint-disable-next-line no-control-regex
const CONTROL_RE = /[\u0000-\u001f\u007f]/;
// eslint-disable-next-line no-control-regex
const DESCRIPTION_CONTROL_RE = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/;
export const HOST_RE = /^[A-Za-z0-9._-]{1,255}$/;

function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}...` : value);
  if (value === undefined) return 'missing';
  return JSON.stringify(value) ?? String(value);
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function requireRecord(field: string, value: unknown): Record<string, unknown> {
  if (!isRecord(value)) throw new ValidationError(field, 'must be an object');
  return value;
}

/** A name: a string of at most 255 characters without control characters. */
export function checkName(field: string, value: unknown): string {
  if (typeof value !== 'string' || value.length > 255 || CONTROL_RE.test(value)) {
    throw new ValidationError(field, `${describe(value)} is not a valid name (at most 255 characters, no control characters)`);
  }
  return value;
}

/** A description: at most 255 characters; tabs and line breaks allowed. */
export function checkDescription(field: string, value: unknown): string {
  if (value === undefined || value === null) return '';
  if (typeof value !== 'string' || value.length > 255 || DESCRIPTION_CONTROL_RE.test(value)) {
    throw new ValidationError(field, `${describe(value)} is not a valid description (at most 255 characters)`);
  }
  return value;
}

/** A compute host name: 1-255 characters of letters, digits and . _ - */
export function checkHost(field: string, value: unknown): string {
  if (typeof value !== 'string' || !HOST_RE.test(value)) {
    throw new ValidationError(field, `${describe(value)} is not a valid host (1-255 characters: letters, digits and . _ -)`);
  }
  return value;
}

export function checkLimit(field: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
    throw new ValidationError(field, `${describe(value)} is not a positive integer`);
  }
  return value;
}

/**
 * A validated protocol as stored: a name lower-cased as given, a number as
 * decimal text, null for every protocol (unset, `any`, `all`).
 */
export function storedProtocol(value: unknown): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value === 'number') return String(value);
  const text = String(value).toLowerCase();
  if (ANY_PROTOCOL_NAMES.includes(text)) return null;
  if (/^[0-9]{1,3}$/.test(text)) return String(Number(text));
  return text;
}

/**
 * The rule's meaning as one string: group, direction, ethertype, protocol
 * number, port match and remote, all in canonical form. Unique per database.
 */
export function ruleFingerprint(groupId: string, rule: NormalizedRule): string {
  const ports =
    rule.ports.kind === 'any'
      ? 'any'
      : rule.ports.kind === 'ports'
        ? `ports:${rule.ports.from}-${rule.ports.to}`
        : `icmp:${rule.ports.type}:${rule.ports.code}`;
  const remote =
    rule.remote.kind === 'any'
      ? 'any'
      : rule.remote.kind === 'cidr'
        ? `cidr:${rule.remote.cidr}`
        : `group:${rule.remote.groupId}`;
  return [
    groupId,
    rule.direction,
    rule.version === 4 ? 'IPv4' : 'IPv6',
    rule.protocol === null ? 'any' : String(rule.protocol.number),
    ports,
    remote,
  ].join('|');
}
