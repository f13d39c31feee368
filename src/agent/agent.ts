/**
 * HostAgent: keeps one host's kernel in step with the data store.
 *
 * # Model
 * The store numbers every committed change (the change log). The agent has
 * applied everything up to `appliedSeq`. When woken (a commit in this
 * process, a PostgreSQL NOTIFY, or the poll timer), it reads the changes
 * after `appliedSeq` and turns them into the driver calls the seed names:
 *
 *   rules of a group changed       -> refreshSecurityGroupRules(group)
 *   an instance joined/left groups -> refreshSecurityGroupMembers(each group)
 *                                     and, on its own host, refreshInstanceSecurityRules(instance)
 *   an instance appeared here      -> setupBasicFiltering, prepareInstanceFilter, applyInstanceFilter
 *   an instance left or was deleted-> unfilterInstance
 *   provider rules changed         -> refreshProviderFwRules
 *
 * One batch of changes is one deferred apply (bursts coalesce into a single
 * transaction per family). `appliedSeq` advances only after the batch is in
 * the kernel; a failed batch is retried with backoff, and re-running a batch
 * is harmless because every call re-reads the store.
 *
 * Whether an instance is on this host is decided from the store's current
 * row, not from the change alone, so out-of-order or repeated changes end in
 * the state the store holds now.
 *
 * # Full sync
 * At start, after a gap in the log (it was pruned past `appliedSeq`), and on
 * the periodic resync, the agent re-reads every instance of its host in one
 * deferred apply and asks the driver to re-read the kernel, which repairs
 * rules flushed or deleted behind its back.
 */
import { silentLogger, type Logger } from '../logger.js';
import type { FirewallDriver, InstanceStatus } from '../drivers/firewall-driver.js';
import type { Instance, NetworkInfo } from '../model/types.js';
import type { ChangeRecord, InstanceRow, Store } from '../store/store.js';
import type { AgentMetrics } from './metrics.js';

export interface HostAgentOptions {
  store: Store;
  driver: FirewallDriver;
  host: string;
  logger?: Logger;
  metrics?: AgentMetrics;
  /** Wait this long after a wake-up for more changes before applying. Default 20 ms. */
  coalesceMs?: number;
  /** Check the change log at least this often, in case a wake-up was missed. Default 1000 ms. */
  pollIntervalMs?: number;
  /** Full resync (drift repair) period; 0 disables. Default 60 s. */
  resyncIntervalMs?: number;
  /** Changes read per batch. Default 1000. */
  batchSize?: number;
  /** Report status to the store at most this often (and whenever the error state changes); 0 disables. Default 1000 ms. */
  reportIntervalMs?: number;
}

export interface AgentStatusReport {
  host: string;
  instances: InstanceStatus[];
  lastApply: string | null;
  lastError: string | null;
  appliedSeq: number;
}

interface Batch {
  ruleGroups: Set<string>;
  memberGroups: Set<string>;
  instances: Set<string>;
  /** instances whose group membership changed without a network change */
  membershipOnly: Set<string>;
  provider: boolean;
}

const MAX_BACKOFF_MS = 30_000;
/** An agent with nothing new still reports this often, so a silent host can be told from a dead one. */
const REPORT_HEARTBEAT_MS = 30_000;
/** The soonest a wake-up may retry after a failure. */
const MIN_RETRY_MS = 250;

export class HostAgent {
  readonly host: string;
  readonly #store: Store;
  readonly #driver: FirewallDriver;
  readonly #log: Logger;
  readonly #metrics: AgentMetrics | undefined;
  readonly #coalesceMs: number;
  readonly #pollMs: number;
  readonly #resyncMs: number;
  readonly #batchSize: number;
  readonly #reportMs: number;
  #lastReportAt = 0;
  #reportedError: string | null | undefined = undefined;
  #reportedSeq = -1;
  #reportedApply: number | undefined = undefined;
  #reportTimer: NodeJS.Timeout | null = null;

  /** instance id -> JSON of the network info it was prepared with */
  readonly #prepared = new Map<string, string>();
  #appliedSeq = 0;
  #running: Promise<void> | null = null;
  #again = false;
  #fullSyncWanted = false;
  #stopped = true;
  #timers: NodeJS.Timeout[] = [];
  #wakeTimer: NodeJS.Timeout | null = null;
  #retryTimer: NodeJS.Timeout | null = null;
  #failures = 0;
  #lastFailureAt = 0;
  #unsubscribe: (() => void) | null = null;
  #lastApply: Date | null = null;
  #lastError: string | null = null;
  readonly #idleWaiters: (() => void)[] = [];

  constructor(options: HostAgentOptions) {
    this.host = options.host;
    this.#store = options.store;
    this.#driver = options.driver;
    this.#log = options.logger ?? silentLogger;
    this.#metrics = options.metrics;
    this.#coalesceMs = options.coalesceMs ?? 20;
    this.#pollMs = options.pollIntervalMs ?? 1000;
    this.#resyncMs = options.resyncIntervalMs ?? 60_000;
    this.#batchSize = options.batchSize ?? 1000;
    this.#reportMs = options.reportIntervalMs ?? 1000;
  }

  get appliedSeq(): number {
    return this.#appliedSeq;
  }

  /** Full sync of the host, then follow the change log. Resolves once the host's rules are in force. */
  async start(): Promise<void> {
    this.#stopped = false;
    this.#unsubscribe = this.#store.onChange(() => this.wake());
    this.#fullSyncWanted = true;
    await this.#run();
    if (this.#lastError) throw new Error(`initial sync of host ${this.host} failed: ${this.#lastError}`);
    // The poll is a safety net for missed wake-ups; it does not cut a backoff short.
    this.#timers.push(setInterval(() => this.#retryTimer === null && this.wake(), this.#pollMs));
    if (this.#resyncMs > 0) this.#timers.push(setInterval(() => this.resync(), this.#resyncMs));
    for (const t of this.#timers) t.unref();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#unsubscribe?.();
    this.#unsubscribe = null;
    for (const t of this.#timers) clearInterval(t);
    this.#timers = [];
    if (this.#wakeTimer) clearTimeout(this.#wakeTimer);
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    if (this.#reportTimer) clearTimeout(this.#reportTimer);
    this.#wakeTimer = this.#retryTimer = this.#reportTimer = null;
    await this.#running;
    if (this.#reportMs > 0) await this.#report();
  }

  /**
   * Something may have changed: process the log soon (coalescing bursts). A
   * wake-up also cuts short the backoff after a failure (the next change
   * retries, and so does the store's reconnect), but not below
   * MIN_RETRY_MS, so a stream of changes cannot turn a failing kernel
   * tool into a busy loop.
   */
  wake(): void {
    if (this.#stopped || this.#wakeTimer) return;
    if (this.#retryTimer) {
      const soon = Math.max(0, this.#lastFailureAt + MIN_RETRY_MS - Date.now());
      clearTimeout(this.#retryTimer);
      this.#retryTimer = setTimeout(() => {
        this.#retryTimer = null;
        void this.#run();
      }, soon);
      this.#retryTimer.unref();
      return;
    }
    this.#wakeTimer = setTimeout(() => {
      this.#wakeTimer = null;
      void this.#run();
    }, this.#coalesceMs);
  }

  /** Full resync now: re-read the host's instances and repair the kernel. */
  resync(): void {
    this.#fullSyncWanted = true;
    this.wake();
  }

  /** Resolves when no batch is running or pending. */
  async idle(): Promise<void> {
    while (this.#running || this.#wakeTimer) {
      await new Promise<void>((resolve) => this.#idleWaiters.push(resolve));
    }
  }

  status(): AgentStatusReport {
    return {
      host: this.host,
      instances: this.#driver.status(),
      lastApply: this.#lastApply?.toISOString() ?? null,
      lastError: this.#lastError,
      appliedSeq: this.#appliedSeq,
    };
  }

  // ------------------------------------------------------------------ loop

  #run(): Promise<void> {
    if (this.#running) {
      this.#again = true;
      return this.#running;
    }
    this.#running = (async () => {
      do {
        this.#again = false;
        await this.#step();
      } while (this.#again && !this.#stopped && !this.#retryTimer);
    })().finally(() => {
      this.#running = null;
      if (!this.#wakeTimer) for (const resolve of this.#idleWaiters.splice(0)) resolve();
    });
    return this.#running;
  }

  async #step(): Promise<void> {
    const started = performance.now();
    try {
      if (this.#fullSyncWanted) {
        await this.#fullSync();
      } else {
        let changes: ChangeRecord[];
        do {
          // One query when idle. A jump in the numbering is usually a rolled-back
          // transaction's number; only when the log's oldest entry is past ours
          // was it pruned, and then only a full resync is safe.
          changes = await this.#store.changesSince(this.#appliedSeq, this.#batchSize);
          const first = changes[0];
          if (!first) break;
          if (this.#appliedSeq > 0 && first.seq > this.#appliedSeq + 1) {
            const oldest = await this.#store.oldestChangeSeq();
            if (oldest > this.#appliedSeq + 1) {
              this.#log.warn({ appliedSeq: this.#appliedSeq, oldest }, 'change log no longer reaches back; full resync');
              await this.#fullSync();
              break;
            }
          }
          await this.#applyChanges(changes);
        } while (changes.length === this.#batchSize && !this.#stopped);
      }
      this.#failures = 0;
      this.#lastError = null;
    } catch (err) {
      this.#failures += 1;
      this.#lastFailureAt = Date.now();
      this.#lastError = err instanceof Error ? err.message : String(err);
      this.#metrics?.errors.inc();
      const delay = Math.min(MAX_BACKOFF_MS, 250 * 2 ** Math.min(this.#failures, 10));
      this.#log.error({ err: this.#lastError, retryInMs: delay, host: this.host }, 'agent apply failed; previous ruleset kept');
      if (!this.#stopped) {
        this.#retryTimer = setTimeout(() => {
          this.#retryTimer = null;
          void this.#run();
        }, delay);
        this.#retryTimer.unref();
      }
    } finally {
      this.#metrics?.applyDuration.observe((performance.now() - started) / 1000);
      this.#metrics?.appliedSeq.set(this.#appliedSeq);
      this.#recordRuleCounts();
      this.#scheduleReport();
    }
  }

  async #fullSync(): Promise<void> {
    // Read the log position first: anything committed after it is replayed
    // on the next step, and replaying is harmless.
    const seq = await this.#store.latestChangeSeq();
    const rows = await this.#store.instancesOnHost(this.host);
    const wanted = new Set(rows.map((r) => r.id));
    this.#driver.filterDeferApplyOn();
    try {
      for (const id of [...this.#prepared.keys()]) {
        if (!wanted.has(id)) await this.#unfilter(id);
      }
      for (const row of rows) await this.#prepare(row);
      await this.#driver.refreshProviderFwRules();
      // Members the driver already knew may have changed while the feed was missed.
      const driver = this.#driver as FirewallDriver & { refreshAllSecurityGroupMembers?: () => Promise<void> };
      await driver.refreshAllSecurityGroupMembers?.();
    } finally {
      await this.#driver.filterDeferApplyOff();
    }
    // Everything the store says is applied; whatever the kernel still
    // differs in was changed behind our back.
    const repaired = await this.#driver.resync();
    if (repaired > 0) {
      this.#metrics?.driftRepairs.inc(repaired);
      this.#log.warn({ host: this.host, repaired }, 'repaired drift in the kernel');
    }
    this.#fullSyncWanted = false;
    this.#appliedSeq = Math.max(this.#appliedSeq, seq);
    this.#applied(rows.length, 'full');
  }

  async #applyChanges(changes: ChangeRecord[]): Promise<void> {
    const batch: Batch = { ruleGroups: new Set(), memberGroups: new Set(), instances: new Set(), membershipOnly: new Set(), provider: false };
    for (const { change } of changes) {
      switch (change.kind) {
        case 'rules':
        case 'group-deleted':
          batch.ruleGroups.add(change.groupId);
          break;
        case 'instance-created':
        case 'instance-deleted':
          for (const g of change.groups) batch.memberGroups.add(g);
          if (this.#concerns(change.instanceId, change.host)) batch.instances.add(change.instanceId);
          break;
        case 'instance-updated':
          for (const g of change.membershipChanged) batch.memberGroups.add(g);
          if (this.#concerns(change.instanceId, change.host, change.previousHost)) batch.instances.add(change.instanceId);
          if (!change.networkChanged && change.host === change.previousHost && change.membershipChanged.length) {
            batch.membershipOnly.add(change.instanceId);
          }
          break;
        case 'provider-rules':
          batch.provider = true;
          break;
      }
    }
    this.#driver.filterDeferApplyOn();
    try {
      if (batch.provider) await this.#driver.refreshProviderFwRules();
      for (const g of batch.ruleGroups) await this.#driver.refreshSecurityGroupRules(g);
      for (const g of batch.memberGroups) await this.#driver.refreshSecurityGroupMembers(g);
      for (const id of batch.instances) await this.#reconcileInstance(id, batch.membershipOnly.has(id));
    } finally {
      await this.#driver.filterDeferApplyOff();
    }
    const last = changes.at(-1);
    if (last) this.#appliedSeq = last.seq;
    this.#applied(changes.length, 'changes');
  }

  /** Is the instance, or was it, on this host? Others' instances matter here only through their groups. */
  #concerns(instanceId: string, ...hosts: string[]): boolean {
    return this.#prepared.has(instanceId) || hosts.includes(this.host);
  }

  /** Brings one instance to what the store says now. */
  async #reconcileInstance(id: string, membershipOnly: boolean): Promise<void> {
    const row = await this.#store.getInstance(null, id).catch(() => null);
    if (!row || row.host !== this.host) {
      if (this.#prepared.has(id)) await this.#unfilter(id);
      return;
    }
    if (membershipOnly && this.#prepared.get(id) === JSON.stringify(row.networkInfo)) {
      await this.#driver.refreshInstanceSecurityRules(instanceOf(row));
      return;
    }
    await this.#prepare(row);
  }

  async #prepare(row: InstanceRow): Promise<void> {
    const instance = instanceOf(row);
    const networkInfo: NetworkInfo = row.networkInfo;
    try {
      await this.#driver.setupBasicFiltering(instance, networkInfo);
      await this.#driver.prepareInstanceFilter(instance, networkInfo);
      await this.#driver.applyInstanceFilter(instance, networkInfo);
      this.#prepared.set(row.id, JSON.stringify(row.networkInfo));
    } catch (err) {
      // One instance's bad data must not hold back the rest of the host.
      if ((err as { code?: string }).code === 'VIRTFW_ERR_VALIDATION') {
        this.#log.error({ instanceId: row.id, err: (err as Error).message }, 'instance not filtered: invalid data');
        this.#metrics?.errors.inc();
        return;
      }
      throw err;
    }
  }

  async #unfilter(id: string): Promise<void> {
    await this.#driver.unfilterInstance({ id }, []);
    this.#prepared.delete(id);
  }

  #applied(count: number, kind: 'full' | 'changes'): void {
    this.#lastApply = new Date();
    this.#metrics?.applies.inc({ kind });
    this.#log.info({ host: this.host, kind, count, appliedSeq: this.#appliedSeq }, 'applied');
  }

  /**
   * Reports status to the store when it changed: at most every
   * reportIntervalMs, at once when the error state changes, and otherwise as
   * a heartbeat every REPORT_HEARTBEAT_MS (an idle host writes next to nothing).
   */
  #scheduleReport(): void {
    if (this.#reportMs <= 0 || this.#stopped) return;
    const since = Date.now() - this.#lastReportAt;
    const changed = this.#appliedSeq !== this.#reportedSeq || this.#lastApply?.getTime() !== this.#reportedApply;
    if (!changed && this.#lastError === this.#reportedError && since < REPORT_HEARTBEAT_MS) return;
    const wait = this.#reportMs - since;
    if (this.#lastError !== this.#reportedError || wait <= 0) {
      void this.#report();
    } else if (!this.#reportTimer) {
      this.#reportTimer = setTimeout(() => {
        this.#reportTimer = null;
        void this.#report();
      }, wait);
      this.#reportTimer.unref();
    }
  }

  async #report(): Promise<void> {
    this.#lastReportAt = Date.now();
    this.#reportedError = this.#lastError;
    this.#reportedSeq = this.#appliedSeq;
    this.#reportedApply = this.#lastApply?.getTime();
    const { host, instances, lastApply, lastError, appliedSeq } = this.status();
    try {
      await this.#store.reportAgentStatus({ host, instances, lastApply, lastError, appliedSeq });
    } catch (err) {
      // The data store may be down; the next report carries the same news.
      this.#reportedError = undefined;
      this.#log.warn({ err: (err as Error).message }, 'cannot report status to the data store');
    }
  }

  #recordRuleCounts(): void {
    if (!this.#metrics) return;
    for (const [table, n] of Object.entries(this.#driver.ruleCounts())) this.#metrics.rules.set({ table }, n);
  }
}

function instanceOf(row: InstanceRow): Instance {
  return { id: row.id, name: row.name, host: row.host };
}
