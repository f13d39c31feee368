/**
 * HostModel: what a kernel driver knows of its host, with the indices that
 * keep every change O(size of the change): which instance owns a device,
 * which instances use a group, which groups' rules name a group, and what
 * must be rendered again (the dirty sets).
 *
 * It holds state only; drivers read the data store, feed the model, render
 * what it marks dirty and apply. Nothing here does I/O.
 */
import { ValidationError } from '../errors.js';
import type { IpVersion, NormalizedProviderRule, NormalizedRule, NormalizedVif } from '../model/types.js';
import { groupHasRules, VERSIONS, type InstanceView, type MemberAddresses } from '../render/iptables-rules.js';

const DIRECTIONS = ['ingress', 'egress'] as const;

/** Which (direction, family) chains of a group have rules: instances jump only to those. */
export function jumpSignature(rules: readonly NormalizedRule[]): string {
  return VERSIONS.flatMap((v) => DIRECTIONS.map((d) => (groupHasRules(rules, d, v) ? '1' : '0'))).join('');
}

function sameRules(a: readonly NormalizedRule[], b: readonly NormalizedRule[]): boolean {
  return a === b || (a.length === b.length && JSON.stringify(a) === JSON.stringify(b));
}

function sameList(x: readonly string[], y: readonly string[]): boolean {
  if (x === y) return true;
  if (x.length !== y.length) return false;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

function sameMembers(a: MemberAddresses, b: MemberAddresses): boolean {
  return sameList(a[4], b[4]) && sameList(a[6], b[6]);
}

export class HostModel {
  /** prepared instances: their chains exist */
  readonly instances = new Map<string, InstanceView>();
  /** instances with L2 basic filtering, and their bridged VIFs */
  readonly basic = new Map<string, NormalizedVif[]>();
  /** rules of every group a prepared instance is in */
  readonly groups = new Map<string, NormalizedRule[]>();
  /** member addresses of every group those rules name */
  readonly members = new Map<string, MemberAddresses>();
  providerRules: NormalizedProviderRule[] | null = null;

  readonly dirtyInstances = new Set<string>();
  readonly dirtyGroups = new Set<string>();
  /** groups whose member sets (ipset mode) must be written */
  readonly dirtyMemberSets = new Set<string>();
  dirtyBase = true;

  /** device -> the instance that owns it (prepared or basic-filtered) */
  readonly #deviceOwner = new Map<string, string>();
  /** group -> prepared instances in it */
  readonly #users = new Map<string, Set<string>>();
  /** group -> groups whose rules name it as remote */
  readonly #namedBy = new Map<string, Set<string>>();

  /** Two instances cannot own one device. */
  checkDevices(instanceId: string, vifs: readonly NormalizedVif[]): void {
    vifs.forEach((vif, i) => {
      const owner = this.#deviceOwner.get(vif.devname);
      if (owner !== undefined && owner !== instanceId) {
        throw new ValidationError(`networkInfo[${i}].devname`, `${vif.devname} is already used by instance ${owner}`);
      }
    });
  }

  /** Every device an instance holds (through its filter or its anti-spoofing). */
  devices(): string[] {
    return [...this.#deviceOwner.keys()];
  }

  /** The instance that holds the device (through its filter or its anti-spoofing), if any. */
  deviceOwner(devname: string): string | undefined {
    return this.#deviceOwner.get(devname);
  }

  usersOf(groupId: string): ReadonlySet<string> {
    return this.#users.get(groupId) ?? new Set();
  }

  /** Groups whose rules name `groupId` as their remote group. */
  groupsNaming(groupId: string): ReadonlySet<string> {
    return this.#namedBy.get(groupId) ?? new Set();
  }

  /** Instances in a group whose rules name one of `groupIds` (whose rules follow those groups' members). */
  usersNaming(groupIds: Iterable<string>): Set<string> {
    const out = new Set<string>();
    for (const groupId of groupIds) for (const g of this.groupsNaming(groupId)) for (const id of this.usersOf(g)) out.add(id);
    return out;
  }

  /** Is the group used by a prepared instance? */
  hasGroup(groupId: string): boolean {
    return this.groups.has(groupId);
  }

  /** Is the group named by a rule of a group in use (so its members matter)? */
  hasMembers(groupId: string): boolean {
    return this.members.has(groupId);
  }

  // ------------------------------------------------------------ instances

  setInstance(view: InstanceView): void {
    const id = view.instance.id;
    const before = this.instances.get(id);
    this.#releaseDevices(id);
    this.instances.set(id, view);
    this.#claimDevices(id);
    this.dirtyInstances.add(id);
    this.dirtyBase = true;
    for (const g of view.groupIds) this.#addUser(g, id);
    for (const g of before?.groupIds ?? []) if (!view.groupIds.includes(g)) this.#removeUser(g, id);
  }

  removeInstance(id: string): InstanceView | undefined {
    const view = this.instances.get(id);
    if (!view) return undefined;
    this.instances.delete(id);
    this.#releaseDevices(id);
    this.#claimDevices(id);
    this.dirtyInstances.add(id);
    this.dirtyBase = true;
    for (const g of view.groupIds) this.#removeUser(g, id);
    return view;
  }

  setBasic(id: string, vifs: NormalizedVif[]): void {
    this.#releaseDevices(id);
    this.basic.set(id, vifs);
    this.#claimDevices(id);
  }

  removeBasic(id: string): NormalizedVif[] | undefined {
    const vifs = this.basic.get(id);
    this.basic.delete(id);
    this.#releaseDevices(id);
    this.#claimDevices(id);
    return vifs;
  }

  #releaseDevices(id: string): void {
    for (const vif of [...(this.instances.get(id)?.instance.vifs ?? []), ...(this.basic.get(id) ?? [])]) {
      if (this.#deviceOwner.get(vif.devname) === id) this.#deviceOwner.delete(vif.devname);
    }
  }

  #claimDevices(id: string): void {
    for (const vif of [...(this.instances.get(id)?.instance.vifs ?? []), ...(this.basic.get(id) ?? [])]) {
      this.#deviceOwner.set(vif.devname, id);
    }
  }

  #addUser(groupId: string, id: string): void {
    let users = this.#users.get(groupId);
    if (!users) this.#users.set(groupId, (users = new Set()));
    users.add(id);
  }

  /** The last user of a group leaving drops the group, and members nothing names any more. */
  #removeUser(groupId: string, id: string): void {
    const users = this.#users.get(groupId);
    users?.delete(id);
    if (users && users.size > 0) return;
    this.#users.delete(groupId);
    const rules = this.groups.get(groupId);
    if (!rules) return;
    this.groups.delete(groupId);
    this.dirtyGroups.add(groupId);
    this.#unindexRemotes(groupId, rules);
  }

  // --------------------------------------------------------------- groups

  /** Takes a group's freshly read rules (only for a group some prepared instance uses, or is about to). */
  commitRules(groupId: string, rules: NormalizedRule[]): void {
    const before = this.groups.get(groupId);
    if (before && sameRules(before, rules)) return;
    this.groups.set(groupId, rules);
    // Name the new remotes before forgetting the old, so a group named both
    // before and after keeps its members.
    this.#indexRemotes(groupId, rules);
    if (before) {
      const still = new Set(this.remotesOf(rules));
      this.#unindexRemotes(groupId, before.filter((r) => r.remote.kind !== 'group' || !still.has(r.remote.groupId)));
    }
    this.dirtyGroups.add(groupId);
    // Instances jump only to group chains that have rules; that set may have changed.
    if (!before || jumpSignature(before) !== jumpSignature(rules)) {
      for (const id of this.usersOf(groupId)) this.dirtyInstances.add(id);
    }
  }

  /** Takes a group's freshly read members (only for a group some rule names). */
  commitMembers(groupId: string, members: MemberAddresses): void {
    const before = this.members.get(groupId);
    if (before && sameMembers(before, members)) return;
    this.members.set(groupId, members);
    this.dirtyMemberSets.add(groupId);
    for (const g of this.groupsNaming(groupId)) this.dirtyGroups.add(g);
  }

  #indexRemotes(groupId: string, rules: readonly NormalizedRule[]): void {
    for (const r of rules) {
      if (r.remote.kind !== 'group') continue;
      let namers = this.#namedBy.get(r.remote.groupId);
      if (!namers) this.#namedBy.set(r.remote.groupId, (namers = new Set()));
      namers.add(groupId);
    }
  }

  #unindexRemotes(groupId: string, rules: readonly NormalizedRule[]): void {
    for (const r of rules) {
      if (r.remote.kind !== 'group') continue;
      const remote = r.remote.groupId;
      const namers = this.#namedBy.get(remote);
      namers?.delete(groupId);
      if (namers && namers.size === 0) {
        this.#namedBy.delete(remote);
        if (this.members.delete(remote)) this.dirtyMemberSets.add(remote);
      }
    }
  }

  /** Groups named by the rules of a group, in rule order. */
  remotesOf(rules: readonly NormalizedRule[]): string[] {
    const out = new Set<string>();
    for (const r of rules) if (r.remote.kind === 'group') out.add(r.remote.groupId);
    return [...out];
  }

  /** Every (group, family) member set that rules in use need, for ipset mode. */
  memberSetKeys(): [string, IpVersion][] {
    const out: [string, IpVersion][] = [];
    for (const groupId of this.members.keys()) for (const v of VERSIONS) out.push([groupId, v]);
    return out;
  }

  clear(): void {
    for (const id of [...this.instances.keys()]) this.removeInstance(id);
    for (const id of [...this.basic.keys()]) this.removeBasic(id);
    this.dirtyInstances.clear();
    this.dirtyGroups.clear();
    this.dirtyMemberSets.clear();
  }
}
