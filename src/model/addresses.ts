/**
 * Strict parsing of IP addresses, CIDRs and MAC addresses into canonical text.
 * Anything that could be misread by a kernel tool (legacy IPv4 forms such as
 * `10.1` or `010.0.0.1`, IPv6 zone ids, leading zeros in a prefix length) is
 * refused rather than guessed at.
 */
import ipaddr from 'ipaddr.js';
import type { IpVersion } from './types.js';
import { memo } from '../util/memo.js';

export interface ParsedAddress {
  address: string;
  version: IpVersion;
}

export interface ParsedCidr {
  /** network address / prefix length, canonical */
  cidr: string;
  version: IpVersion;
  prefixLength: number;
}

/**
 * Parsing is memoised: hosts see the same few thousand addresses over and
 * over (every refresh re-reads members), and ipaddr.js is slow on the path
 * that rejects a form. The cache is bounded; it only ever holds results.
 */
const addressMemo = new Map<string, ParsedAddress | null>();
const cidrMemo = new Map<string, ParsedCidr | null>();
/** Dotted quad of decimal numbers without leading zeros (ipaddr.js checks each is at most 255). */
const FOUR_PART_DECIMAL = /^(0|[1-9]\d{0,2})(\.(0|[1-9]\d{0,2})){3}$/;

/** Canonical text of an IPv4 or IPv6 address, or null when it is not one. */
export function parseAddress(text: unknown): ParsedAddress | null {
  if (typeof text !== 'string') return null;
  // A hit is one lookup; the parser lives in its own function so that the
  // compiled hot path stays small.
  const hit = addressMemo.get(text);
  return hit !== undefined ? hit : parseAddressText(text);
}

function parseAddressText(text: string): ParsedAddress | null {
  if (text.length > 45 || text.includes('%')) return null;
  return memo(addressMemo, text, () => {
    // The family is decided by the separator, so ipaddr.js parses each
    // address once (its isValid* checks parse it too) and throws only for
    // text that is not an address at all.
    try {
      if (text.includes(':')) return { address: ipaddr.IPv6.parse(text).toString(), version: 6 as const };
      return FOUR_PART_DECIMAL.test(text) ? { address: ipaddr.IPv4.parse(text).toString(), version: 4 as const } : null;
    } catch {
      return null;
    }
  });
}

/**
 * Canonical CIDR (host bits cleared, as the kernel stores it). A bare address
 * is read as a host route (/32 or /128).
 */
export function parseCidr(text: unknown): ParsedCidr | null {
  if (typeof text !== 'string') return null;
  const hit = cidrMemo.get(text);
  return hit !== undefined ? hit : parseCidrText(text);
}

function parseCidrText(text: string): ParsedCidr | null {
  if (text.length > 49) return null;
  return memo(cidrMemo, text, () => computeCidr(text));
}

function computeCidr(text: string): ParsedCidr | null {
  const slash = text.indexOf('/');
  const addressPart = slash === -1 ? text : text.slice(0, slash);
  const parsed = parseAddress(addressPart);
  if (!parsed) return null;
  const max = parsed.version === 4 ? 32 : 128;
  let prefixLength = max;
  if (slash !== -1) {
    const lengthText = text.slice(slash + 1);
    if (!/^(0|[1-9][0-9]{0,2})$/.test(lengthText)) return null;
    prefixLength = Number(lengthText);
    if (prefixLength > max) return null;
  }
  const network =
    parsed.version === 4
      ? ipaddr.IPv4.networkAddressFromCIDR(`${parsed.address}/${prefixLength}`)
      : ipaddr.IPv6.networkAddressFromCIDR(`${parsed.address}/${prefixLength}`);
  return { cidr: `${network.toString()}/${prefixLength}`, version: parsed.version, prefixLength };
}

const MAC_RE = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;

/** Lower-case unicast MAC, or null when the text is not a usable unicast MAC. */
export function parseMac(text: unknown): string | null {
  if (typeof text !== 'string' || !MAC_RE.test(text)) return null;
  const mac = text.toLowerCase();
  const firstOctet = parseInt(mac.slice(0, 2), 16);
  if ((firstOctet & 1) === 1) return null; // multicast or broadcast
  if (mac === '00:00:00:00:00:00') return null;
  return mac;
}

/**
 * The IPv6 link-local address a kernel derives from a MAC (modified EUI-64),
 * in canonical text (RFC 5952). fe80:0:0:0 is followed by four groups of which
 * only the first and the last can be zero, so the longest run of zero groups is
 * always the one after fe80 (joined by the first group when that is zero too).
 */
export function linkLocalFromMac(mac: string): string {
  return memo(linkLocalMemo, mac, () => computeLinkLocal(mac));
}

const linkLocalMemo = new Map<string, string>();

function computeLinkLocal(mac: string): string {
  // mac is canonical (parseMac): byte i is the hex pair at 3i.
  const byte = (i: number) => parseInt(mac.slice(3 * i, 3 * i + 2), 16);
  const first = ((byte(0) ^ 0x02) << 8) | byte(1);
  const rest = `${((byte(2) << 8) | 0xff).toString(16)}:${(0xfe00 | byte(3)).toString(16)}:${((byte(4) << 8) | byte(5)).toString(16)}`;
  return first === 0 ? `fe80::${rest}` : `fe80::${first.toString(16)}:${rest}`;
}

/** Address with its full-length prefix, as iptables and ipset print it. */
export function hostCidr(address: string, version: IpVersion): string {
  return `${address}/${version === 4 ? 32 : 128}`;
}
