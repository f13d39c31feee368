/**
 * NftablesFirewallDriver: the same security-group semantics as the iptables
 * driver, in nftables tables of virtfw's own (`inet <prefix>` for filtering,
 * `bridge <prefix>` for L2 anti-spoofing), written in ONE transaction per
 * apply: IPv4, IPv6, remote groups' member sets, dispatch maps and the bridge
 * table change together or not at all. See render/nftables.ts for the layout.
 *
 * It never flushes the whole ruleset and never touches another table, so it
 * lives beside iptables-nft, Docker, libvirt or firewalld tables; note that
 * in nftables every base chain on a hook gets its say: our accept does not
 * override another table's drop (see the README).
 */
import { BridgeFilter } from '../kernel/bridge-filter.js';
import { NftManager, type NftApplyStats } from '../kernel/nft-manager.js';
import type { NormalizedVif } from '../model/types.js';
import { FirewallError, ValidationError } from '../errors.js';
import { VIF_MARK_MAX, bridgeVifOf, markText, renderBridgeTableDelete } from '../render/bridge.js';
import { baseInputsOf } from '../render/iptables-rules.js';
import {
  NFT,
  NFT_MAP_TYPES,
  nftDispatchElements,
  nftGroupHasRules,
  nftNames,
  nftProfileChain,
  renderNftBaseChains,
  renderNftGroupChain,
  renderNftInstanceRules,
} from '../render/nftables.js';
import type { VirtAPI } from '../virtapi/virtapi.js';
import { findConflicts, readRulesets } from './conflicts.js';
import { ModelFirewallDriver } from './model-driver.js';
import type { DriverOptions } from './options.js';

const DIRECTIONS = ['ingress', 'egress'] as const;

/** The chains an instance's packets are dispatched to (shared with instances whose rules are the same). */
export interface InstanceChains {
  ingress: string;
  egress: string;
}

export class NftablesFirewallDriver extends ModelFirewallDriver {
  readonly nft: NftManager;
  readonly bridge: BridgeFilter;
  lastApplyStats: NftApplyStats | null = null;
  /** instance -> the dispatch elements last rendered for it (map -> key -> verdict) */
  readonly #dispatch = new Map<string, Map<string, Map<string, string>>>();
  /** the start-up look for other firewalls: started once the first apply has returned */
  #firstCheck: Promise<void> | undefined;
  /** instance -> its ingress and egress chains */
  readonly #chainsOf = new Map<string, InstanceChains>();
  /** ingress or egress chain -> how many instances use it (it exists while any does) */
  readonly #users = new Map<string, number>();
  /** ingress chain -> the mark number of frames bridged to its instances' VIFs (see render/bridge.ts) */
  readonly #marks = new Map<string, number>();
  /** The values of #marks, to find a free one in constant time. */
  readonly #usedMarks = new Set<number>();
  #nextMark = 1;
  /** instances with an anti-spoofing chain of their own (routed taps) */
  readonly #spoofing = new Set<string>();
  /** instance -> the bridged devices it gave its mark */
  readonly #markedDevices = new Map<string, readonly string[]>();
  /** what the start-up check found (empty when nothing conflicts) */
  conflicts: string[] = [];

  constructor(virtapi: VirtAPI, options: DriverOptions = {}) {
    super(virtapi, options);
    this.nft = new NftManager({ table: this.names.prefix, runner: this.runner, logger: this.log, maps: NFT_MAP_TYPES });
    this.bridge = new BridgeFilter({ names: this.names, runner: this.runner, logger: this.log });
  }

  override async close(): Promise<void> {
    this.nft.close();
  }

  override ruleCounts(): { inet: number; inetElements: number; bridge: number; bridgeElements: number } {
    const bridged = this.options.bridgeFilter && this.bridge.vifCount > 0;
    return {
      inet: this.nft.ruleCount(),
      inetElements: this.nft.elementCount(),
      bridge: bridged ? this.bridge.ruleCount() : 0,
      bridgeElements: bridged ? this.bridge.elementCount() : 0,
    };
  }

  /** The nft script a first apply writes: the inet table, then the bridge table. */
  override renderRuleset(): { nft: string } {
    this.flush();
    return { nft: this.nft.renderFull() + this.bridge.renderFull() };
  }

  override invalidate(): void {
    this.nft.invalidate();
    this.bridge.invalidate();
  }

  override async resync(): Promise<number> {
    if (this.deferred) return 0;
    await this.#checkConflicts();
    const drift = (await this.nft.countDrift()) + (this.options.bridgeFilter ? await this.bridge.countDrift() : 0);
    this.invalidate();
    await this.apply(this.model.instances.keys());
    return drift;
  }

  /** The chains the instance's packets are dispatched to, as last rendered (shared by instances with the same rules). */
  instanceChains(id: string): InstanceChains | undefined {
    return this.#chainsOf.get(id);
  }

  /** Removes both tables of ours in one transaction, and forgets all instances. */
  override async teardown(): Promise<void> {
    this.model.clear();
    this.#dispatch.clear();
    this.#chainsOf.clear();
    this.#users.clear();
    this.#marks.clear();
    this.#usedMarks.clear();
    this.#markedDevices.clear();
    this.#spoofing.clear();
    await this.nft.teardown(renderBridgeTableDelete(this.names));
    this.bridge.invalidate();
  }

  // ------------------------------------------------------- backend hooks

  /**
   * nftables cannot see, in the IP hooks, the bridge port a bridged packet
   * came in or goes out by (there is no physdev match): the bridge table
   * tells it (anti-spoofing ties sources to ports, marks name the output
   * port). Without the bridge filter, only routed taps can be filtered.
   */
  protected override checkVifs(vifs: readonly NormalizedVif[]): void {
    if (this.options.bridgeFilter) return;
    const i = vifs.findIndex((v) => !v.routed);
    if (i !== -1) {
      throw new ValidationError(
        `networkInfo[${i}].type`,
        'a bridged VIF needs the bridge filter with the nftables driver (bridgeFilter: false works only for routed taps, type "tap"); use the iptables driver to filter bridged VIFs without it',
      );
    }
  }

  protected override basicChanged(removed: readonly NormalizedVif[], added: readonly NormalizedVif[]): void {
    const kept = new Set(added.map((v) => v.devname));
    for (const vif of removed) if (!kept.has(vif.devname)) this.bridge.removeVif(vif.devname);
    for (const vif of added) this.bridge.setVif(bridgeVifOf(vif));
    // Marks come from the instances on these devices (see #markDevices, in flush).
    for (const { devname } of [...removed, ...added]) {
      const id = this.model.deviceOwner(devname);
      const view = id === undefined ? undefined : this.model.instances.get(id);
      if (id !== undefined && view?.instance.vifs.some((v) => v.devname === devname)) this.model.dirtyInstances.add(id);
    }
  }

  /** A mark number (1-65535) for an ingress chain, unique on this host while the chain exists. */
  #newMark(): number {
    const used = this.#usedMarks;
    if (used.size >= VIF_MARK_MAX) throw new FirewallError('VIRTFW_ERR_CAPACITY', `more than ${VIF_MARK_MAX} distinct ingress rule sets on one host`);
    while (used.has(this.#nextMark)) this.#nextMark = (this.#nextMark % VIF_MARK_MAX) + 1;
    const mark = this.#nextMark;
    this.#nextMark = (this.#nextMark % VIF_MARK_MAX) + 1;
    used.add(mark);
    return mark;
  }

  /** One more instance uses the chain: the first one creates it (and, for ingress, its mark and mark dispatch). */
  #take(name: string, rules: readonly string[], ingress: boolean): void {
    const users = this.#users.get(name) ?? 0;
    // A full mark space refuses before anything is recorded.
    const mark = users === 0 && ingress ? this.#newMark() : undefined;
    this.#users.set(name, users + 1);
    if (users > 0) return;
    this.nft.setChain(name, rules);
    if (mark === undefined) return;
    this.#marks.set(name, mark);
    this.nft.setMapElement(NFT.maps.toMark, markText(mark), `jump ${name}`);
  }

  /** One instance fewer uses the chain: the last one removes it (with its mark). */
  #release(name: string): void {
    const users = (this.#users.get(name) ?? 1) - 1;
    if (users > 0) {
      this.#users.set(name, users);
      return;
    }
    this.#users.delete(name);
    this.nft.removeChain(name);
    const mark = this.#marks.get(name);
    if (mark === undefined) return;
    this.#marks.delete(name);
    this.#usedMarks.delete(mark);
    this.nft.removeMapElement(NFT.maps.toMark, markText(mark));
  }

  protected override inSync(id: string): boolean {
    const chains = this.#chainsOf.get(id);
    if (!chains || !this.nft.isInSync(chains.ingress) || !this.nft.isInSync(chains.egress)) return false;
    return (this.model.basic.get(id) ?? []).every((vif) => this.bridge.isInSync(vif.devname));
  }

  protected override flush(): void {
    const model = this.model;
    const groupRules = (g: string) => model.groups.get(g);
    for (const groupId of model.dirtyMemberSets) {
      const addresses = model.members.get(groupId);
      for (const v of this.versions) {
        const name = nftNames.memberSet(groupId, v);
        if (addresses) this.nft.setSet(name, v === 4 ? 'ipv4_addr' : 'ipv6_addr', addresses[v]);
        else this.nft.removeSet(name);
      }
    }
    model.dirtyMemberSets.clear();
    for (const groupId of model.dirtyGroups) {
      const rules = model.groups.get(groupId);
      for (const direction of DIRECTIONS) {
        const chain = nftNames.group(groupId, direction);
        const own = rules?.filter((r) => this.versions.includes(r.version)) ?? [];
        if (rules && nftGroupHasRules(own, direction)) this.nft.setChain(chain, renderNftGroupChain(own, direction));
        else this.nft.removeChain(chain);
      }
    }
    model.dirtyGroups.clear();
    for (const id of model.dirtyInstances) {
      const view = model.instances.get(id);
      const rules = view && renderNftInstanceRules(view, groupRules, this.render);
      // Only instances with routed taps have an anti-spoofing chain (named by a hash of the id: computed only for them).
      if (rules?.spoof) {
        this.nft.setChain(nftNames.instanceSpoof(id), rules.spoof);
        this.#spoofing.add(id);
      } else if (this.#spoofing.delete(id)) {
        this.nft.removeChain(nftNames.instanceSpoof(id));
      }
      const before = this.#chainsOf.get(id);
      let now: InstanceChains | undefined;
      if (view && rules) {
        now = { ingress: nftProfileChain('ingress', rules.ingress), egress: nftProfileChain('egress', rules.egress) };
        // Taken before the old ones are released: a chain the instance keeps is not removed meanwhile.
        this.#take(now.ingress, rules.ingress, true);
        this.#take(now.egress, rules.egress, false);
        this.#chainsOf.set(id, now);
      } else {
        this.#chainsOf.delete(id);
      }
      if (before) {
        this.#release(before.ingress);
        this.#release(before.egress);
      }
      this.#setDispatch(id, view && now ? nftDispatchElements(view, now.ingress, now.egress) : new Map());
      this.#markDevices(id, view?.instance.vifs.filter((v) => !v.routed).map((v) => v.devname) ?? [], now && this.#marks.get(now.ingress));
    }
    model.dirtyInstances.clear();
    if (model.dirtyBase) {
      const inputs = baseInputsOf(model.instances.values(), model.providerRules ?? []);
      for (const [name, chain] of renderNftBaseChains(inputs, this.render, this.versions)) this.nft.setChain(name, chain.rules, chain.base);
      model.dirtyBase = false;
    }
  }

  /** Frames bridged to the instance's devices get the mark of its ingress chain; devices it no longer has lose theirs. */
  #markDevices(id: string, devices: readonly string[], mark: number | undefined): void {
    for (const devname of this.#markedDevices.get(id) ?? []) if (!devices.includes(devname)) this.bridge.setMark(devname, undefined);
    for (const devname of devices) this.bridge.setMark(devname, mark);
    if (devices.length) this.#markedDevices.set(id, devices);
    else this.#markedDevices.delete(id);
  }

  /** Replaces an instance's dispatch map elements with `next`. */
  #setDispatch(id: string, next: Map<string, Map<string, string>>): void {
    const before = this.#dispatch.get(id);
    for (const [map, elements] of before ?? []) {
      for (const key of elements.keys()) if (!next.get(map)?.has(key)) this.nft.removeMapElement(map, key);
    }
    for (const [map, elements] of next) {
      if (!this.versions.includes(6) && (map === NFT.maps.from6 || map === NFT.maps.to6)) continue;
      for (const [key, verdict] of elements) this.nft.setMapElement(map, key, verdict);
    }
    if (next.size) this.#dispatch.set(id, next);
    else this.#dispatch.delete(id);
  }

  protected override async write(): Promise<void> {
    // The bridge sysctls are independent of the rendering: their tool runs while it does.
    const ready = this.ensureBridgeNetfilter();
    ready.catch(() => undefined); // awaited below
    try {
      this.flush();
      await ready;
      const bridge = this.bridge;
      const withBridge = this.options.bridgeFilter
        ? () => {
            const plan = bridge.plan(true);
            return { script: plan.script, committed: plan.committed, failed: () => bridge.failed() };
          }
        : undefined;
      this.lastApplyStats = await this.nft.apply(withBridge);
    } finally {
      this.#startUpCheck();
    }
  }

  /**
   * The start-up look for other firewalls, once the first apply (done or
   * failed) has returned: what it finds is reported, and changes nothing we
   * write, so the first apply does not wait for its three tools.
   */
  #startUpCheck(): void {
    if (this.#firstCheck) return;
    this.#firstCheck = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.#checkConflicts())
      .catch((err: unknown) => this.log.warn({ err }, 'could not look for other firewalls'));
  }

  /** Resolves once the start-up look for other firewalls has run (at once if no apply has started it). */
  async conflictsChecked(): Promise<void> {
    await this.#firstCheck;
  }

  /**
   * Looks for other firewalls on our devices (after the first apply, and at
   * every resync, so devices added later are covered too); logs each new
   * finding once.
   */
  async #checkConflicts(): Promise<void> {
    const found = findConflicts(await readRulesets(this.runner), this.names, this.model.devices());
    for (const conflict of found) {
      if (!this.conflicts.includes(conflict)) this.log.warn({ conflict }, 'another firewall filters the same devices');
    }
    this.conflicts = found;
  }
}
