/**
 * The member addresses of each group, kept up to date as instances come, go
 * and change, so a store answers `getSecurityGroupMemberAddresses` without
 * walking every member: each family's list stays sorted (binary insertion),
 * each address once however many members hold it (a count per address), and
 * the answer is one frozen object per group, made again only after the
 * group's addresses changed.
 */
import type { IpVersion } from '../model/types.js';
import { vouchForMemberAddresses } from '../model/validate.js';
import type { MemberAddressList } from './virtapi.js';

interface GroupAddresses {
  counts: Map<string, number>;
  sorted: { 4: string[]; 6: string[] };
  answer: MemberAddressList | null;
}

const EMPTY: MemberAddressList = vouchForMemberAddresses(Object.freeze({ 4: Object.freeze([]), 6: Object.freeze([]) }));
const VERSIONS: readonly IpVersion[] = [4, 6];

/** Where `value` is, or would go, in the sorted `list`. */
function position(list: readonly string[], value: string): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((list[mid] as string) < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export class GroupAddressIndex {
  readonly #groups = new Map<string, GroupAddresses>();

  /** A member with these addresses (checked and canonical, as `memberAddresses` gives them) joined the group. */
  add(groupId: string, addresses: MemberAddressList): void {
    let group = this.#groups.get(groupId);
    if (!group) this.#groups.set(groupId, (group = { counts: new Map(), sorted: { 4: [], 6: [] }, answer: null }));
    for (const v of VERSIONS) {
      for (const address of addresses[v]) {
        const count = group.counts.get(address) ?? 0;
        group.counts.set(address, count + 1);
        if (count > 0) continue;
        const list = group.sorted[v];
        list.splice(position(list, address), 0, address);
        group.answer = null;
      }
    }
  }

  /** A member with these addresses left the group (or is about to come back with others). */
  remove(groupId: string, addresses: MemberAddressList): void {
    const group = this.#groups.get(groupId);
    if (!group) return;
    for (const v of VERSIONS) {
      for (const address of addresses[v]) {
        const count = group.counts.get(address);
        if (count === undefined) continue;
        if (count > 1) {
          group.counts.set(address, count - 1);
          continue;
        }
        group.counts.delete(address);
        const list = group.sorted[v];
        const at = position(list, address);
        if (list[at] === address) list.splice(at, 1);
        group.answer = null;
      }
    }
    if (group.counts.size === 0) this.#groups.delete(groupId);
  }

  /** The group's addresses, sorted, each once: the same frozen object until they change. */
  answer(groupId: string): MemberAddressList {
    const group = this.#groups.get(groupId);
    if (!group) return EMPTY;
    if (!group.answer) {
      const answer = Object.freeze({ 4: Object.freeze(group.sorted[4].slice()), 6: Object.freeze(group.sorted[6].slice()) });
      group.answer = vouchForMemberAddresses(answer);
    }
    return group.answer;
  }
}
