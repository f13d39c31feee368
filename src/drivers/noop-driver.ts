/**
 * NoopFirewallDriver: accepts every call and changes nothing, for hosts where
 * something else enforces security groups (as Nova's did with Neutron). Its
 * instanceFilterExists is true, so a caller waiting for filters never waits.
 */
import type { Instance, NetworkInfo } from '../model/types.js';
import { FirewallDriver } from './firewall-driver.js';

export class NoopFirewallDriver extends FirewallDriver {
  constructor(..._args: unknown[]) {
    super();
  }

  override async setupBasicFiltering(_instance: Instance, _networkInfo: NetworkInfo): Promise<void> {}
  override async prepareInstanceFilter(_instance: Instance, _networkInfo: NetworkInfo): Promise<void> {}
  override async applyInstanceFilter(_instance: Instance, _networkInfo: NetworkInfo): Promise<void> {}
  override async unfilterInstance(_instance: Instance, _networkInfo: NetworkInfo): Promise<void> {}
  override async instanceFilterExists(_instance: Instance, _networkInfo: NetworkInfo): Promise<boolean> {
    return true;
  }
  override async refreshSecurityGroupRules(_securityGroupId: string): Promise<void> {}
  override async refreshSecurityGroupMembers(_securityGroupId: string): Promise<void> {}
  override async refreshInstanceSecurityRules(_instance: Instance): Promise<void> {}
  override async refreshProviderFwRules(): Promise<void> {}
}
