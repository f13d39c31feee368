/**
 * VirtAPI: how a firewall driver reads the data store. A compute manager (or
 * virtfw's own store) implements it; the driver calls it outside its apply
 * lock and never writes through it.
 */
import type { Instance, NetworkInfo, ProviderRule, SecurityGroup, SecurityGroupRule } from '../model/types.js';

/** An instance with the network info it was last given (Nova's network model). */
export interface InstanceRecord {
  instance: Instance;
  networkInfo: NetworkInfo;
}

export interface VirtAPI {
  /** The security groups the instance belongs to. An unknown instance has none. */
  getInstanceSecurityGroups(instanceId: string): Promise<SecurityGroup[]>;
  /** Every rule of a group, in the store's order. An unknown group has none. */
  getSecurityGroupRules(groupId: string): Promise<SecurityGroupRule[]>;
  /** Every instance in the group, on any host, with its network info. */
  getSecurityGroupMembers(groupId: string): Promise<InstanceRecord[]>;
  /** The provider-wide drop rules. */
  getProviderRules(): Promise<ProviderRule[]>;
}
