/**
 * ModelFirewallDriver: the seed's methods, once, for every kernel backend.
 *
 * A driver reads the data store through the VirtAPI before it changes any
 * state (Nova: "compute rules outside the iptables lock"), feeds the
 * HostModel, and asks its backend to render what the model marks dirty and to
 * write it (`flush`, `write`). A refresh skips an instance that was
 * unfiltered while its data was read. While deferred, nothing is written;
 * `filterDeferApplyOff` writes everything pending at once.
 *
 * Backends (iptables, nftables) implement only rendering, writing, and what
 * they can tell about the kernel.
 */
import { FirewallError, NotFilteredError, ValidationError } from '../errors.js';
import { NetnsRunner, ProcessRunner, type CommandRunner } from '../kernel/exec.js';
import { silentLogger, type Logger } from '../logger.js';
import type { Instance, IpVersion, NetworkInfo, NormalizedProviderRule, NormalizedRule, NormalizedVif } from '../model/types.js';
import { parseAddress } from '../model/addresses.js';
import { givenMemberAddresses, groupMemberAddresses, normalizeInstance, normalizeProviderRule, normalizeRule, validateId, validateInstance } from '../model/validate.js';
import { VERSIONS, instanceAddresses, type InstanceView, type MemberAddresses, type RenderOptions } from '../render/iptables-rules.js';
import { Names } from '../render/names.js';
import type { VirtAPI } from '../virtapi/virtapi.js';
import { FirewallDriver, type InstanceStatus } from './firewall-driver.js';
import { HostModel } from './host-model.js';
import { resolveDriverOptions, type DriverOptions, type ResolvedDriverOptions } from './options.js';

/** Up to this many addresses per family are deleted directly; more are looked up in one listing first. */
const DIRECT_CLEANUP_MAX = 8;
/** conntrack commands run side by side. */
const CLEANUP_PARALLEL = 8;

/** Every address in a `conntrack -L` listing (`src=` / `dst=` of both directions), canonical. */
export function connectionAddresses(listing: string): Set<string> {
  const out = new Set<string>();
  for (const match of listing.matchAll(/\b(?:src|dst)=(\S+)/g)) {
    const address = parseAddress(match[1]);
    if (address) out.add(address.address);
  }
  return out;
}

interface Fetched {
  rules: Map<string, NormalizedRule[]>;
  members: Map<string, MemberAddresses>;
}

export abstract class ModelFirewallDriver extends FirewallDriver {
  readonly options: ResolvedDriverOptions;
  readonly names: Names;
  protected readonly virtapi: VirtAPI;
  protected readonly runner: CommandRunner;
  protected readonly log: Logger;
  protected readonly render: RenderOptions;
  protected readonly versions: readonly IpVersion[];
  protected readonly model = new HostModel();

  #deferred = false;
  #bridgeNetfilterReady = false;
  /** rules and members read during one deferred batch, so a batch reads each once */
  #batchCache: Fetched | null = null;
  /** instances whose rules changed during the deferred batch, for their status */
  readonly #deferredIds = new Set<string>();
  readonly #appliedAt = new Map<string, Date>();
  /** when the members of a group were last written: the last apply of every instance whose rules name it */
  readonly #membersAppliedAt = new Map<string, Date>();
  #cleanups: Promise<void> = Promise.resolve();
  /** instances unfiltered in a deferred batch: their connections go once the batch is applied */
  #cleanupsAfterBatch: InstanceView[] = [];
  readonly #pendingError = new Map<string, string>();

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
    this.versions = this.options.ipv6 ? VERSIONS : [4];
    this.render = {
      names: this.names,
      allowSameNetTraffic: this.options.allowSameNetTraffic,
      fallbackAction: this.options.fallbackAction,
      memberMatch: this.options.memberMatch,
      bridgeFilter: this.options.bridgeFilter,
    };
  }

  // --------------------------------------------------------- backend hooks

  /** Renders everything the model marks dirty into the backend's desired state (and clears the marks). */
  protected abstract flush(): void;
  /**
   * Renders what the model marks dirty (`flush`, at whatever point suits the
   * backend) and writes it to the kernel. Throws (ApplyError) with the
   * previous state kept.
   */
  protected abstract write(): Promise<void>;
  /** The instance's filters are in the kernel as last written. */
  protected abstract inSync(instanceId: string): boolean;
  /** Basic filtering (L2) of VIFs changed: the backend's bridge filter follows. */
  protected abstract basicChanged(removed: readonly NormalizedVif[], added: readonly NormalizedVif[]): void;
  /** Refuses VIFs this backend cannot filter (a ValidationError naming the field); default: all are fine. */
  protected checkVifs(_vifs: readonly NormalizedVif[]): void {}
  /** Forget what the kernel is believed to hold. */
  abstract invalidate(): void;
  /** Remove everything of ours from the kernel, and forget all instances. */
  abstract teardown(): Promise<void>;

  // ---------------------------------------------------------- seed methods

  override async setupBasicFiltering(instance: Instance, networkInfo: NetworkInfo): Promise<void> {
    const inst = normalizeInstance(instance, networkInfo);
    this.model.checkDevices(inst.id, inst.vifs);
    this.checkVifs(inst.vifs);
    if (!this.options.bridgeFilter) return;
    const bridged = inst.vifs.filter((v) => !v.routed);
    const before = this.model.basic.get(inst.id) ?? [];
    this.model.setBasic(inst.id, bridged);
    this.basicChanged(before, bridged);
    await this.apply([inst.id]);
  }

  override async prepareInstanceFilter(instance: Instance, networkInfo: NetworkInfo): Promise<void> {
    const inst = normalizeInstance(instance, networkInfo);
    this.model.checkDevices(inst.id, inst.vifs);
    this.checkVifs(inst.vifs);
    const groupIds = await this.#fetchInstanceGroups(inst.id);
    const fetched = await this.#fetchGroups(groupIds);
    if (this.model.providerRules === null) this.model.providerRules = await this.#readProviderRules();
    this.model.setInstance({ instance: inst, groupIds });
    this.#commit(fetched);
    await this.apply([inst.id]);
  }

  /** A no-op: everything is in place once prepareInstanceFilter returns. */
  override async applyInstanceFilter(instance: Instance, _networkInfo: NetworkInfo): Promise<void> {
    validateInstance(instance);
  }

  override async unfilterInstance(instance: Instance, _networkInfo: NetworkInfo): Promise<void> {
    const { id } = validateInstance(instance);
    const view = this.model.removeInstance(id);
    const basic = this.model.removeBasic(id);
    if (!view && !basic) {
      this.log.info({ instanceId: id }, 'Attempted to unfilter instance which is not filtered');
      return;
    }
    if (basic) this.basicChanged(basic, []);
    await this.apply([id]);
    this.#appliedAt.delete(id);
    this.#pendingError.delete(id);
    // Once the rules are gone, its connections are forgotten (so a reused
    // address starts clean), in the background: it need not hold up the caller.
    if (view && this.options.conntrackCleanup) {
      if (this.#deferred) this.#cleanupsAfterBatch.push(view);
      else this.#scheduleCleanup([view]);
    }
  }

  #scheduleCleanup(views: readonly InstanceView[]): void {
    if (views.length) this.#cleanups = this.#cleanups.then(() => this.#forgetConnections(views));
  }

  /** Resolves once the conntrack cleanup of unfiltered instances has run. */
  connectionCleanupDone(): Promise<void> {
    return this.#cleanups;
  }

  override async instanceFilterExists(instance: Instance, _networkInfo: NetworkInfo): Promise<boolean> {
    const { id } = validateInstance(instance);
    return this.#isFiltered(id);
  }

  override async refreshSecurityGroupRules(securityGroupId: string): Promise<void> {
    const groupId = validateId('securityGroupId', securityGroupId);
    if (!this.model.hasGroup(groupId)) return;
    const fetched = await this.#fetchGroups([groupId], { fresh: true, keepHeldMembers: true });
    if (!this.model.hasGroup(groupId)) return;
    this.#commit(fetched);
    await this.apply(this.model.usersOf(groupId));
  }

  override async refreshSecurityGroupMembers(securityGroupId: string): Promise<void> {
    const groupId = validateId('securityGroupId', securityGroupId);
    if (!this.model.hasMembers(groupId)) return;
    const members = await this.#fetchMembers(groupId, true);
    if (!this.model.hasMembers(groupId)) return;
    this.#commit({ rules: new Map(), members: new Map([[groupId, members]]) });
    await this.#applyMembers([groupId]);
  }

  override async refreshInstanceSecurityRules(instance: Instance): Promise<void> {
    const { id } = validateInstance(instance);
    if (!this.model.instances.has(id)) throw new NotFilteredError(id);
    const groupIds = await this.#fetchInstanceGroups(id);
    const fetched = await this.#fetchGroups(groupIds, { fresh: true });
    const view = this.model.instances.get(id);
    if (!view) {
      this.log.info({ instanceId: id }, 'instance was unfiltered during refresh, skipping');
      return;
    }
    this.model.setInstance({ instance: view.instance, groupIds });
    this.#commit(fetched);
    await this.apply([id]);
  }

  override async refreshProviderFwRules(): Promise<void> {
    this.model.providerRules = await this.#readProviderRules();
    this.model.dirtyBase = true;
    await this.apply(this.model.instances.keys());
  }

  override filterDeferApplyOn(): void {
    this.#deferred = true;
    this.#batchCache = { rules: new Map(), members: new Map() };
  }

  override async filterDeferApplyOff(): Promise<void> {
    this.#deferred = false;
    this.#batchCache = null;
    const ids = [...this.#deferredIds, ...this.model.dirtyInstances];
    this.#deferredIds.clear();
    const cleanups = this.#cleanupsAfterBatch.splice(0);
    await this.apply(ids);
    this.#scheduleCleanup(cleanups);
  }

  protected get deferred(): boolean {
    return this.#deferred;
  }

  // ------------------------------------------------------------- extensions

  /** Per-instance state, for `virtfw status`. */
  override status(): InstanceStatus[] {
    const ids = new Set([...this.model.instances.keys(), ...this.model.basic.keys()]);
    for (const groupId of this.#membersAppliedAt.keys()) if (!this.model.hasMembers(groupId)) this.#membersAppliedAt.delete(groupId);
    return [...ids].sort().map((instanceId) => ({
      instanceId,
      filtered: this.#isFiltered(instanceId),
      lastApply: this.#lastApply(instanceId)?.toISOString() ?? null,
      lastError: this.#pendingError.get(instanceId) ?? null,
    }));
  }

  /** Ids of the instances this driver filters. */
  filteredInstances(): string[] {
    return [...this.model.instances.keys()];
  }

  /** Its own last apply, or a later one of the members of a group its rules name. */
  #lastApply(id: string): Date | undefined {
    let last = this.#appliedAt.get(id);
    for (const groupId of this.model.instances.get(id)?.groupIds ?? []) {
      for (const named of this.model.remotesOf(this.model.groups.get(groupId) ?? [])) {
        const at = this.#membersAppliedAt.get(named);
        if (at && (!last || at > last)) last = at;
      }
    }
    return last;
  }

  #isFiltered(id: string): boolean {
    return this.model.instances.has(id) && this.inSync(id);
  }

  // ------------------------------------------------------------------ reads

  async #fetchInstanceGroups(instanceId: string): Promise<string[]> {
    const groups = await this.virtapi.getInstanceSecurityGroups(instanceId);
    if (!Array.isArray(groups)) throw new ValidationError('securityGroups', 'VirtAPI returned a non-array');
    const ids = groups.map((g, i) => validateId(`securityGroups[${i}].id`, g?.id));
    return [...new Set(ids)];
  }

  /**
   * Rules of the groups, and members of every group those rules name.
   * `fresh` skips the batch cache; `keepHeldMembers` (a rule change) reads
   * only the members of groups the host did not name before: members it holds
   * change through refreshSecurityGroupMembers, so a rule change costs the size
   * of the rules, not of the groups. An instance being prepared reads them all,
   * as Nova does, so it starts with the current members.
   */
  async #fetchGroups(groupIds: readonly string[], { fresh = false, keepHeldMembers = false } = {}): Promise<Fetched> {
    const fetched: Fetched = { rules: new Map(), members: new Map() };
    for (const groupId of groupIds) {
      const cached = fresh ? undefined : this.#batchCache?.rules.get(groupId);
      const rules = cached ?? (await this.#readRules(groupId));
      this.#batchCache?.rules.set(groupId, rules);
      fetched.rules.set(groupId, rules);
    }
    for (const rules of fetched.rules.values()) {
      for (const groupId of this.model.remotesOf(rules)) {
        if (fetched.members.has(groupId) || (keepHeldMembers && this.model.hasMembers(groupId))) continue;
        fetched.members.set(groupId, await this.#fetchMembers(groupId, fresh));
      }
    }
    return fetched;
  }

  /** Re-reads the members of every group the host's rules name (a full resync after a gap in the change feed). */
  async refreshAllSecurityGroupMembers(): Promise<void> {
    const groups = [...this.model.members.keys()];
    const fetched = new Map<string, MemberAddresses>();
    for (const groupId of groups) fetched.set(groupId, await this.#fetchMembers(groupId, true));
    this.#commit({ rules: new Map(), members: fetched });
    await this.#applyMembers(groups);
  }

  async #readRules(groupId: string): Promise<NormalizedRule[]> {
    const rules = await this.virtapi.getSecurityGroupRules(groupId);
    if (!Array.isArray(rules)) throw new ValidationError(`securityGroup ${groupId} rules`, 'VirtAPI returned a non-array');
    return rules.map((r, i) => normalizeRule(r, `securityGroup ${groupId} rules[${i}]`));
  }

  async #fetchMembers(groupId: string, fresh: boolean): Promise<MemberAddresses> {
    const cached = fresh ? undefined : this.#batchCache?.members.get(groupId);
    if (cached) return cached;
    const members: MemberAddresses = await this.#readMembers(groupId);
    this.#batchCache?.members.set(groupId, members);
    return members;
  }

  /** The group's member addresses: ready-made when the store can give them, else from its members' records. */
  async #readMembers(groupId: string): Promise<MemberAddresses> {
    if (this.virtapi.getSecurityGroupMemberAddresses) {
      const given = await this.virtapi.getSecurityGroupMemberAddresses(groupId);
      return givenMemberAddresses(given, `securityGroup ${groupId} member addresses`);
    }
    const records = await this.virtapi.getSecurityGroupMembers(groupId);
    if (!Array.isArray(records)) throw new ValidationError(`securityGroup ${groupId} members`, 'VirtAPI returned a non-array');
    return groupMemberAddresses(records, `securityGroup ${groupId} members`);
  }

  async #readProviderRules(): Promise<NormalizedProviderRule[]> {
    const rules = await this.virtapi.getProviderRules();
    if (!Array.isArray(rules)) throw new ValidationError('providerRules', 'VirtAPI returned a non-array');
    return rules.map((r, i) => normalizeProviderRule(r, `providerRules[${i}]`));
  }

  /** Rules first (they say which members matter), then members. */
  #commit(fetched: Fetched): void {
    for (const [groupId, rules] of fetched.rules) {
      if (this.model.usersOf(groupId).size > 0) this.model.commitRules(groupId, rules);
    }
    for (const [groupId, members] of fetched.members) {
      if (this.model.groupsNaming(groupId).size > 0) this.model.commitMembers(groupId, members);
    }
  }

  // ------------------------------------------------------------------ apply

  /** Bridged traffic reaches the IP hooks only with bridge netfilter on. */
  protected async ensureBridgeNetfilter(): Promise<void> {
    if (this.#bridgeNetfilterReady || !this.options.ensureBridgeNetfilter) return;
    const anyBridged =
      this.model.basic.size > 0 || [...this.model.instances.values()].some((v) => v.instance.vifs.some((vif) => !vif.routed));
    if (!anyBridged) return;
    const keys = ['net.bridge.bridge-nf-call-iptables=1', ...(this.versions.includes(6) ? ['net.bridge.bridge-nf-call-ip6tables=1'] : [])];
    let result = await this.runner.run(['sysctl', '-q', '-w', ...keys]);
    if (result.code !== 0) {
      await this.runner.run(['modprobe', 'br_netfilter']);
      result = await this.runner.run(['sysctl', '-q', '-w', ...keys]);
    }
    if (result.code !== 0) {
      throw new FirewallError(
        'VIRTFW_ERR_BRIDGE_NETFILTER',
        `cannot enable bridge netfilter (${result.stderr.trim()}): bridged instance traffic would bypass the filter`,
      );
    }
    this.#bridgeNetfilterReady = true;
  }

  /** Renders and writes pending changes unless deferred; records the outcome for `instances`. */
  protected async apply(instances: Iterable<string>): Promise<void> {
    if (this.#deferred) {
      for (const id of instances) this.#deferredIds.add(id);
      return;
    }
    const ids = [...new Set(instances)];
    await this.#write(() => ids);
    const now = new Date();
    for (const id of ids) if (this.model.instances.has(id) || this.model.basic.has(id)) this.#appliedAt.set(id, now);
  }

  /**
   * `apply` for new members of groups. What it records for the instances
   * whose rules name them is recorded once per group (their last apply is the
   * group's), so a membership change costs the same whether the group is
   * named by the rules of ten instances or of a thousand.
   */
  async #applyMembers(groupIds: readonly string[]): Promise<void> {
    if (this.#deferred) return this.apply(this.model.usersNaming(groupIds)); // they go with the batch
    await this.#write(() => this.model.usersNaming(groupIds));
    const now = new Date();
    for (const groupId of groupIds) this.#membersAppliedAt.set(groupId, now);
  }

  /**
   * Writes; when that fails, records the error for the instances `affected`
   * names and rethrows. A write that succeeds clears every error recorded
   * before it: a failed write keeps what it wanted pending (the backends
   * re-read the kernel and write it again), so once one succeeds the kernel
   * holds everything wanted, including what had failed.
   */
  async #write(affected: () => Iterable<string>): Promise<void> {
    try {
      await this.write();
      this.#pendingError.clear();
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      let instances = 0;
      for (const id of affected()) {
        this.#pendingError.set(id, message);
        instances++;
      }
      this.log.error({ err: message, instances }, 'apply failed; previous ruleset kept');
      throw err;
    }
  }

  /**
   * Deletes the conntrack entries of the instances' addresses (as source or
   * destination), a few commands at a time; never throws. For more than a
   * few addresses, one listing per family first tells which of them have any
   * entry, so removing a thousand instances does not start thousands of tools.
   */
  async #forgetConnections(views: readonly InstanceView[]): Promise<void> {
    const commands: string[][] = [];
    for (const v of this.versions) {
      const family = v === 4 ? 'ipv4' : 'ipv6';
      let addresses = [...new Set(views.flatMap((view) => instanceAddresses(view.instance, v)))];
      if (addresses.length > DIRECT_CLEANUP_MAX) {
        const tracked = await this.#trackedAddresses(family);
        if (tracked) addresses = addresses.filter((a) => tracked.has(a));
      }
      for (const address of addresses) for (const side of ['-s', '-d']) commands.push(['conntrack', '-D', '-f', family, side, address]);
    }
    for (let i = 0; i < commands.length; i += CLEANUP_PARALLEL) {
      await Promise.all(commands.slice(i, i + CLEANUP_PARALLEL).map((argv) => this.#conntrack(argv)));
    }
  }

  /** Addresses that appear in the family's connection table (null when it cannot be read: delete them all). */
  async #trackedAddresses(family: 'ipv4' | 'ipv6'): Promise<Set<string> | null> {
    const result = await this.#conntrack(['conntrack', '-L', '-f', family]);
    return result === null ? null : connectionAddresses(result);
  }

  /** Runs one conntrack command; its output, or null (logged) when it failed. */
  async #conntrack(argv: string[]): Promise<string | null> {
    try {
      const result = await this.runner.run(argv);
      // conntrack exits 1 when nothing matched; anything else is worth a warning.
      if (result.code === 0 || result.code === 1) return result.stdout;
      this.log.warn({ argv, stderr: result.stderr.trim() }, 'conntrack cleanup failed');
    } catch (err) {
      this.log.warn({ argv, err: (err as Error).message }, 'conntrack cleanup failed');
    }
    return null;
  }
}
