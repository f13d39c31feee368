/**
 * IptablesFirewallDriver: Nova's security-group semantics enforced with
 * iptables/ip6tables (filtering) and an nftables bridge table (L2
 * anti-spoofing). See render/iptables-rules.ts for the chain layout.
 *
 * The driver keeps the model of its host (prepared instances, the rules of
 * their groups, the members of groups those rules name, provider rules),
 * renders the parts that changed into chains, and lets the IptablesManager
 * and BridgeFilter write only those. Data is read from the VirtAPI before any
 * state changes (Nova: "compute rules outside the iptables lock"), and a
 * refresh skips an instance that was unfiltered while its data was read.
 */
import { FirewallError, NotFilteredError, ValidationError } from '../errors.js';
import { BridgeFilter } from '../kernel/bridge-filter.js';
import { NetnsRunner, ProcessRunner, type CommandRunner } from '../kernel/exec.js';
import { IptablesManager, type ApplyStats } from '../kernel/iptables-manager.js';
import { silentLogger, type Logger } from '../logger.js';
import type { Instance, IpVersion, NetworkInfo, NormalizedProviderRule, NormalizedRule, NormalizedVif } from '../model/types.js';
import {
  normalizeInstance,
  normalizeProviderRule,
  normalizeRule,
  validateId,
  validateInstance,
} from '../model/validate.js';
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
  protected readonly virtapi: VirtAPI;
  protected readonly runner: CommandRunner;
  protected readonly log: Logger;
  protected readonly render: RenderOptions;
  readonly #versions: readonly IpVersion[];

  /** prepared instances: their chains exist */
  readonly #instances = new Map<string, InstanceView>();
  /** instances with L2 basic filtering, and their VIFs */
  readonly #basic = new Map<string, NormalizedVif[]>();
  /** rules of every group a prepared instance is in */
  readonly #groups = new Map<string, NormalizedRule[]>();
  /** member addresses of every group those rules name */
  readonly #members = new Map<string, MemberAddresses>();
  #providerRules: NormalizedProviderRule[] | null = null;

  readonly #dirtyInstances = new Set<string>();
  readonly #dirtyGroups = new Set<string>();
  #dirtyBase = true;
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
  }

  // ------------------------------------------------------------ seed methods

  override async setupBasicFiltering(instance: Instance, networkInfo: NetworkInfo): Promise<void> {
    const inst = normalizeInstance(instance, networkInfo);
    this.#checkDevices(inst.id, inst.vifs);
    if (!this.options.bridgeFilter) return;
    const bridged = inst.vifs.filter((v) => !v.routed);
    this.#basic.set(inst.id, bridged);
    for (const vif of bridged) this.bridge.setVif(bridgeVifOf(vif));
    await this.#apply([inst.id]);
  }

  override async prepareInstanceFilter(instance: Instance, networkInfo: NetworkInfo): Promise<void> {
    const inst = normalizeInstance(instance, networkInfo);
    this.#checkDevices(inst.id, inst.vifs);
    const groupIds = await this.#fetchInstanceGroups(inst.id);
    const fetched = await this.#fetchGroups(groupIds);
    await this.#ensureProviderRules();
    this.#commit(fetched);
    this.#instances.set(inst.id, { instance: inst, groupIds });
    this.#dirtyInstances.add(inst.id);
    this.#dirtyBase = true;
    this.#collectGarbage();
    await this.#apply([inst.id]);
  }

  /** A no-op: everything is in place once prepareInstanceFilter returns. */
  override async applyInstanceFilter(instance: Instance, _networkInfo: NetworkInfo): Promise<void> {
    validateInstance(instance);
  }

  override async unfilterInstance(instance: Instance, _networkInfo: NetworkInfo): Promise<void> {
    const { id } = validateInstance(instance);
    const view = this.#instances.get(id);
    const basic = this.#basic.get(id);
    if (!view && !basic) {
      this.log.info({ instanceId: id }, 'Attempted to unfilter instance which is not filtered');
      return;
    }
    this.#instances.delete(id);
    this.#basic.delete(id);
    for (const vif of basic ?? []) this.bridge.removeVif(vif.devname);
    this.#dirtyInstances.add(id);
    this.#dirtyBase = true;
    this.#collectGarbage();
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
    if (!this.#groups.has(groupId)) return;
    const fetched = await this.#fetchGroups([groupId], true);
    if (!this.#groups.has(groupId)) return;
    this.#commit(fetched);
    this.#collectGarbage();
    await this.#apply(this.#usersOf(groupId));
  }

  override async refreshSecurityGroupMembers(securityGroupId: string): Promise<void> {
    const groupId = validateId('securityGroupId', securityGroupId);
    if (!this.#members.has(groupId)) return;
    const members = await this.#fetchMembers(groupId, true);
    if (!this.#members.has(groupId)) return;
    this.#commit({ rules: new Map(), members: new Map([[groupId, members]]) });
    const affected = [...this.#groups.keys()].filter((g) => this.#referencedGroups(g).has(groupId));
    await this.#apply(affected.flatMap((g) => this.#usersOf(g)));
  }

  override async refreshInstanceSecurityRules(instance: Instance): Promise<void> {
    const { id } = validateInstance(instance);
    if (!this.#instances.has(id)) throw new NotFilteredError(id);
    const groupIds = await this.#fetchInstanceGroups(id);
    const fetched = await this.#fetchGroups(groupIds, true);
    const view = this.#instances.get(id);
    if (!view) {
      this.log.info({ instanceId: id }, 'instance was unfiltered during refresh, skipping');
      return;
    }
    this.#commit(fetched);
    this.#instances.set(id, { instance: view.instance, groupIds });
    this.#dirtyInstances.add(id);
    this.#collectGarbage();
    await this.#apply([id]);
  }

  override async refreshProviderFwRules(): Promise<void> {
    this.#providerRules = await this.#readProviderRules();
    this.#dirtyBase = true;
    await this.#apply([...this.#instances.keys()]);
  }

  override filterDeferApplyOn(): void {
    this.#deferred = true;
    this.#batchCache = { rules: new Map(), members: new Map() };
  }

  override async filterDeferApplyOff(): Promise<void> {
    this.#deferred = false;
    this.#batchCache = null;
    await this.#apply([...this.#dirtyInstances]);
  }

  // ------------------------------------------------------------- extensions

  /** Per-instance state, for `virtfw status`. */
  override status(): InstanceStatus[] {
    const ids = new Set([...this.#instances.keys(), ...this.#basic.keys()]);
    return [...ids].sort().map((instanceId) => ({
      instanceId,
      filtered: this.#isFiltered(instanceId),
      lastApply: this.#appliedAt.get(instanceId)?.toISOString() ?? null,
      lastError: this.#pendingError.get(instanceId) ?? null,
    }));
  }

  /** Ids of the instances this driver filters. */
  filteredInstances(): string[] {
    return [...this.#instances.keys()];
  }

  /** Rules virtfw wants in the kernel: per family, and in the bridge table. */
  override ruleCounts(): { ipv4: number; ipv6: number; bridge: number; bridgeElements: number } {
    const bridged = this.options.bridgeFilter && this.bridge.vifCount > 0;
    return {
      ipv4: this.manager.ruleCount(4),
      ipv6: this.#versions.includes(6) ? this.manager.ruleCount(6) : 0,
      bridge: bridged ? this.bridge.ruleCount() : 0,
      bridgeElements: bridged ? this.bridge.elementCount() : 0,
    };
  }

  /**
   * The full ruleset this driver wants, as iptables-restore (--noflush) input
   * per family and an nft script for the bridge table.
   */
  override renderRuleset(): { ipv4: string; ipv6: string; bridge: string } {
    this.#flush();
    return {
      ipv4: this.manager.renderFull(4),
      ipv6: this.#versions.includes(6) ? this.manager.renderFull(6) : '',
      bridge: this.bridge.renderFull(),
    };
  }

  /** Forget what the kernel is believed to hold; the next apply re-reads it and repairs drift. */
  invalidate(): void {
    this.manager.invalidate();
    this.bridge.invalidate();
  }

  /**
   * Re-read the kernel and rewrite whatever differs from the model: chains
   * flushed, edited or deleted by hand, missing hook rules, VIFs' bridge
   * chains. Returns how many it repaired (0 when the kernel was as written).
   */
  override async resync(): Promise<number> {
    if (this.#deferred) return 0;
    const bridgeDrift = this.options.bridgeFilter ? await this.bridge.countDrift() : 0;
    this.invalidate();
    await this.#apply([...this.#instances.keys()]);
    const stats = this.lastApplyStats;
    return bridgeDrift + (stats ? stats.chainsWritten + stats.chainsDeleted + stats.hookFixes : 0);
  }

  /** Remove every chain, hook and table virtfw owns from the kernel, and forget all instances. */
  async teardown(): Promise<void> {
    this.#instances.clear();
    this.#basic.clear();
    this.#groups.clear();
    this.#members.clear();
    this.#dirtyInstances.clear();
    this.#dirtyGroups.clear();
    await this.manager.teardown();
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
    const remotes = new Set<string>();
    for (const rules of fetched.rules.values()) {
      for (const r of rules) if (r.remote.kind === 'group') remotes.add(r.remote.groupId);
    }
    for (const groupId of remotes) {
      fetched.members.set(groupId, await this.#fetchMembers(groupId, fresh));
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

  async #ensureProviderRules(): Promise<void> {
    if (this.#providerRules === null) this.#providerRules = await this.#readProviderRules();
  }

  // ------------------------------------------------------------------ model

  /** Two instances cannot own one device. */
  #checkDevices(instanceId: string, vifs: readonly NormalizedVif[]): void {
    const owners = new Map<string, string>();
    for (const [id, view] of this.#instances) for (const v of view.instance.vifs) owners.set(v.devname, id);
    for (const [id, list] of this.#basic) for (const v of list) owners.set(v.devname, id);
    vifs.forEach((vif, i) => {
      const owner = owners.get(vif.devname);
      if (owner !== undefined && owner !== instanceId) {
        throw new ValidationError(`networkInfo[${i}].devname`, `${vif.devname} is already used by instance ${owner}`);
      }
    });
  }

  /** Takes freshly read rules and members into the model, marking what they change. */
  #commit(fetched: Fetched): void {
    for (const [groupId, rules] of fetched.rules) {
      const before = this.#groups.get(groupId);
      if (before && sameJson(before, rules)) continue;
      this.#groups.set(groupId, rules);
      this.#dirtyGroups.add(groupId);
      // Instances jump only to group chains that have rules; that set may have changed.
      if (!before || jumpSignature(before) !== jumpSignature(rules)) {
        for (const id of this.#usersOf(groupId)) this.#dirtyInstances.add(id);
      }
    }
    for (const [groupId, members] of fetched.members) {
      const before = this.#members.get(groupId);
      if (before && sameJson(before, members)) continue;
      this.#members.set(groupId, members);
      for (const g of this.#groups.keys()) if (this.#referencedGroups(g).has(groupId)) this.#dirtyGroups.add(g);
    }
  }

  #usersOf(groupId: string): string[] {
    const out: string[] = [];
    for (const [id, view] of this.#instances) if (view.groupIds.includes(groupId)) out.push(id);
    return out;
  }

  #referencedGroups(groupId: string): Set<string> {
    const out = new Set<string>();
    for (const r of this.#groups.get(groupId) ?? []) if (r.remote.kind === 'group') out.add(r.remote.groupId);
    return out;
  }

  /** Drops groups no prepared instance uses, and members no rule names. */
  #collectGarbage(): void {
    const used = new Set<string>();
    for (const view of this.#instances.values()) for (const g of view.groupIds) used.add(g);
    for (const groupId of [...this.#groups.keys()]) {
      if (!used.has(groupId)) {
        this.#groups.delete(groupId);
        this.#dirtyGroups.add(groupId);
      }
    }
    const referenced = new Set<string>();
    for (const groupId of this.#groups.keys()) for (const r of this.#referencedGroups(groupId)) referenced.add(r);
    for (const groupId of [...this.#members.keys()]) if (!referenced.has(groupId)) this.#members.delete(groupId);
  }

  #isFiltered(id: string): boolean {
    const view = this.#instances.get(id);
    if (!view) return false;
    for (const v of this.#versions) {
      if (!this.manager.isInSync(v, this.names.instanceIngress(id)) || !this.manager.isInSync(v, this.names.instanceEgress(id))) {
        return false;
      }
    }
    return (this.#basic.get(id) ?? []).every((vif) => this.bridge.isInSync(vif.devname));
  }

  // ----------------------------------------------------------------- render

  /** Renders everything marked dirty into the manager and bridge filter. */
  #flush(): void {
    const groupRules = (g: string) => this.#groups.get(g);
    const members = (g: string) => this.#members.get(g);
    for (const groupId of this.#dirtyGroups) {
      const rules = this.#groups.get(groupId);
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
    this.#dirtyGroups.clear();
    for (const id of this.#dirtyInstances) {
      const view = this.#instances.get(id);
      for (const v of this.#versions) {
        const chains = view ? renderInstanceChains(view, v, groupRules, this.render) : new Map<string, string[]>();
        for (const name of instanceChainNames(id, this.names)) {
          const rules = chains.get(name);
          if (rules) this.manager.setChain(v, name, rules);
          else this.manager.removeChain(v, name);
        }
      }
    }
    if (this.#dirtyBase) {
      const views = [...this.#instances.values()];
      const inputs = baseInputsOf(views, this.#providerRules ?? []);
      for (const v of this.#versions) {
        const dispatch = renderDispatch(views, v, this.render);
        for (const [name, rules] of renderBaseChains(inputs, v, dispatch, this.render)) this.manager.setChain(v, name, rules);
      }
      this.#dirtyBase = false;
    }
  }

  async #ensureBridgeNetfilter(): Promise<void> {
    if (this.#bridgeNetfilterReady || !this.options.ensureBridgeNetfilter) return;
    const anyBridged = [...this.#instances.values()].some((v) => v.instance.vifs.some((vif) => !vif.routed)) || this.#basic.size > 0;
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
  async #apply(instances: readonly string[]): Promise<void> {
    if (this.#deferred) return;
    this.#flush();
    try {
      await this.#ensureBridgeNetfilter();
      // L2 anti-spoofing of a new VIF is in force before its chains accept
      // traffic, and that of a removed VIF stays until its chains are gone.
      if (this.options.bridgeFilter) await this.bridge.applyAdditions();
      this.lastApplyStats = await this.manager.apply();
      if (this.options.bridgeFilter) await this.bridge.apply();
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      for (const id of instances) this.#pendingError.set(id, message);
      this.log.error({ err: message, instances: instances.length }, 'apply failed; previous ruleset kept');
      throw err;
    }
    const now = new Date();
    for (const id of instances) {
      if (this.#instances.has(id) || this.#basic.has(id)) this.#appliedAt.set(id, now);
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

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function jumpSignature(rules: readonly NormalizedRule[]): string {
  return VERSIONS.flatMap((v) => DIRECTIONS.map((d) => (groupHasRules(rules, d, v) ? '1' : '0'))).join('');
}
