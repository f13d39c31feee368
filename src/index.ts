/** virtfw: security groups for virtual instances, enforced by the Linux kernel. */
export { FirewallDriver, NotImplementedError, type InstanceStatus } from './drivers/firewall-driver.js';
export { IptablesFirewallDriver } from './drivers/iptables-driver.js';
export { NoopFirewallDriver } from './drivers/noop-driver.js';
export { loadDriver, loadDriverWith, driverName, BUILTIN_DRIVERS, type LoadDriverConfig } from './drivers/load.js';
export { resolveDriverOptions, type DriverOptions, type ResolvedDriverOptions } from './drivers/options.js';
export { ApplyError, DriverLoadError, FirewallError, NotFilteredError, ValidationError } from './errors.js';
export { IptablesManager, type ApplyStats, type IptablesManagerOptions } from './kernel/iptables-manager.js';
export { BridgeFilter } from './kernel/bridge-filter.js';
export { FakeKernel } from './kernel/fake-kernel.js';
export { NetnsRunner, ProcessRunner, type CommandResult, type CommandRunner, type RunOptions } from './kernel/exec.js';
export { silentLogger, type Logger } from './logger.js';
export type * from './model/types.js';
export { normalizeInstance, normalizeProviderRule, normalizeRule, validateNetworkInfo } from './model/validate.js';
export { Names } from './render/names.js';
export { InMemoryVirtAPI } from './virtapi/memory.js';
export type { InstanceRecord, VirtAPI } from './virtapi/virtapi.js';
export { loadHost, readHostFile, type HostFile } from './hostfile/hostfile.js';
