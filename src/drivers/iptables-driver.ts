/**
 * IptablesFirewallDriver: Nova's security-group semantics enforced with
 * iptables/ip6tables (filtering), ipsets (remote groups' members, in `ipset`
 * mode) and an nftables bridge table (L2 anti-spoofing). See
 * render/iptables-rules.ts for the chain layout.
 *
 * The driver reads the data store through the VirtAPI before it changes any
 * state (Nova: "compute rules outside the iptables lock"), feeds the HostModel,
 * renders what the model marks dirty, and lets the managers write only what
 * changed. A refresh skips an instance that was unfiltered while its data
 * was read.
 *
 * Apply order, so that no instance is ever unprotected: bridge anti-spoofing
 * and ipset additions first, then iptables (both families at once), then the
 * removals those transactions made safe (bridge elements of removed VIFs,
 * sets no rule matches any more).
 */
import { FirewallError, NotFilteredError, ValidationError } from '../errors.js';
import { BridgeFilter } from '../kernel/bridge-filter.js';
import { NetnsRunner, ProcessRunner, type CommandRunner } from '../kernel/exec.js';
import { IpsetManager } from '../kernel/ipset-manager.js';
import { IptablesManager, type ApplyStats } from '../kernel/iptables-manager.js';
import { silentLogger, type Logger } from '../logger.js';
import type { Instance, IpVersion, NetworkInfo, NormalizedProviderRule, NormalizedRule } from '../model/types.js';
import { normalizeInstance, normalizeProviderRule, normalizeRule, validateId, validateInstance } from '../model/validate.js';
import { bridgeVifOf } from '../render/bridge.js';
import {
  VERSIONS,
  baseInputsOf,
  groupHasRules,
  hooks,
  instanceAddresses,
  instanceChainNames,
  renderBaseChains,
  renderDispatch,
  renderGroupChain,
  renderInstanceChains,
  type InstanceView,
  type MemberAddresses,
  type RenderOptions,
} from '../render/iptables-rules.js';
import { Names } from '../render/names.js';
import type { VirtAPI } from '../virtapi/virtapi.js';
import { FirewallDriver, type InstanceStatus } from './firewall-driver.js';
import { HostModel } from './host-model.js';
import { resolveDriverOptions, type DriverOptions, type ResolvedDriverOptions } from './options.js';

const DIRECTIONS = ['ingress', 'egress'] as const;

interface Fetched {
  rules: Map<string, NormalizedRule[]>;
  members: Map<string, MemberAddresses>;
}

export class IptablesFirewallDriver extends FirewallDriver {
  readonly options: ResolvedDriverOptions;
  readonly names: Names;
  readonly manager: IptablesManager;
  readonly bridge: BridgeFilter;
  readonly ipsets: IpsetManager;
  protected readonly virtapi: VirtAPI;
  protected readonly runner: CommandRunner;
  protected readonly log: Logger;
  protected readonly render: RenderOptions;
  readonly #versions: readonly IpVersion[];
  readonly #model = new HostModel();

  #deferred = false;
  #bridgeNetfilterReady = false;
  /** rules and members read during one deferred batch, so a batch reads each once */
  #batchCache: Fetched | null = null;

  readonly #appliedAt = new Map<string, Date>();
  readonly #pendingError = new Map<string, string>();
  lastApplyStats: ApplyStats | null = null;

  constructor(virtapi: VirtAPI, options: DriverOptions = {}) {
    super();
    if (!virtapi || typeof virtapi.getSecurityGroupRules !== 'function') {
      throw new ValidationError('virtapi', 'must implement the VirtAPI interface');
    }
    this.virtapi = virtapi;
    this.options = resolveDriverOptions(options);
    this.names = new Names(this.options.prefix);
    this.log = options.logger ?? silentLogger;
    const base = options.runner ?? new ProcessRunner();
    this.runner = this.options.netns ? new NetnsRunner(this.options.netns, base) : base;
    this.#versions = this.options.ipv6 ? VERSIONS : [4];
    this.render = {
      names: this.names,
      allowSameNetTraffic: this.options.allowSameNetTraffic,
      fallbackAction: this.options.fallbackAction,
      memberMatch: this.options.memberMatch,
      bridgeFilter: this.options.bridgeFilter,
    };
    this.manager = new IptablesManager({
      names: this.names,
      runner: this.runner,
      versions: this.#versions,
      hooks: hooks(this.names),
      ...(options.commands ? { commands: options.commands } : {}),
      lockWaitSeconds: this.options.lockWaitSeconds,
      logger: this.log,
    });
    this.bridge = new BridgeFilter({ names: this.names, runner: this.runner, logger: this.log });
    this.ipsets = new IpsetManager({ names: this.names, runner: this.runner, logger: this.log });
  }

  // ------------------------------------------------------------ seed methods

  override async setupBasicFiltering(instance: Instance, networkInfo: NetworkInfo): Promise<void> {
    const inst = normalizeInstance(instance, networkInfo);
    this.#model.checkDevices(inst.id, inst.vifs);
    if (!this.options.bridgeFilter) return;
    const bridged = inst.vifs.filter((v) => !v.routed);
    for (const vif of this.#model.basic.get(inst.id) ?? []) this.bridge.removeVif(vif.devname);
    this.#model.setBasic(inst.id, bridged);
    for (const vif of bridged) this.bridge.setVif(bridgeVifOf(vif));
    await this.#apply([inst.id]);
  }

  override async prepareInstanceFilter(instance: Instance, networkInfo: NetworkInfo): Promise<void> {
    const inst = normalizeInstance(instance, networkInfo);
    this.#model.checkDevices(inst.id, inst.vifs);
    const groupIds = await this.#fetchInstanceGroups(inst.id);
    const fetched = await this.#fetchGroups(groupIds);
    if (this.#model.providerRules === null) this.#model.providerRules = await this.#readProviderRules();
    this.#model.setInstance({ instance: inst, groupIds });
    this.#commit(fetched);
    await this.#apply([inst.id]);
  }

  /** A no-op: everything is in place once prepareInstanceFilter returns. */
  override async applyInstanceFilter(instance: Instance, _networkInfo: NetworkInfo): Promise<void> {
    validateInstance(instance);
  }

  override async unfilterInstance(instance: Instance, _networkInfo: NetworkInfo): Promise<void> {
    const { id } = validateInstance(instance);
    const view = this.#model.removeInstance(id);
    const basic = this.#model.removeBasic(id);
    if (!view && !basic) {
      this.log.info({ instanceId: id }, 'Attempted to unfilter instance which is not filtered');
      return;
    }
    for (const vif of basic ?? []) this.bridge.removeVif(vif.devname);
    await this.#apply([id]);
    this.#appliedAt.delete(id);
    this.#pendingError.delete(id);
    if (view && this.options.conntrackCleanup) await this.#forgetConnections(view);
  }

  override async instanceFilterExists(instance: Instance, _networkInfo: NetworkInfo): Promise<boolean> {
    const { id } = validateInstance(instance);
    return this.#isFiltered(id);
  }

  override async refreshSecurityGroupRules(securityGroupId: string): Promise<void> {
    const groupId = validateId('securityGroupId', securityGroupId);
    if (!this.#model.hasGroup(groupId)) return;
    const fetched = await this.#fetchGroups([groupId], true);
    if (!this.#model.hasGroup(groupId)) return;
    this.#commit(fetched);
    await this.#apply(this.#model.usersOf(groupId));
  }

  override async refreshSecurityGroupMembers(securityGroupId: string): Promise<void> {
    const groupId = validateId('securityGroupId', securityGroupId);
    if (!this.#model.hasMembers(groupId)) return;
    const members = await this.#fetchMembers(groupId, true);
    if (!this.#model.hasMembers(groupId)) return;
    this.#commit({ rules: new Map(), members: new Map([[groupId, members]]) });
    const affected = new Set<string>();
    for (const g of this.#model.groupsNaming(groupId)) for (const id of this.#model.usersOf(g)) affected.add(id);
    await this.#apply(affected);
  }

  override async refreshInstanceSecurityRules(instance: Instance): Promise<void> {
    const { id } = validateInstance(instance);
    if (!this.#model.instances.has(id)) throw new NotFilteredError(id);
    const groupIds = await this.#fetchInstanceGroups(id);
    const fetched = await this.#fetchGroups(groupIds, true);
    const view = this.#model.instances.get(id);
    if (!view) {
      this.log.info({ instanceId: id }, 'instance was unfiltered during refresh, skipping');
      return;
    }
    this.#model.setInstance({ instance: view.instance, groupIds });
    this.#commit(fetched);
    await this.#apply([id]);
  }

  override async refreshProviderFwRules(): Promise<void> {
    this.#model.providerRules = await this.#readProviderRules();
    this.#model.dirtyBase = true;
    await this.#apply(this.#model.instances.keys());
  }

  override filterDeferApplyOn(): void {
    this.#deferred = true;
    this.#batchCache = { rules: new Map(), members: new Map() };
  }

  override async filterDeferApplyOff(): Promise<void> {
    this.#deferred = false;
    this.#batchCache = null;
    await this.#apply(this.#model.dirtyInstances);
  }

  // ------------------------------------------------------------- extensions

  /** Per-instance state, for `virtfw status`. */
  override status(): InstanceStatus[] {
    const ids = new Set([...this.#model.instances.keys(), ...this.#model.basic.keys()]);
    return [...ids].sort().map((instanceId) => ({
      instanceId,
      filtered: this.#isFiltered(instanceId),
      lastApply: this.#appliedAt.get(instanceId)?.toISOString() ?? null,
      lastError: this.#pendingError.get(instanceId) ?? null,
    }));
  }

  /** Ids of the instances this driver filters. */
  filteredInstances(): string[] {
    return [...this.#model.instances.keys()];
  }

  /** What virtfw wants in the kernel: rules per family and in the bridge table, set elements. */
  override ruleCounts(): { ipv4: number; ipv6: number; bridge: number; bridgeElements: number; setMembers: number } {
    const bridged = this.options.bridgeFilter && this.bridge.vifCount > 0;
    return {
      ipv4: this.manager.ruleCount(4),
      ipv6: this.#versions.includes(6) ? this.manager.ruleCount(6) : 0,
      bridge: bridged ? this.bridge.ruleCount() : 0,
      bridgeElements: bridged ? this.bridge.elementCount() : 0,
      setMembers: this.ipsets.memberCount(),
    };
  }

  /**
   * The full ruleset this driver wants, as the tools' input: iptables-restore
   * (--noflush) per family, the bridge table's nft script, and ipset restore.
   */
  override renderRuleset(): { ipv4: string; ipv6: string; bridge: string; ipset: string } {
    this.#flush();
    return {
      ipv4: this.manager.renderFull(4),
      ipv6: this.#versions.includes(6) ? this.manager.renderFull(6) : '',
      bridge: this.bridge.renderFull(),
      ipset: this.ipsets.renderFull(),
    };
  }

  /** Forget what the kernel is believed to hold; the next apply re-reads it and repairs drift. */
  invalidate(): void {
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
    if (this.#deferred) return 0;
    const bridgeDrift = this.options.bridgeFilter ? await this.bridge.countDrift() : 0;
    this.invalidate();
    await this.#apply(this.#model.instances.keys());
    const stats = this.lastApplyStats;
    return bridgeDrift + (stats ? stats.chainsWritten + stats.chainsDeleted + stats.hookFixes : 0);
  }

  /** Remove every chain, hook, set and table virtfw owns from the kernel, and forget all instances. */
  async teardown(): Promise<void> {
    this.#model.clear();
    await this.manager.teardown();
    await this.ipsets.teardown();
    if (this.options.bridgeFilter) await this.bridge.teardown();
  }

  // ------------------------------------------------------------------ reads

  async #fetchInstanceGroups(instanceId: string): Promise<string[]> {
    const groups = await this.virtapi.getInstanceSecurityGroups(instanceId);
    if (!Array.isArray(groups)) throw new ValidationError('securityGroups', 'VirtAPI returned a non-array');
    const ids = groups.map((g, i) => validateId(`securityGroups[${i}].id`, g?.id));
    return [...new Set(ids)];
  }

  /** Rules of the groups, and members of every group those rules name. */
  async #fetchGroups(groupIds: readonly string[], fresh = false): Promise<Fetched> {
    const fetched: Fetched = { rules: new Map(), members: new Map() };
    for (const groupId of groupIds) {
      const cached = fresh ? undefined : this.#batchCache?.rules.get(groupId);
      const rules = cached ?? (await this.#readRules(groupId));
      this.#batchCache?.rules.set(groupId, rules);
      fetched.rules.set(groupId, rules);
    }
    for (const rules of fetched.rules.values()) {
      for (const groupId of this.#model.remotesOf(rules)) {
        if (!fetched.members.has(groupId)) fetched.members.set(groupId, await this.#fetchMembers(groupId, fresh));
      }
    }
    return fetched;
  }

  async #readRules(groupId: string): Promise<NormalizedRule[]> {
    const rules = await this.virtapi.getSecurityGroupRules(groupId);
    if (!Array.isArray(rules)) throw new ValidationError(`securityGroup ${groupId} rules`, 'VirtAPI returned a non-array');
    return rules.map((r, i) => normalizeRule(r, `securityGroup ${groupId} rules[${i}]`));
  }

  async #fetchMembers(groupId: string, fresh: boolean): Promise<MemberAddresses> {
    const cached = fresh ? undefined : this.#batchCache?.members.get(groupId);
    if (cached) return cached;
    const records = await this.virtapi.getSecurityGroupMembers(groupId);
    if (!Array.isArray(records)) throw new ValidationError(`securityGroup ${groupId} members`, 'VirtAPI returned a non-array');
    const v4 = new Set<string>();
    const v6 = new Set<string>();
    records.forEach((record, i) => {
      const inst = normalizeInstance(record?.instance, record?.networkInfo, `securityGroup ${groupId} members[${i}].instance`);
      if (inst.deleted) return;
      for (const a of instanceAddresses(inst, 4)) v4.add(a);
      for (const a of instanceAddresses(inst, 6)) v6.add(a);
    });
    const members: MemberAddresses = { 4: [...v4].sort(), 6: [...v6].sort() };
    this.#batchCache?.members.set(groupId, members);
    return members;
  }

  async #readProviderRules(): Promise<NormalizedProviderRule[]> {
    const rules = await this.virtapi.getProviderRules();
    if (!Array.isArray(rules)) throw new ValidationError('providerRules', 'VirtAPI returned a non-array');
    return rules.map((r, i) => normalizeProviderRule(r, `providerRules[${i}]`));
  }

  /** Rules first (they say which members matter), then members. */
  #commit(fetched: Fetched): void {
    for (const [groupId, rules] of fetched.rules) {
      if (this.#model.usersOf(groupId).size > 0) this.#model.commitRules(groupId, rules);
    }
    for (const [groupId, members] of fetched.members) {
      if (this.#model.groupsNaming(groupId).size > 0) this.#model.commitMembers(groupId, members);
    }
  }

  #isFiltered(id: string): boolean {
    if (!this.#model.instances.has(id)) return false;
    for (const v of this.#versions) {
      if (!this.manager.isInSync(v, this.names.instanceIngress(id)) || !this.manager.isInSync(v, this.names.instanceEgress(id))) {
        return false;
      }
    }
    return (this.#model.basic.get(id) ?? []).every((vif) => this.bridge.isInSync(vif.devname));
  }

  // ----------------------------------------------------------------- render

  /** Renders everything the model marks dirty into the managers. */
  #flush(): void {
    const model = this.#model;
    const groupRules = (g: string) => model.groups.get(g);
    const members = (g: string) => model.members.get(g);
    if (this.options.memberMatch === 'ipset') {
      for (const groupId of model.dirtyMemberSets) {
        const addresses = model.members.get(groupId);
        for (const v of this.#versions) {
          const name = this.names.memberSet(groupId, v);
          if (addresses) this.ipsets.setMembers(name, v, addresses[v]);
          else this.ipsets.removeSet(name);
        }
      }
    }
    model.dirtyMemberSets.clear();
    for (const groupId of model.dirtyGroups) {
      const rules = model.groups.get(groupId);
      for (const v of this.#versions) {
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
      for (const v of this.#versions) {
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
      for (const v of this.#versions) {
        const dispatch = renderDispatch(views, v, this.render);
        for (const [name, rules] of renderBaseChains(inputs, v, dispatch, this.render)) this.manager.setChain(v, name, rules);
      }
      model.dirtyBase = false;
    }
  }

  async #ensureBridgeNetfilter(): Promise<void> {
    if (this.#bridgeNetfilterReady || !this.options.ensureBridgeNetfilter) return;
    const anyBridged =
      this.#model.basic.size > 0 || [...this.#model.instances.values()].some((v) => v.instance.vifs.some((vif) => !vif.routed));
    if (!anyBridged) return;
    const keys = ['net.bridge.bridge-nf-call-iptables=1', ...(this.#versions.includes(6) ? ['net.bridge.bridge-nf-call-ip6tables=1'] : [])];
    let result = await this.runner.run(['sysctl', '-q', '-w', ...keys]);
    if (result.code !== 0) {
      await this.runner.run(['modprobe', 'br_netfilter']);
      result = await this.runner.run(['sysctl', '-q', '-w', ...keys]);
    }
    if (result.code !== 0) {
      throw new FirewallError(
        'VIRTFW_ERR_BRIDGE_NETFILTER',
        `cannot enable bridge netfilter (${result.stderr.trim()}): bridged instance traffic would bypass iptables`,
      );
    }
    this.#bridgeNetfilterReady = true;
  }

  /** Renders and writes pending changes unless deferred; records the outcome for `instances`. */
  async #apply(instances: Iterable<string>): Promise<void> {
    if (this.#deferred) return;
    const ids = [...instances];
    this.#flush();
    try {
      // Anti-spoofing of new VIFs and sets new rules match against come first;
      // reading the iptables state (when unknown) overlaps them.
      this.manager.prefetch();
      await Promise.all([
        this.#ensureBridgeNetfilter(),
        this.options.bridgeFilter ? this.bridge.applyAdditions() : undefined,
        this.ipsets.applyAdditions(),
      ]);
      this.lastApplyStats = await this.manager.apply();
      // Then what the new rules no longer need.
      await Promise.all([this.options.bridgeFilter ? this.bridge.apply() : undefined, this.ipsets.apply()]);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      for (const id of ids) this.#pendingError.set(id, message);
      this.log.error({ err: message, instances: ids.length }, 'apply failed; previous ruleset kept');
      throw err;
    }
    const now = new Date();
    for (const id of ids) {
      if (this.#model.instances.has(id) || this.#model.basic.has(id)) this.#appliedAt.set(id, now);
      this.#pendingError.delete(id);
    }
  }

  async #forgetConnections(view: InstanceView): Promise<void> {
    for (const v of this.#versions) {
      for (const address of instanceAddresses(view.instance, v)) {
        for (const side of ['-s', '-d']) {
          const result = await this.runner.run(['conntrack', '-D', '-f', v === 4 ? 'ipv4' : 'ipv6', side, address]);
          // conntrack exits 1 when nothing matched; anything else is worth a warning.
          if (result.code !== 0 && result.code !== 1) {
            this.log.warn({ address, stderr: result.stderr.trim() }, 'conntrack cleanup failed');
          }
        }
      }
    }
  }
}
