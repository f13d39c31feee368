/**
 * An in-memory VirtAPI for tests and for embedders that keep their own state.
 * Writes store copies, so a caller's later changes to its objects do not
 * leak in; reads hand out stored network info read-only (drivers never
 * modify what they are given). Each group's member addresses are kept as
 * instances are written (GroupAddressIndex), so reading them costs nothing
 * more for a big group than for a small one.
 */
import type { Instance, NetworkInfo, ProviderRule, SecurityGroup, SecurityGroupRule } from '../model/types.js';
import { memberAddresses } from '../model/validate.js';
import { GroupAddressIndex } from './address-index.js';
import type { InstanceRecord, MemberAddressList, VirtAPI } from './virtapi.js';

interface StoredInstance extends InstanceRecord {
  groupIds: string[];
  /** its addresses as a member of its groups (none when deleted) */
  addresses: MemberAddressList;
}

const NO_ADDRESSES: MemberAddressList = { 4: [], 6: [] };

export class InMemoryVirtAPI implements VirtAPI {
  readonly #groups = new Map<string, SecurityGroup>();
  readonly #rules = new Map<string, SecurityGroupRule[]>();
  readonly #instances = new Map<string, StoredInstance>();
  /** group -> ids of the instances in it, so a group's members cost its size, not the whole store's */
  readonly #members = new Map<string, Set<string>>();
  readonly #addresses = new GroupAddressIndex();
  #providerRules: ProviderRule[] = [];
  #nextId = 1;

  /** Creates or replaces a group; `rules`, when given, replace its rules. */
  putGroup(group: SecurityGroup, rules?: SecurityGroupRule[]): this {
    this.#groups.set(group.id, { ...group });
    if (rules !== undefined || !this.#rules.has(group.id)) {
      this.#rules.set(group.id, (rules ?? []).map((r) => this.#withId({ ...r, securityGroupId: group.id })));
    }
    return this;
  }

  deleteGroup(groupId: string): this {
    this.#groups.delete(groupId);
    this.#rules.delete(groupId);
    return this;
  }

  /** Adds a rule to a group and returns it with its id. */
  addRule(groupId: string, rule: SecurityGroupRule): SecurityGroupRule {
    const stored = this.#withId({ ...rule, securityGroupId: groupId });
    const list = this.#rules.get(groupId) ?? [];
    list.push(stored);
    this.#rules.set(groupId, list);
    return structuredClone(stored);
  }

  removeRule(ruleId: string): boolean {
    for (const list of this.#rules.values()) {
      const i = list.findIndex((r) => r.id === ruleId);
      if (i !== -1) {
        list.splice(i, 1);
        return true;
      }
    }
    return false;
  }

  /**
   * Creates or replaces an instance. Its id, deleted flag and addresses are
   * checked first (a ValidationError naming the field; nothing is stored).
   */
  putInstance(instance: Instance, networkInfo: NetworkInfo, groupIds: string[]): this {
    const addresses = memberAddresses({ instance, networkInfo }, '') ?? NO_ADDRESSES;
    const before = this.#instances.get(instance.id);
    const stored: StoredInstance = {
      instance: structuredClone(instance),
      networkInfo: structuredClone(networkInfo),
      groupIds: [...groupIds],
      addresses,
    };
    this.#instances.set(instance.id, stored);
    if (before) this.#regroup(before, before.groupIds, []);
    this.#regroup(stored, [], groupIds);
    return this;
  }

  setInstanceGroups(instanceId: string, groupIds: string[]): this {
    const stored = this.#instances.get(instanceId);
    if (!stored) throw new Error(`unknown instance ${instanceId}`);
    this.#regroup(stored, stored.groupIds, groupIds);
    stored.groupIds = [...groupIds];
    return this;
  }

  removeInstance(instanceId: string): this {
    const stored = this.#instances.get(instanceId);
    if (stored) this.#regroup(stored, stored.groupIds, []);
    this.#instances.delete(instanceId);
    return this;
  }

  addProviderRule(rule: ProviderRule): ProviderRule {
    const stored = { ...rule, id: rule.id ?? `p${this.#nextId++}` };
    this.#providerRules.push(stored);
    return { ...stored };
  }

  removeProviderRule(ruleId: string): boolean {
    const before = this.#providerRules.length;
    this.#providerRules = this.#providerRules.filter((r) => r.id !== ruleId);
    return this.#providerRules.length !== before;
  }

  async getInstanceSecurityGroups(instanceId: string): Promise<SecurityGroup[]> {
    const stored = this.#instances.get(instanceId);
    if (!stored) return [];
    return stored.groupIds.flatMap((id) => {
      const group = this.#groups.get(id);
      return group ? [{ ...group }] : [];
    });
  }

  async getSecurityGroupRules(groupId: string): Promise<SecurityGroupRule[]> {
    return structuredClone(this.#rules.get(groupId) ?? []);
  }

  async getSecurityGroupMembers(groupId: string): Promise<InstanceRecord[]> {
    const members: InstanceRecord[] = [];
    for (const id of this.#members.get(groupId) ?? []) {
      const stored = this.#instances.get(id);
      // Stored records are never mutated in place (putInstance replaces
      // them), so sharing them read-only is safe and spares a deep copy.
      if (stored) members.push({ instance: { ...stored.instance }, networkInfo: stored.networkInfo });
    }
    return members;
  }

  async getSecurityGroupMemberAddresses(groupId: string): Promise<MemberAddressList> {
    return this.#addresses.answer(groupId);
  }

  async getProviderRules(): Promise<ProviderRule[]> {
    return structuredClone(this.#providerRules);
  }

  /** Moves the instance (with its addresses) from the groups `before` to the groups `after`. */
  #regroup(stored: StoredInstance, before: readonly string[], after: readonly string[]): void {
    const id = stored.instance.id;
    for (const groupId of new Set(before)) {
      if (after.includes(groupId)) continue;
      const ids = this.#members.get(groupId);
      ids?.delete(id);
      if (ids?.size === 0) this.#members.delete(groupId);
      this.#addresses.remove(groupId, stored.addresses);
    }
    for (const groupId of new Set(after)) {
      if (before.includes(groupId)) continue;
      let ids = this.#members.get(groupId);
      if (!ids) this.#members.set(groupId, (ids = new Set()));
      ids.add(id);
      this.#addresses.add(groupId, stored.addresses);
    }
  }

  #withId(rule: SecurityGroupRule): SecurityGroupRule {
    return { ...rule, id: rule.id ?? `r${this.#nextId++}` };
  }
}
