/**
 * The ruleset a set of instances renders to, for `virtfw ruleset` and the
 * API's `/v2.0/hosts/{host}/ruleset`: a driver over a fake kernel prepares
 * every instance in one deferred batch, and the text it would write is
 * returned. Nothing touches the real kernel.
 */
import { ValidationError } from '../errors.js';
import { FakeKernel } from '../kernel/fake-kernel.js';
import type { Instance, NetworkInfo } from '../model/types.js';
import type { VirtAPI } from '../virtapi/virtapi.js';
import { IptablesFirewallDriver } from './iptables-driver.js';
import type { ModelFirewallDriver } from './model-driver.js';
import { NftablesFirewallDriver } from './nftables-driver.js';
import type { DriverOptions } from './options.js';

export const RULESET_FORMATS = ['iptables', 'nft', 'ip4', 'ip6', 'bridge', 'ipset'] as const;
export type RulesetFormat = (typeof RULESET_FORMATS)[number];

export async function renderRulesetText(
  virtapi: VirtAPI,
  instances: Iterable<{ instance: Instance; networkInfo: NetworkInfo }>,
  options: DriverOptions,
  format: RulesetFormat = 'iptables',
): Promise<string> {
  if (!RULESET_FORMATS.includes(format)) {
    throw new ValidationError('format', `${JSON.stringify(format)} is not one of ${RULESET_FORMATS.join(', ')}`);
  }
  const opts: DriverOptions = { ...options, runner: new FakeKernel() };
  delete opts.netns;
  const driver: ModelFirewallDriver = format === 'nft' ? new NftablesFirewallDriver(virtapi, opts) : new IptablesFirewallDriver(virtapi, opts);
  driver.filterDeferApplyOn();
  for (const { instance, networkInfo } of instances) {
    await driver.setupBasicFiltering(instance, networkInfo);
    await driver.prepareInstanceFilter(instance, networkInfo);
  }
  const r = driver.renderRuleset();
  switch (format) {
    case 'nft':
      return `# nft -f -\n${r.nft ?? ''}`;
    case 'ip4':
      return r.ipv4 ?? '';
    case 'ip6':
      return r.ipv6 ?? '';
    case 'bridge':
      return r.bridge ?? '';
    case 'ipset':
      return r.ipset ?? '';
    default:
      return [
        `# iptables-restore --noflush\n${r.ipv4 ?? ''}`,
        `# ip6tables-restore --noflush\n${r.ipv6 ?? ''}`,
        `# ipset restore\n${r.ipset ?? ''}`,
        `# nft -f - (bridge)\n${r.bridge ?? ''}`,
      ].join('\n');
  }
}
