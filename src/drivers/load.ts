/**
 * loadDriver: the firewall driver named by configuration. The name comes from
 * `config.firewallDriver`, else the environment variable
 * VIRTFW_FIREWALL_DRIVER, else the caller's default. It is a short name
 * (`iptables`, `nftables`, `noop`) or the module specifier of a third-party driver class:
 * `some-package`, `some-package#ExportName`, `./path/to/driver.js#Name`
 * (default export when no `#Name`). The class is constructed with `args`.
 */
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { DriverLoadError, ValidationError } from '../errors.js';
import { FirewallDriver } from './firewall-driver.js';
import { IptablesFirewallDriver } from './iptables-driver.js';
import { NftablesFirewallDriver } from './nftables-driver.js';
import { NoopFirewallDriver } from './noop-driver.js';

type DriverClass = new (...args: never[]) => FirewallDriver;

export const BUILTIN_DRIVERS: Readonly<Record<string, DriverClass>> = Object.freeze({
  iptables: IptablesFirewallDriver as unknown as DriverClass,
  nftables: NftablesFirewallDriver as unknown as DriverClass,
  noop: NoopFirewallDriver as unknown as DriverClass,
});

export interface LoadDriverConfig {
  firewallDriver?: string | null;
  env?: NodeJS.ProcessEnv;
}

const SPECIFIER_RE = /^[^\s'"`;|&$<>]{1,512}$/;

export function driverName(defaultName: string, config: LoadDriverConfig = {}): string {
  const env = config.env ?? process.env;
  const configured = config.firewallDriver ?? env.VIRTFW_FIREWALL_DRIVER;
  const name = configured === undefined || configured === null || configured === '' ? defaultName : configured;
  const field = config.firewallDriver ? 'firewallDriver' : env.VIRTFW_FIREWALL_DRIVER ? 'VIRTFW_FIREWALL_DRIVER' : 'defaultName';
  if (typeof name !== 'string' || !SPECIFIER_RE.test(name) || name.startsWith('-')) {
    throw new ValidationError(field, `${JSON.stringify(name)} is not a driver name or module specifier`);
  }
  return name;
}

async function importDriverClass(name: string): Promise<DriverClass> {
  const hash = name.lastIndexOf('#');
  const specifier = hash === -1 ? name : name.slice(0, hash);
  const exportName = hash === -1 ? 'default' : name.slice(hash + 1);
  const url = specifier.startsWith('.') || isAbsolute(specifier) ? pathToFileURL(resolve(specifier)).href : specifier;
  let mod: Record<string, unknown>;
  try {
    mod = (await import(url)) as Record<string, unknown>;
  } catch (err) {
    throw new DriverLoadError(
      `unknown firewall driver ${JSON.stringify(name)}: not one of ${Object.keys(BUILTIN_DRIVERS).join(', ')}, and no module ${JSON.stringify(specifier)} could be loaded (${(err as Error).message})`,
      err,
    );
  }
  const cls = mod[exportName];
  if (typeof cls !== 'function') {
    throw new DriverLoadError(`module ${JSON.stringify(specifier)} has no export ${JSON.stringify(exportName)} that is a driver class`);
  }
  return cls as DriverClass;
}

/** Loads and constructs the configured driver (Nova's load_driver). */
export async function loadDriver(defaultName: string, ...args: unknown[]): Promise<FirewallDriver> {
  return loadDriverWith(defaultName, {}, ...args);
}

/** As loadDriver, with the configuration given explicitly instead of read from the environment. */
export async function loadDriverWith(defaultName: string, config: LoadDriverConfig, ...args: unknown[]): Promise<FirewallDriver> {
  const name = driverName(defaultName, config);
  const cls = BUILTIN_DRIVERS[name] ?? (await importDriverClass(name));
  let driver: unknown;
  try {
    driver = new (cls as unknown as new (...a: unknown[]) => unknown)(...args);
  } catch (err) {
    if (err instanceof ValidationError) throw err;
    throw new DriverLoadError(`firewall driver ${JSON.stringify(name)} could not be constructed: ${(err as Error).message}`, err);
  }
  if (!(driver instanceof FirewallDriver) && !looksLikeDriver(driver)) {
    throw new DriverLoadError(`${JSON.stringify(name)} is not a FirewallDriver (it lacks prepareInstanceFilter and friends)`);
  }
  return driver as FirewallDriver;
}

const METHODS = [
  'setupBasicFiltering',
  'prepareInstanceFilter',
  'applyInstanceFilter',
  'unfilterInstance',
  'instanceFilterExists',
  'refreshSecurityGroupRules',
  'refreshSecurityGroupMembers',
  'refreshInstanceSecurityRules',
  'refreshProviderFwRules',
  'filterDeferApplyOn',
  'filterDeferApplyOff',
] as const;

function looksLikeDriver(value: unknown): boolean {
  return typeof value === 'object' && value !== null && METHODS.every((m) => typeof (value as Record<string, unknown>)[m] === 'function');
}
