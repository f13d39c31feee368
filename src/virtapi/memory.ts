/**
 * An in-memory VirtAPI for tests and for embedders that keep their own state.
 * Writes store copies, so a caller's later changes to its objects do not
 * leak in; reads hand out stored network info read-only (drivers never
 * modify what they are given).
 */
import type { Instance, NetworkInfo, ProviderRule, SecurityGroup, SecurityGroupRule } from '../model/types.js';
import type { InstanceRecord, VirtAPI } from './virtapi.js';

interface StoredInstance extends InstanceRecord {
  groupIds: string[];
}

export class InMemoryVirtAPI implements VirtAPI {
  readonly #groups = new Map<string, SecurityGroup>();
  readonly #rules = new Map<string, SecurityGroupRule[]>();
  readonly #instances = new Map<string, StoredInstance>();
  /** group -> ids of the instances in it, so a group's members cost its size, not the whole store's */
  readonly #members = new Map<string, Set<string>>();
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

  putInstance(instance: Instance, networkInfo: NetworkInfo, groupIds: string[]): this {
    const before = this.#instances.get(instance.id);
    this.#instances.set(instance.id, {
      instance: structuredClone(instance),
      networkInfo: structuredClone(networkInfo),
      groupIds: [...groupIds],
    });
    this.#regroup(instance.id, before?.groupIds ?? [], groupIds);
    return this;
  }

  setInstanceGroups(instanceId: string, groupIds: string[]): this {
    const stored = this.#instances.get(instanceId);
    if (!stored) throw new Error(`unknown instance ${instanceId}`);
    this.#regroup(instanceId, stored.groupIds, groupIds);
    stored.groupIds = [...groupIds];
    return this;
  }

  removeInstance(instanceId: string): this {
    const stored = this.#instances.get(instanceId);
    if (stored) this.#regroup(instanceId, stored.groupIds, []);
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

  async getProviderRules(): Promise<ProviderRule[]> {
    return structuredClone(this.#providerRules);
  }

  #regroup(instanceId: string, before: readonly string[], after: readonly string[]): void {
    for (const groupId of before) {
      if (after.includes(groupId)) continue;
      const ids = this.#members.get(groupId);
      ids?.delete(instanceId);
      if (ids?.size === 0) this.#members.delete(groupId);
    }
    for (const groupId of after) {
      let ids = this.#members.get(groupId);
      if (!ids) this.#members.set(groupId, (ids = new Set()));
      ids.add(instanceId);
    }
  }

  #withId(rule: SecurityGroupRule): SecurityGroupRule {
    return { ...rule, id: rule.id ?? `r${this.#nextId++}` };
  }
}
