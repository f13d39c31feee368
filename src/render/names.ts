/**
 * Deterministic names for everything virtfw creates in the kernel.
 *
 * iptables limits chain names to 28 characters, ipset set names to 31, and
 * instance ids may be UUIDs (36 characters), so per-object names carry a hash
 * of the id instead of the id: 10 base32 characters (50 bits) keep the chance
 * of a collision below 1e-9 for a million objects on one host. The prefix
 * (default `virtfw`) is at most 12 characters, which leaves
 * `<prefix>-gi<hash>` at 25 characters and every fixed name shorter still.
 */
import { createHash } from 'node:crypto';
import { ValidationError } from '../errors.js';
import type { Direction, IpVersion } from '../model/types.js';
import { memo } from '../util/memo.js';

export const DEFAULT_PREFIX = 'virtfw';
export const PREFIX_RE = /^[a-z][a-z0-9]{0,11}$/;
const HASH_LENGTH = 10;
const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';

export function validatePrefix(prefix: unknown, field = 'prefix'): string {
  if (typeof prefix !== 'string' || !PREFIX_RE.test(prefix)) {
    throw new ValidationError(field, `${JSON.stringify(prefix)} must be 1-12 lower-case letters and digits, starting with a letter`);
  }
  return prefix;
}

/** 10 base32 characters of SHA-256 over `kind:id`. */
export function shortHash(kind: string, id: string): string {
  const digest = createHash('sha256').update(`${kind}:${id}`).digest();
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of digest) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5 && out.length < HASH_LENGTH) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    if (out.length >= HASH_LENGTH) break;
  }
  return out;
}

const hashedIds = new Map<string, string>();
/** `shortHash` of an instance or group id, memoised (names are asked for over and over). */
export function hashedId(kind: 'instance' | 'group', id: string): string {
  return memo(hashedIds, `${kind}:${id}`, () => shortHash(kind, id), 200_000);
}

/** All names derived from one prefix. */
export class Names {
  readonly prefix: string;
  /** hooked from the top of the built-in FORWARD chain */
  readonly forward: string;
  /** hooked from the top of the built-in INPUT chain */
  readonly input: string;
  /** dispatch on the device a packet comes from: to that instance's egress chain */
  readonly fromVm: string;
  /** dispatch on the device a packet goes to: to that instance's ingress chain */
  readonly toVm: string;
  /** egress allowed: go on to the destination instance's ingress, else accept */
  readonly allowed: string;
  /** the start of every instance ingress chain */
  readonly ingressBase: string;
  /** the start of every instance egress chain */
  readonly egressBase: string;
  /** provider-wide drops */
  readonly provider: string;
  /** the verdict for traffic no rule allowed */
  readonly fallback: string;
  /** comment tag that marks a rule as ours: `<prefix>:<hash>` */
  readonly commentTag: string;
  constructor(prefix: string = DEFAULT_PREFIX) {
    this.prefix = validatePrefix(prefix);
    this.forward = `${prefix}-FORWARD`;
    this.input = `${prefix}-INPUT`;
    this.fromVm = `${prefix}-from-vm`;
    this.toVm = `${prefix}-to-vm`;
    this.allowed = `${prefix}-allowed`;
    this.ingressBase = `${prefix}-in-base`;
    this.egressBase = `${prefix}-out-base`;
    this.provider = `${prefix}-provider`;
    this.fallback = `${prefix}-fallback`;
    this.commentTag = `${prefix}:`;
  }

  /** Does this chain name belong to us? */
  owns(chain: string): boolean {
    return chain.startsWith(`${this.prefix}-`);
  }

  instanceIngress(instanceId: string): string {
    return `${this.prefix}-i${hashedId('instance', instanceId)}`;
  }

  instanceEgress(instanceId: string): string {
    return `${this.prefix}-o${hashedId('instance', instanceId)}`;
  }

  /** IP/MAC anti-spoofing chain of an instance's routed VIFs. */
  instanceSpoof(instanceId: string): string {
    return `${this.prefix}-s${hashedId('instance', instanceId)}`;
  }

  group(groupId: string, direction: Direction): string {
    return `${this.prefix}-g${direction === 'ingress' ? 'i' : 'e'}${hashedId('group', groupId)}`;
  }

  /** ipset holding a group's member addresses of one family (31-character limit). */
  memberSet(groupId: string, version: IpVersion): string {
    return `${this.prefix}-m${version}${hashedId('group', groupId)}`;
  }

  /** nftables bridge-family table holding the L2 anti-spoofing rules. */
  get bridgeTable(): string {
    return this.prefix;
  }

  bridgeVifChain(devname: string): string {
    return `vif-${devname}`;
  }
}
