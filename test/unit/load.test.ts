import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { DriverLoadError, ValidationError } from '../../src/errors.js';
import { IptablesFirewallDriver } from '../../src/drivers/iptables-driver.js';
import { loadDriverWith } from '../../src/drivers/load.js';
import { NoopFirewallDriver } from '../../src/drivers/noop-driver.js';
import { FirewallDriver, NotImplementedError } from '../../src/drivers/firewall-driver.js';
import { FakeKernel } from '../../src/kernel/fake-kernel.js';
import { InMemoryVirtAPI } from '../../src/virtapi/memory.js';

const api = new InMemoryVirtAPI();

describe('loadDriver', () => {
  it('uses the default when nothing is configured', async () => {
    const driver = await loadDriverWith('noop', { env: {} }, api);
    expect(driver).toBeInstanceOf(NoopFirewallDriver);
  });

  it('prefers the config over the environment over the default', async () => {
    const opts = { runner: new FakeKernel() };
    expect(await loadDriverWith('noop', { firewallDriver: 'iptables', env: { VIRTFW_FIREWALL_DRIVER: 'noop' } }, api, opts)).toBeInstanceOf(
      IptablesFirewallDriver,
    );
    expect(await loadDriverWith('iptables', { env: { VIRTFW_FIREWALL_DRIVER: 'noop' } }, api)).toBeInstanceOf(NoopFirewallDriver);
  });

  it('loads a third-party driver class by module specifier', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'virtfw-driver-'));
    const file = join(dir, 'custom.mjs');
    const base = pathToFileURL(join(process.cwd(), 'src/drivers/noop-driver.ts')).href;
    writeFileSync(
      file,
      `import { NoopFirewallDriver } from ${JSON.stringify(base)};\nexport class Custom extends NoopFirewallDriver { constructor(api, opts) { super(); this.opts = opts; } }\nexport default Custom;\n`,
    );
    const named = (await loadDriverWith('noop', { firewallDriver: `${file}#Custom`, env: {} }, api, { x: 1 })) as unknown as {
      opts: unknown;
    };
    expect(named.opts).toEqual({ x: 1 });
    expect(await loadDriverWith('noop', { firewallDriver: file, env: {} }, api)).toBeInstanceOf(FirewallDriver);
  });

  it('an unknown name is a clear error', async () => {
    await expect(loadDriverWith('noop', { firewallDriver: 'nosuchdriver', env: {} })).rejects.toThrow(
      /unknown firewall driver "nosuchdriver": not one of iptables, nftables, noop/,
    );
    await expect(loadDriverWith('noop', { firewallDriver: 'nosuchdriver', env: {} })).rejects.toBeInstanceOf(DriverLoadError);
  });

  it('a module without the export is a clear error', async () => {
    await expect(loadDriverWith('noop', { firewallDriver: 'node:path#Nope', env: {} })).rejects.toThrow(/no export "Nope"/);
  });

  it('refuses names that look like shell or options', async () => {
    await expect(loadDriverWith('noop', { firewallDriver: 'x; rm -rf /', env: {} })).rejects.toBeInstanceOf(ValidationError);
    await expect(loadDriverWith('noop', { env: { VIRTFW_FIREWALL_DRIVER: '--help' } })).rejects.toThrow(/VIRTFW_FIREWALL_DRIVER/);
  });

  it('passes constructor validation errors through', async () => {
    await expect(loadDriverWith('iptables', { env: {} }, api, { prefix: 'BAD' })).rejects.toBeInstanceOf(ValidationError);
  });
});

describe('NoopFirewallDriver and the base class', () => {
  it('noop accepts everything and says filters exist', async () => {
    const noop = new NoopFirewallDriver('anything', 1, {});
    await noop.setupBasicFiltering({ id: 'a' }, []);
    await noop.prepareInstanceFilter({ id: 'a' }, []);
    await noop.refreshSecurityGroupRules('g');
    noop.filterDeferApplyOn();
    await noop.filterDeferApplyOff();
    expect(await noop.instanceFilterExists({ id: 'a' }, [])).toBe(true);
  });

  it('the base class raises for every method a driver does not implement', async () => {
    const base = new FirewallDriver();
    await expect(base.prepareInstanceFilter({ id: 'a' }, [])).rejects.toBeInstanceOf(NotImplementedError);
    await expect(base.refreshProviderFwRules()).rejects.toThrow(/does not implement refreshProviderFwRules/);
    expect(() => base.filterDeferApplyOn()).not.toThrow();
  });
});
