/**
 * IptablesFirewallDriver: Nova's security-group semantics enforced with
 * iptables/ip6tables (filtering), ipsets (remote groups' members, in `ipset`
 * mode) and an nftables bridge table (L2 anti-spoofing). See
 * render/iptables-rules.ts for the chain layout, and model-driver.ts for the
 * seed's methods.
 *
 * Apply order, so that no instance is ever unprotected: bridge anti-spoofing
 * and ipset additions first, then iptables (both families at once), then the
 * removals those transactions made safe (bridge elements of removed VIFs,
 * sets no rule matches any more).
 */
import { BridgeFilter } from '../kernel/bridge-filter.js';
import { IpsetManager } from '../kernel/ipset-manager.js';
import { IptablesManager, type ApplyStats } from '../kernel/iptables-manager.js';
import type { NormalizedVif } from '../model/types.js';
import { bridgeVifOf } from '../render/bridge.js';
import {
  baseInputsOf,
  groupHasRules,
  hooks,
  instanceChainNames,
  renderBaseChains,
  renderDispatch,
  renderGroupChain,
  renderInstanceChains,
} from '../render/iptables-rules.js';
import type { VirtAPI } from '../virtapi/virtapi.js';
import { ModelFirewallDriver } from './model-driver.js';
import type { DriverOptions } from './options.js';

const DIRECTIONS = ['ingress', 'egress'] as const;

export class IptablesFirewallDriver extends ModelFirewallDriver {
  readonly manager: IptablesManager;
  readonly bridge: BridgeFilter;
  readonly ipsets: IpsetManager;
  lastApplyStats: ApplyStats | null = null;

  constructor(virtapi: VirtAPI, options: DriverOptions = {}) {
    super(virtapi, options);
    this.manager = new IptablesManager({
      names: this.names,
      runner: this.runner,
      versions: this.versions,
      hooks: hooks(this.names),
      ...(options.commands ? { commands: options.commands } : {}),
      lockWaitSeconds: this.options.lockWaitSeconds,
      logger: this.log,
    });
    this.bridge = new BridgeFilter({ names: this.names, runner: this.runner, logger: this.log });
    this.ipsets = new IpsetManager({ names: this.names, runner: this.runner, logger: this.log });
  }

  /** What virtfw wants in the kernel: rules per family and in the bridge table, set elements. */
  override ruleCounts(): { ipv4: number; ipv6: number; bridge: number; bridgeElements: number; setMembers: number } {
    const bridged = this.options.bridgeFilter && this.bridge.vifCount > 0;
    return {
      ipv4: this.manager.ruleCount(4),
      ipv6: this.versions.includes(6) ? this.manager.ruleCount(6) : 0,
      bridge: bridged ? this.bridge.ruleCount() : 0,
      bridgeElements: bridged ? this.bridge.elementCount() : 0,
      setMembers: this.ipsets.memberCount(),
    };
  }

  /** Ends the kept `ipset -` process (the kernel keeps every rule and set). */
  override async close(): Promise<void> {
    this.ipsets.close();
  }

  /**
   * The full ruleset this driver wants, as the tools' input: iptables-restore
   * (--noflush) per family, the bridge table's nft script, and ipset restore.
   */
  override renderRuleset(): { ipv4: string; ipv6: string; bridge: string; ipset: string } {
    this.flush();
    return {
      ipv4: this.manager.renderFull(4),
      ipv6: this.versions.includes(6) ? this.manager.renderFull(6) : '',
      bridge: this.bridge.renderFull(),
      ipset: this.ipsets.renderFull(),
    };
  }

  /** Forget what the kernel is believed to hold; the next apply re-reads it and repairs drift. */
  override invalidate(): void {
    this.manager.invalidate();
    this.bridge.invalidate();
    this.ipsets.invalidate();
  }

  /**
   * Re-read the kernel and rewrite whatever differs from the model: chains
   * flushed, edited or deleted by hand, missing hook rules, VIFs' bridge
   * elements. Returns how many it repaired (0 when the kernel was as written).
   */
  override async resync(): Promise<number> {
    if (this.deferred) return 0;
    const bridgeDrift = this.options.bridgeFilter ? await this.bridge.countDrift() : 0;
    this.invalidate();
    await this.apply(this.model.instances.keys());
    const stats = this.lastApplyStats;
    return bridgeDrift + (stats ? stats.chainsWritten + stats.chainsDeleted + stats.hookFixes : 0);
  }

  /** Remove every chain, hook, set and table virtfw owns from the kernel, and forget all instances. */
  override async teardown(): Promise<void> {
    this.model.clear();
    await this.manager.teardown();
    await this.ipsets.teardown();
    if (this.options.bridgeFilter) await this.bridge.teardown();
  }

  // ------------------------------------------------------- backend hooks

  protected override basicChanged(removed: readonly NormalizedVif[], added: readonly NormalizedVif[]): void {
    for (const vif of removed) this.bridge.removeVif(vif.devname);
    for (const vif of added) this.bridge.setVif(bridgeVifOf(vif));
  }

  protected override inSync(id: string): boolean {
    for (const v of this.versions) {
      if (!this.manager.isInSync(v, this.names.instanceIngress(id)) || !this.manager.isInSync(v, this.names.instanceEgress(id))) {
        return false;
      }
    }
    return (this.model.basic.get(id) ?? []).every((vif) => this.bridge.isInSync(vif.devname));
  }

  protected override flush(): void {
    this.#flushSets();
    this.#flushChains();
  }

  /** Member sets: they must be in the kernel before the chains that match them. */
  #flushSets(): void {
    const model = this.model;
    if (this.options.memberMatch === 'ipset') {
      for (const groupId of model.dirtyMemberSets) {
        const addresses = model.members.get(groupId);
        for (const v of this.versions) {
          const name = this.names.memberSet(groupId, v);
          if (addresses) this.ipsets.setMembers(name, v, addresses[v]);
          else this.ipsets.removeSet(name);
        }
      }
    }
    model.dirtyMemberSets.clear();
  }

  #flushChains(): void {
    const model = this.model;
    const groupRules = (g: string) => model.groups.get(g);
    const members = (g: string) => model.members.get(g);
    for (const groupId of model.dirtyGroups) {
      const rules = model.groups.get(groupId);
      for (const v of this.versions) {
        for (const direction of DIRECTIONS) {
          const chain = this.names.group(groupId, direction);
          if (rules && groupHasRules(rules, direction, v)) {
            this.manager.setChain(v, chain, renderGroupChain(rules, direction, v, members, this.render));
          } else {
            this.manager.removeChain(v, chain);
          }
        }
      }
    }
    model.dirtyGroups.clear();
    for (const id of model.dirtyInstances) {
      const view = model.instances.get(id);
      for (const v of this.versions) {
        const chains = view ? renderInstanceChains(view, v, groupRules, this.render) : new Map<string, string[]>();
        for (const name of instanceChainNames(id, this.names)) {
          const rules = chains.get(name);
          if (rules) this.manager.setChain(v, name, rules);
          else this.manager.removeChain(v, name);
        }
      }
    }
    model.dirtyInstances.clear();
    if (model.dirtyBase) {
      const views = [...model.instances.values()];
      const inputs = baseInputsOf(views, model.providerRules ?? []);
      for (const v of this.versions) {
        const dispatch = renderDispatch(views, v, this.render);
        for (const [name, rules] of renderBaseChains(inputs, v, dispatch, this.render)) this.manager.setChain(v, name, rules);
      }
      model.dirtyBase = false;
    }
  }

  protected override async write(): Promise<void> {
    // Anti-spoofing of new VIFs and sets new rules match against come first;
    // reading the iptables state (when unknown) overlaps them, and so does
    // rendering the chains: the tools run in their own processes meanwhile.
    this.#flushSets();
    this.manager.prefetch();
    const first = Promise.all([
      this.ensureBridgeNetfilter(),
      this.options.bridgeFilter ? this.bridge.applyAdditions() : undefined,
      this.ipsets.applyAdditions(),
    ]);
    // Awaited below, after rendering; until then a failure must not count as unhandled (it would end the process).
    first.catch(() => undefined);
    await new Promise<void>((resolve) => setImmediate(resolve)); // let them start their tools
    this.#flushChains();
    await first;
    this.lastApplyStats = await this.manager.apply();
    // Then what the new rules no longer need.
    await Promise.all([this.options.bridgeFilter ? this.bridge.apply() : undefined, this.ipsets.apply()]);
  }
}
