/**
 * FirewallDriver: the instance-level API of nova.virt.firewall, in camelCase.
 * A compute manager calls it as an instance's life goes on:
 *
 *   spawn:    setupBasicFiltering -> prepareInstanceFilter -> (start) -> applyInstanceFilter
 *   destroy:  unfilterInstance
 *   changes:  refreshSecurityGroupRules / refreshSecurityGroupMembers /
 *             refreshInstanceSecurityRules / refreshProviderFwRules
 *   start-up: filterDeferApplyOn, then every instance, then filterDeferApplyOff
 *
 * Like Nova's base class, a method a driver does not implement raises.
 */
import { FirewallError } from '../errors.js';
import type { Instance, NetworkInfo } from '../model/types.js';

export class NotImplementedError extends FirewallError {
  constructor(driver: string, method: string) {
    super('VIRTFW_ERR_NOT_IMPLEMENTED', `${driver} does not implement ${method}`);
  }
}

/** What `status()` reports per instance. */
export interface InstanceStatus {
  instanceId: string;
  filtered: boolean;
  /** ISO time of the last apply that wrote this instance's rules (or the members of a group its rules name) */
  lastApply: string | null;
  /** the error of a failed apply that should have written them, until an apply succeeds (which writes them too) */
  lastError: string | null;
}

export class FirewallDriver {
  /** Create rules to block spoofing and allow DHCP; called before prepareInstanceFilter. */
  async setupBasicFiltering(_instance: Instance, _networkInfo: NetworkInfo): Promise<void> {
    throw new NotImplementedError(this.constructor.name, 'setupBasicFiltering');
  }

  /** Prepare the instance's filters. The instance is not running yet. */
  async prepareInstanceFilter(_instance: Instance, _networkInfo: NetworkInfo): Promise<void> {
    throw new NotImplementedError(this.constructor.name, 'prepareInstanceFilter');
  }

  /** Once this returns the instance is firewalled; ideally a no-op after prepareInstanceFilter. */
  async applyInstanceFilter(_instance: Instance, _networkInfo: NetworkInfo): Promise<void> {
    throw new NotImplementedError(this.constructor.name, 'applyInstanceFilter');
  }

  /** Stop filtering the instance: remove every rule it had. */
  async unfilterInstance(_instance: Instance, _networkInfo: NetworkInfo): Promise<void> {
    throw new NotImplementedError(this.constructor.name, 'unfilterInstance');
  }

  /** Are the instance's filters in place? */
  async instanceFilterExists(_instance: Instance, _networkInfo: NetworkInfo): Promise<boolean> {
    throw new NotImplementedError(this.constructor.name, 'instanceFilterExists');
  }

  /** A rule was added to or removed from the group: re-read its rules from the data store. */
  async refreshSecurityGroupRules(_securityGroupId: string): Promise<void> {
    throw new NotImplementedError(this.constructor.name, 'refreshSecurityGroupRules');
  }

  /** An instance joined or left the group: re-read its members for rules that name it. */
  async refreshSecurityGroupMembers(_securityGroupId: string): Promise<void> {
    throw new NotImplementedError(this.constructor.name, 'refreshSecurityGroupMembers');
  }

  /** The instance's groups, or their rules, changed: rebuild its filters. */
  async refreshInstanceSecurityRules(_instance: Instance): Promise<void> {
    throw new NotImplementedError(this.constructor.name, 'refreshInstanceSecurityRules');
  }

  /** The provider-wide rules changed: re-read them from the data store. */
  async refreshProviderFwRules(): Promise<void> {
    throw new NotImplementedError(this.constructor.name, 'refreshProviderFwRules');
  }

  /** Defer applying rules until filterDeferApplyOff. */
  filterDeferApplyOn(): void {}

  /** Stop deferring and apply everything pending now. */
  async filterDeferApplyOff(): Promise<void> {}

  // Beyond the seed: what the service needs to report on and repair a host.
  // Drivers without a kernel of their own keep these neutral defaults.

  /** Releases what the driver keeps running (a helper process); the kernel keeps its rules. */
  async close(): Promise<void> {}

  /** Per-instance filter state. */
  status(): InstanceStatus[] {
    return [];
  }

  /** Rules the driver wants in the kernel, by table. */
  ruleCounts(): Record<string, number> {
    return {};
  }

  /**
   * Re-read the kernel and rewrite whatever differs from the driver's model
   * (drift repair). Returns how many objects (chains, hooks, VIFs) it repaired.
   */
  async resync(): Promise<number> {
    return 0;
  }

  /** The full ruleset the driver wants, by table, as the kernel tools' input text. */
  renderRuleset(): Record<string, string> {
    return {};
  }
}
