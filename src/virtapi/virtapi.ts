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

/** A group's member addresses per IP version (any order; repeats are fine). */
export interface MemberAddressList {
  readonly 4: readonly string[];
  readonly 6: readonly string[];
}

export interface VirtAPI {
  /** The security groups the instance belongs to. An unknown instance has none. */
  getInstanceSecurityGroups(instanceId: string): Promise<SecurityGroup[]>;
  /** Every rule of a group, in the store's order. An unknown group has none. */
  getSecurityGroupRules(groupId: string): Promise<SecurityGroupRule[]>;
  /** Every instance in the group, on any host, with its network info. */
  getSecurityGroupMembers(groupId: string): Promise<InstanceRecord[]>;
  /**
   * Optional: the fixed addresses of the group's members (deleted members
   * left out), per family, as Neutron's RPC hands its agents `sg_member_ips`.
   * A driver then reads a membership change without walking every member's
   * network info. An answer that is frozen (with frozen lists) is taken to be
   * unchanged when the same object is given again, so a store that keeps one
   * frozen answer per group until its membership changes makes an unchanged
   * group cost nothing to re-read.
   */
  getSecurityGroupMemberAddresses?(groupId: string): Promise<MemberAddressList>;
  /** The provider-wide drop rules. */
  getProviderRules(): Promise<ProviderRule[]>;
}
