/** `virtfw apply`, `virtfw ruleset`, `virtfw teardown`: the driver on a host file, without a service. */
import { hostname } from 'node:os';
import type { Command } from 'commander';
import { loadDriverWith } from '../../drivers/load.js';
import type { ModelFirewallDriver } from '../../drivers/model-driver.js';
import { RULESET_FORMATS, renderRulesetText, type RulesetFormat } from '../../drivers/render-ruleset.js';
import { ValidationError } from '../../errors.js';
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

function format(value: string | undefined, serviceSide: boolean): RulesetFormat {
  const allowed: readonly string[] = serviceSide ? ['iptables', 'nft'] : RULESET_FORMATS;
  const f = value ?? 'iptables';
  if (!allowed.includes(f)) throw new ValidationError('--format', `${JSON.stringify(f)} is not one of ${allowed.join(', ')}`);
  return f as RulesetFormat;
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
    const { api, instances } = await readHostFile(flags.hostFile);
    const driver = await loadDriverWith('iptables', { firewallDriver: flags.driver ?? null }, api, driverOptions(flags));
    const started = performance.now();
    const progress = progressReporter(instances.length);
    driver.filterDeferApplyOn();
    for (const [i, { instance, networkInfo }] of instances.entries()) {
      await driver.setupBasicFiltering(instance, networkInfo);
      await driver.prepareInstanceFilter(instance, networkInfo);
      progress(i + 1, 'rendering');
    }
    progress(instances.length, 'applying to the kernel');
    try {
      await driver.filterDeferApplyOff();
    } finally {
      await driver.close();
    }
    progress(-1, '');
    const ms = Math.round(performance.now() - started);
    const status = driver.status();
    const counts = driver.ruleCounts();
    const summary = Object.entries(counts)
      .map(([k, v]) => `${v} ${k}`)
      .join(', ');
    print({ applied: instances.length, durationMs: ms, rules: counts, instances: status }, flags.json ?? false, () =>
      [
        `applied ${instances.length} instance(s) in ${ms} ms${summary ? `: ${summary}` : ''}`,
        table(status as unknown as Record<string, unknown>[], ['instanceId', 'filtered', 'lastApply', 'lastError']),
      ].join('\n'),
    );
  });

  addDriverFlags(
    program
      .command('ruleset')
      .description('print the rendered ruleset of a host (from the API) or of a host file, without touching the kernel')
      .option('-f, --host-file <path>', 'render this host file locally instead of asking the API')
      .option('--host <name>', "host whose ruleset the API renders (default: this machine's name)")
      .option('--url <url>', 'virtfw API URL (env VIRTFW_URL)')
      .option('--token <token>', 'API token (env VIRTFW_TOKEN)')
      .option('--format <format>', `${RULESET_FORMATS.join(', ')} (iptables: both families, ipsets and the bridge table; nft: the nftables driver's transaction)`, 'iptables')
      .option('--json', 'machine-readable output'),
    { sameNet: false },
  ).action(async (flags: HostFlags & { host?: string; url?: string; token?: string }) => {
    if (!flags.hostFile) {
      const host = flags.host ?? hostname();
      const f = format(flags.format, true);
      const text = await clientFrom(flags).request<string>('GET', `/v2.0/hosts/${encodeURIComponent(host)}/ruleset?format=${f}`);
      print({ host, format: f, ruleset: text }, flags.json ?? false, () => text.trimEnd());
      return;
    }
    const f = format(flags.format, false);
    const { api, instances } = await readHostFile(flags.hostFile);
    const text = await renderRulesetText(api, instances, driverOptions(flags), f);
    print({ format: f, ruleset: text }, flags.json ?? false, () => text.trimEnd());
  });

  addDriverFlags(
    program.command('teardown').description('remove every chain, set and table virtfw owns').option('--json', 'machine-readable output'),
    { sameNet: false },
  ).action(async (flags: HostFlags) => {
    const driver = (await loadDriverWith('iptables', { firewallDriver: flags.driver ?? null }, new InMemoryVirtAPI(), driverOptions(flags))) as ModelFirewallDriver;
    if (typeof driver.teardown !== 'function') throw new ValidationError('--driver', 'this driver owns nothing in the kernel');
    await driver.teardown();
    print({ removed: true }, flags.json ?? false, () => 'removed everything virtfw owned');
  });
}
