/**
 * Flags shared by every CLI command that builds a driver, mapped onto
 * DriverOptions. Validation of the values happens in the driver itself, so
 * the CLI and the library refuse the same things with the same messages.
 */
import { Option, type Command } from 'commander';
import type { DriverOptions } from '../drivers/options.js';
import { FakeKernel } from '../kernel/fake-kernel.js';

export interface DriverFlags {
  driver?: string;
  netns?: string;
  prefix?: string;
  ipv6: boolean;
  sameNet?: boolean;
  fallback?: string;
  memberMatch?: string;
  bridgeFilter: boolean;
  dryRun?: boolean;
}

export function addDriverFlags(cmd: Command, defaults: { sameNet: boolean }): Command {
  return cmd
    .option('--driver <name>', 'firewall driver: iptables, nftables, noop, or a module specifier (env VIRTFW_FIREWALL_DRIVER)')
    .option('--netns <name>', 'apply rules inside this network namespace')
    .option('--prefix <prefix>', 'prefix of every chain and table virtfw owns', 'virtfw')
    .option('--no-ipv6', 'filter IPv4 only')
    .option('--same-net', 'accept traffic between instances of one subnet (Nova allow_same_net_traffic)', defaults.sameNet)
    .option('--no-same-net', 'do not accept same-subnet traffic unless a rule allows it')
    .addOption(new Option('--fallback <action>', 'verdict for traffic no rule allows').choices(['drop', 'reject']).default('drop'))
    .addOption(new Option('--member-match <how>', 'how remote-group rules match members').choices(['ipset', 'expand']).default('ipset'))
    .option('--no-bridge-filter', 'no L2 anti-spoofing in an nftables bridge table')
    .option('--dry-run', 'render only; never touch the kernel');
}

export function driverOptions(flags: DriverFlags): DriverOptions {
  return {
    ...(flags.prefix ? { prefix: flags.prefix } : {}),
    ...(flags.netns ? { netns: flags.netns } : {}),
    ipv6: flags.ipv6,
    allowSameNetTraffic: flags.sameNet ?? false,
    fallbackAction: flags.fallback === 'reject' ? 'REJECT' : 'DROP',
    memberMatch: flags.memberMatch === 'expand' ? 'expand' : 'ipset',
    bridgeFilter: flags.bridgeFilter,
    ...(flags.dryRun ? { runner: new FakeKernel() } : {}),
  };
}
