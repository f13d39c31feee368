/**
 * The product code the load benchmark drives, loaded from dist/ (what the
 * agents run), not from src/: the working tree may hold source changes that
 * are not built, and the final check must render with the agents' own code
 * and options. Types come from src/.
 */
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Command } from 'commander';
import type { DriverOptions } from '../src/drivers/options.js';

export interface Product {
  openStore: (typeof import('../src/store/open.js'))['openStore'];
  IptablesFirewallDriver: (typeof import('../src/drivers/iptables-driver.js'))['IptablesFirewallDriver'];
  FakeKernel: (typeof import('../src/kernel/fake-kernel.js'))['FakeKernel'];
  /** the driver options `virtfw agent` builds from its default flags (no runner) */
  agentDriverOptions: DriverOptions;
}

export async function loadProduct(root: string): Promise<Product> {
  const load = async <T>(path: string): Promise<T> => (await import(pathToFileURL(join(root, 'dist', path)).href)) as T;
  const [open, driver, kernel, cli] = await Promise.all([
    load<typeof import('../src/store/open.js')>('store/open.js'),
    load<typeof import('../src/drivers/iptables-driver.js')>('drivers/iptables-driver.js'),
    load<typeof import('../src/kernel/fake-kernel.js')>('kernel/fake-kernel.js'),
    load<typeof import('../src/cli/driver-options.js')>('cli/driver-options.js'),
  ]);
  // As src/cli/commands/service.ts does for `agent`: its flags with their defaults, dry-run handled by the service.
  const cmd = cli.addDriverFlags(new Command(), { sameNet: false });
  cmd.parse([], { from: 'user' });
  const { runner: _runner, ...agentDriverOptions } = cli.driverOptions({ ...(cmd.opts() as Parameters<typeof cli.driverOptions>[0]), dryRun: false });
  return { openStore: open.openStore, IptablesFirewallDriver: driver.IptablesFirewallDriver, FakeKernel: kernel.FakeKernel, agentDriverOptions };
}
