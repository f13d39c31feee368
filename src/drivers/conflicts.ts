/**
 * Guardrail for the nftables driver: before its first apply, look for other
 * firewalls that filter the same devices, in each of the three places rules
 * can live on a Linux host: iptables-legacy, iptables-nft and native nft
 * tables. Two filters on one tap device both get a say, which is rarely what
 * an operator meant; the driver reports each finding in plain words.
 */
import type { CommandRunner } from '../kernel/exec.js';
import type { Names } from '../render/names.js';

async function read(runner: CommandRunner, argv: string[]): Promise<string | null> {
  try {
    const result = await runner.run(argv, { timeoutMs: 30_000 });
    return result.code === 0 ? result.stdout : null;
  } catch {
    return null; // the tool is not installed
  }
}

function deviceMentions(text: string, devices: readonly string[]): string[] {
  const found: string[] = [];
  for (const dev of devices) {
    const escaped = dev.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    if (new RegExp(`(--physdev-(in|out)|\\s-[io]|ifname)\\s+"?${escaped}"?(\\s|$)`, 'm').test(text)) found.push(dev);
  }
  return found;
}

/**
 * Where iptables rules can live, and the tool that lists them. iptables-nft
 * keeps its rules in nftables tables of its own (`inNft`: how `nft list
 * ruleset` shows them), so it is read only when those tables exist.
 */
const IPTABLES: readonly { label: string; argv: string[]; inNft?: RegExp }[] = [
  { label: 'iptables-legacy', argv: ['iptables-legacy-save'] },
  { label: 'ip6tables-legacy', argv: ['ip6tables-legacy-save'] },
  { label: 'iptables-nft', argv: ['iptables-nft-save'], inNft: /^table ip (filter|nat|mangle|raw|security) /m },
  { label: 'ip6tables-nft', argv: ['ip6tables-nft-save'], inNft: /^table ip6 (filter|nat|mangle|raw|security) /m },
];

/** Every place rules can live, as text (null: the tool is missing or failed). */
export interface ForeignRulesets {
  iptables: (string | null)[];
  nft: string | null;
}

/**
 * Reads every listing (the iptables ones in IPTABLES order), side by side
 * where they are independent: iptables-nft only for a family whose tables the
 * nft listing shows (or when that listing failed).
 */
export async function readRulesets(runner: CommandRunner): Promise<ForeignRulesets> {
  const nftListing = read(runner, ['nft', 'list', 'ruleset']);
  const iptables = Promise.all(
    IPTABLES.map(async ({ argv, inNft }) => {
      if (!inNft) return read(runner, argv);
      const nft = await nftListing;
      return nft === null || inNft.test(nft) ? read(runner, argv) : null;
    }),
  );
  return { iptables: await iptables, nft: await nftListing };
}

/** What in `rulesets` filters `devices` besides us, in plain words. */
export function findConflicts(rulesets: ForeignRulesets, names: Names, devices: readonly string[]): string[] {
  const findings: string[] = [];
  const texts = rulesets.iptables;
  const ruleset = rulesets.nft;
  for (const [i, { label }] of IPTABLES.entries()) {
    const text = texts[i];
    if (!text) continue;
    if (new RegExp(`^:${names.prefix}-`, 'm').test(text)) {
      findings.push(
        `${label} holds ${names.prefix}-* chains (the iptables driver filtered this host): remove them with \`virtfw teardown --prefix ${names.prefix}\` before using the nftables driver`,
      );
    }
    const devs = deviceMentions(text, devices);
    if (devs.length) findings.push(`${label} has rules for ${devs.join(', ')}: they apply on top of virtfw's`);
  }
  // The tables iptables-nft keeps in nftables were reported above already.
  const iptablesNftRead = texts[2] !== null || texts[3] !== null;
  const iptablesNftTable = /^(ip|ip6|arp|bridge) (filter|nat|mangle|raw|security|broute)$/;
  if (ruleset) {
    const tables = ruleset.split(/^table /m).slice(1);
    for (const table of tables) {
      const header = table.split('\n')[0]?.replace(/\s*\{\s*$/, '') ?? '';
      if (header === `inet ${names.prefix}` || header === `bridge ${names.bridgeTable}`) continue;
      if (iptablesNftRead && iptablesNftTable.test(header)) continue;
      const devs = deviceMentions(table, devices);
      if (devs.length) findings.push(`nft table ${header} has rules for ${devs.join(', ')}: they apply on top of virtfw's`);
    }
  }
  return findings;
}
