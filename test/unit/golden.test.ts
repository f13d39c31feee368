/**
 * Golden tests: the full ruleset rendered for representative hosts, compared
 * with reviewed files under test/golden. `npx vitest run -u` rewrites them.
 */
import { describe, expect, it } from 'vitest';
import { IptablesFirewallDriver } from '../../src/drivers/iptables-driver.js';
import type { DriverOptions } from '../../src/drivers/options.js';
import { FakeKernel } from '../../src/kernel/fake-kernel.js';
import { exampleApi } from '../helpers/scenarios.js';

async function rendered(options: DriverOptions, ids: string[]): Promise<string> {
  const api = exampleApi();
  const kernel = new FakeKernel();
  const driver = new IptablesFirewallDriver(api, { runner: kernel, ...options });
  driver.filterDeferApplyOn();
  for (const id of ids) {
    const record = (await api.getSecurityGroupMembers('web'))
      .concat(await api.getSecurityGroupMembers('db'))
      .find((r) => r.instance.id === id);
    if (!record) throw new Error(id);
    await driver.setupBasicFiltering(record.instance, record.networkInfo);
    await driver.prepareInstanceFilter(record.instance, record.networkInfo);
  }
  await driver.filterDeferApplyOff();
  const ruleset = driver.renderRuleset();
  // What the first apply wrote to the (empty) kernel is exactly the rendered ruleset.
  expect(kernel.restoreInputs[0]).toBe(ruleset.ipv4);
  return `# ip4tables-restore --noflush\n${ruleset.ipv4}\n# ip6tables-restore --noflush\n${ruleset.ipv6}\n# nft -f (bridge)\n${ruleset.bridge}\n# ipset restore\n${ruleset.ipset}`;
}

describe('rendered rulesets', () => {
  it('Nova defaults: every rule kind, remote groups, provider rules, routed and multi-NIC instances', async () => {
    const text = await rendered({}, ['1', '2', 'a6b1c7de-52f1-4a8e-9d3c-0123456789ab', '4']);
    await expect(text).toMatchFileSnapshot('../golden/nova-defaults.txt');
  });

  it('service defaults: no same-network traffic, REJECT fallback, ipsets for remote groups', async () => {
    const text = await rendered({ allowSameNetTraffic: false, fallbackAction: 'REJECT', memberMatch: 'ipset' }, ['1', '4']);
    await expect(text).toMatchFileSnapshot('../golden/service-reject-ipset.txt');
  });

  it('IPv4 only, without the bridge filter, custom prefix', async () => {
    const text = await rendered({ ipv6: false, bridgeFilter: false, prefix: 'fw2', allowSameNetTraffic: false }, ['1']);
    await expect(text).toMatchFileSnapshot('../golden/ipv4-only-no-bridge.txt');
  });
});
