/**
 * Options shared by the kernel drivers, checked once at construction: a bad
 * option is a ValidationError naming it, before anything touches the kernel.
 */
import { ValidationError } from '../errors.js';
import type { CommandRunner } from '../kernel/exec.js';
import type { FamilyCommands } from '../kernel/iptables-manager.js';
import type { Logger } from '../logger.js';
import { FALLBACK_ACTIONS, type FallbackAction, type IpVersion } from '../model/types.js';
import type { MemberMatch } from '../render/iptables-rules.js';
import { DEFAULT_PREFIX, validatePrefix } from '../render/names.js';

export interface DriverOptions {
  /** Prefix of every chain, set and table virtfw owns (1-12 of [a-z0-9]). Default `virtfw`. */
  prefix?: string;
  /** Nova's allow_same_net_traffic: instances accept traffic from their own subnets. Default true. */
  allowSameNetTraffic?: boolean;
  /** Verdict for traffic no rule allows: DROP (default) or REJECT. */
  fallbackAction?: FallbackAction;
  /** Filter IPv6 as well as IPv4. Default true. */
  ipv6?: boolean;
  /**
   * L2 anti-spoofing (MAC, ARP, IP, DHCP server, RA) in an nftables bridge
   * table for bridged VIFs. Default true. When false, IP and MAC spoofing is
   * checked by iptables instead and ARP is not checked.
   */
  bridgeFilter?: boolean;
  /** How rules naming a remote group match its members: `ipset` (default: one set per group and family) or `expand` (Nova: one rule per member address). */
  memberMatch?: MemberMatch;
  /** Run every tool inside this named network namespace (the one `ip netns add NAME` made; entered with `nsenter --net`). */
  netns?: string;
  /** Runs the kernel tools; default: spawn them directly (in `netns` if set). */
  runner?: CommandRunner;
  logger?: Logger;
  /** Seconds to wait for the xtables lock. Default 10. */
  lockWaitSeconds?: number;
  /** Override the iptables-save / iptables-restore command names per family. */
  commands?: Partial<Record<IpVersion, FamilyCommands>>;
  /** Delete conntrack entries of an unfiltered instance's addresses. Default true. */
  conntrackCleanup?: boolean;
  /** Turn on net.bridge.bridge-nf-call-iptables/ip6tables so bridged traffic is filtered. Default true. */
  ensureBridgeNetfilter?: boolean;
}

export interface ResolvedDriverOptions {
  prefix: string;
  allowSameNetTraffic: boolean;
  fallbackAction: FallbackAction;
  ipv6: boolean;
  bridgeFilter: boolean;
  memberMatch: MemberMatch;
  netns: string | null;
  lockWaitSeconds: number;
  conntrackCleanup: boolean;
  ensureBridgeNetfilter: boolean;
}

const NETNS_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

function bool(field: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw new ValidationError(field, `${JSON.stringify(value)} is not a boolean`);
  return value;
}

export function resolveDriverOptions(options: DriverOptions = {}, field = 'options'): ResolvedDriverOptions {
  if (typeof options !== 'object' || options === null) throw new ValidationError(field, 'must be an object');
  const fallbackAction = options.fallbackAction ?? 'DROP';
  if (!FALLBACK_ACTIONS.includes(fallbackAction)) {
    throw new ValidationError(`${field}.fallbackAction`, `${JSON.stringify(fallbackAction)} is not DROP or REJECT`);
  }
  const memberMatch = options.memberMatch ?? 'ipset';
  if (memberMatch !== 'expand' && memberMatch !== 'ipset') {
    throw new ValidationError(`${field}.memberMatch`, `${JSON.stringify(memberMatch)} is not expand or ipset`);
  }
  const netns = options.netns ?? null;
  if (netns !== null && (typeof netns !== 'string' || !NETNS_RE.test(netns))) {
    throw new ValidationError(`${field}.netns`, `${JSON.stringify(netns)} is not a valid network namespace name`);
  }
  const lockWaitSeconds = options.lockWaitSeconds ?? 10;
  if (!Number.isInteger(lockWaitSeconds) || lockWaitSeconds < 0 || lockWaitSeconds > 3600) {
    throw new ValidationError(`${field}.lockWaitSeconds`, `${JSON.stringify(lockWaitSeconds)} is not an integer 0-3600`);
  }
  return Object.freeze({
    prefix: validatePrefix(options.prefix ?? DEFAULT_PREFIX, `${field}.prefix`),
    allowSameNetTraffic: bool(`${field}.allowSameNetTraffic`, options.allowSameNetTraffic, true),
    fallbackAction,
    ipv6: bool(`${field}.ipv6`, options.ipv6, true),
    bridgeFilter: bool(`${field}.bridgeFilter`, options.bridgeFilter, true),
    memberMatch,
    netns,
    lockWaitSeconds,
    conntrackCleanup: bool(`${field}.conntrackCleanup`, options.conntrackCleanup, true),
    ensureBridgeNetfilter: bool(`${field}.ensureBridgeNetfilter`, options.ensureBridgeNetfilter, true),
  });
}
