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

const IPTABLES: readonly (readonly [string, string[]])[] = [
  ['iptables-legacy', ['iptables-legacy-save']],
  ['ip6tables-legacy', ['ip6tables-legacy-save']],
  ['iptables-nft', ['iptables-nft-save']],
  ['ip6tables-nft', ['ip6tables-nft-save']],
];

/** Every place rules can live, as text (null: the tool is missing or failed). */
export interface ForeignRulesets {
  iptables: (string | null)[];
  nft: string | null;
}

/** The tables iptables-nft keeps its rules in, per family, as `nft list ruleset` shows them. */
const IPTABLES_NFT_TABLE = { ip: /^table ip (filter|nat|mangle|raw|security) /m, ip6: /^table ip6 (filter|nat|mangle|raw|security) /m };

/**
 * Reads every listing, side by side where they are independent. iptables-nft
 * keeps its rules in nftables tables of its own, so it is read only for a
 * family whose tables the nft listing shows (or when that listing failed).
 * The iptables listings come back in IPTABLES order.
 */
export async function readRulesets(runner: CommandRunner): Promise<ForeignRulesets> {
  const legacy = Promise.all([read(runner, ['iptables-legacy-save']), read(runner, ['ip6tables-legacy-save'])]);
  const nft = await read(runner, ['nft', 'list', 'ruleset']);
  const viaNft = (argv: string[], table: RegExp) => (nft === null || table.test(nft) ? read(runner, argv) : null);
  const [nft4, nft6] = await Promise.all([viaNft(['iptables-nft-save'], IPTABLES_NFT_TABLE.ip), viaNft(['ip6tables-nft-save'], IPTABLES_NFT_TABLE.ip6)]);
  return { iptables: [...(await legacy), nft4, nft6], nft };
}

/** What in `rulesets` filters `devices` besides us, in plain words. */
export function findConflicts(rulesets: ForeignRulesets, names: Names, devices: readonly string[]): string[] {
  const findings: string[] = [];
  const texts = rulesets.iptables;
  const ruleset = rulesets.nft;
  for (const [i, [label]] of IPTABLES.entries()) {
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
