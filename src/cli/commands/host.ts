/** `virtfw apply`, `virtfw ruleset`, `virtfw teardown`: the driver on a host file, without a service. */
import { hostname } from 'node:os';
import type { Command } from 'commander';
import { IptablesFirewallDriver } from '../../drivers/iptables-driver.js';
import { loadDriverWith } from '../../drivers/load.js';
import { readHostFile } from '../../hostfile/hostfile.js';
import { InMemoryVirtAPI } from '../../virtapi/memory.js';
import { addDriverFlags, driverOptions, type DriverFlags } from '../driver-options.js';
import { print, table } from '../output.js';
import { clientFrom } from './resources.js';

interface HostFlags extends DriverFlags {
  hostFile: string;
  json?: boolean;
  format?: string;
}

async function buildDriver(flags: HostFlags) {
  const { api, instances } = await readHostFile(flags.hostFile);
  const driver = await loadDriverWith('iptables', { firewallDriver: flags.driver ?? null }, api, driverOptions(flags));
  return { driver, instances };
}

/** Progress on stderr for long applies, when a person is watching (a terminal). */
function progressReporter(total: number): (done: number, phase: string) => void {
  if (!process.stderr.isTTY || total < 50) return () => undefined;
  let last = 0;
  return (done, phase) => {
    if (done === -1) {
      process.stderr.write('\r\x1b[K');
      return;
    }
    const now = Date.now();
    if (now - last < 100 && done !== total) return;
    last = now;
    process.stderr.write(`\r\x1b[K${phase}: ${done}/${total} instances`);
  };
}

export function registerHostCommands(program: Command): void {
  addDriverFlags(
    program
      .command('apply')
      .description('filter every instance of a host file, in one deferred apply')
      .requiredOption('-f, --host-file <path>', 'host file (JSON: securityGroups, instances, providerRules)')
      .option('--json', 'machine-readable output'),
    { sameNet: false },
  ).action(async (flags: HostFlags) => {
    const { driver, instances } = await buildDriver(flags);
    const started = performance.now();
    const progress = progressReporter(instances.length);
    driver.filterDeferApplyOn();
    for (const [i, { instance, networkInfo }] of instances.entries()) {
      await driver.setupBasicFiltering(instance, networkInfo);
      await driver.prepareInstanceFilter(instance, networkInfo);
      progress(i + 1, 'rendering');
    }
    progress(instances.length, 'applying to the kernel');
    await driver.filterDeferApplyOff();
    progress(-1, '');
    const ms = Math.round(performance.now() - started);
    const status = driver instanceof IptablesFirewallDriver ? driver.status() : [];
    const counts = driver instanceof IptablesFirewallDriver ? driver.ruleCounts() : null;
    print({ applied: instances.length, durationMs: ms, rules: counts, instances: status }, flags.json ?? false, () =>
      [
        `applied ${instances.length} instance(s) in ${ms} ms${counts ? `: ${counts.ipv4} IPv4, ${counts.ipv6} IPv6, ${counts.bridge} bridge rules` : ''}`,
        table(status as unknown as Record<string, unknown>[], ['instanceId', 'filtered', 'lastApply', 'lastError']),
      ].join('\n'),
    );
  });

  addDriverFlags(
    program
      .command('ruleset')
      .description("print the rendered ruleset of a host (from the API) or of a host file, without touching the kernel")
      .option('-f, --host-file <path>', 'render this host file locally instead of asking the API')
      .option('--host <name>', "host whose ruleset the API renders (default: this machine's name)")
      .option('--url <url>', 'virtfw API URL (env VIRTFW_URL)')
      .option('--token <token>', 'API token (env VIRTFW_TOKEN)')
      .option('--format <format>', 'iptables (both families), ip4, ip6 or bridge', 'iptables')
      .option('--json', 'machine-readable output'),
    { sameNet: false },
  ).action(async (flags: HostFlags & { host?: string; url?: string; token?: string }) => {
    if (!flags.hostFile) {
      const host = flags.host ?? hostname();
      const text = await clientFrom(flags).request<string>('GET', `/v2.0/hosts/${encodeURIComponent(host)}/ruleset?format=iptables`);
      print({ host, ruleset: text }, flags.json ?? false, () => text.trimEnd());
      return;
    }
    const { driver, instances } = await buildDriver({ ...flags, dryRun: true, driver: 'iptables' });
    const ipt = driver as IptablesFirewallDriver;
    ipt.filterDeferApplyOn();
    for (const { instance, networkInfo } of instances) {
      await ipt.setupBasicFiltering(instance, networkInfo);
      await ipt.prepareInstanceFilter(instance, networkInfo);
    }
    const ruleset = ipt.renderRuleset();
    const text: Record<string, string> = {
      iptables: `# iptables-restore --noflush\n${ruleset.ipv4}\n# ip6tables-restore --noflush\n${ruleset.ipv6}\n# nft -f - (bridge)\n${ruleset.bridge}`,
      ip4: ruleset.ipv4,
      ip6: ruleset.ipv6,
      bridge: ruleset.bridge,
    };
    const chosen = text[flags.format ?? 'iptables'];
    if (chosen === undefined) throw new Error(`--format: ${JSON.stringify(flags.format)} is not one of iptables, ip4, ip6, bridge`);
    print(ruleset, flags.json ?? false, () => chosen.trimEnd());
  });

  addDriverFlags(
    program.command('teardown').description('remove every chain, hook and table virtfw owns').option('--json', 'machine-readable output'),
    { sameNet: false },
  ).action(async (flags: HostFlags) => {
    const driver = new IptablesFirewallDriver(new InMemoryVirtAPI(), driverOptions(flags));
    await driver.teardown();
    print({ removed: true }, flags.json ?? false, () => 'removed everything virtfw owned');
  });
}
