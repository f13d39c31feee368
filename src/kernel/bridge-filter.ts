/**
 * BridgeFilter: keeps the nftables bridge table of L2 anti-spoofing chains in
 * step with the VIFs the driver wants filtered. One `nft -f` transaction per
 * apply; the whole table is rewritten when its kernel state is unknown (first
 * apply, after a failure, after `invalidate()`), otherwise only the VIFs that
 * changed are written.
 *
 * Ordering with iptables: a new VIF's anti-spoofing must be in force before
 * its iptables chains accept traffic, and a removed VIF's must stay until its
 * chains are gone. So the driver calls `applyAdditions()` before the iptables
 * transaction (removed VIFs are kept, "retiring") and `apply()` after it.
 */
import { ApplyError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { BRIDGE_MAP, renderBridgeTableDelete, renderBridgeTableReplace, renderBridgeTableUpdate } from '../render/bridge.js';
import type { Names } from '../render/names.js';
import type { CommandRunner } from './exec.js';
import { toolReason } from './iptables-manager.js';

export interface BridgeFilterOptions {
  names: Names;
  runner: CommandRunner;
  nftCommand?: string;
  logger?: Logger;
}

type VifRules = ReadonlyMap<string, readonly string[]>;

export class BridgeFilter {
  readonly #names: Names;
  readonly #runner: CommandRunner;
  readonly #nft: string;
  readonly #log: Logger;
  readonly #desired = new Map<string, readonly string[]>();
  /** removed from `desired` but maybe still in the kernel, until the next full `apply()` */
  readonly #retiring = new Map<string, readonly string[]>();
  /** devname -> rules as last written; null = unknown */
  #written: Map<string, readonly string[]> | null = null;
  #tableExists = false;
  #queue: Promise<unknown> = Promise.resolve();
  lastInput = '';

  constructor(options: BridgeFilterOptions) {
    this.#names = options.names;
    this.#runner = options.runner;
    this.#nft = options.nftCommand ?? 'nft';
    this.#log = options.logger ?? silentLogger;
  }

  setVif(devname: string, rules: readonly string[]): void {
    this.#desired.set(devname, [...rules]);
    this.#retiring.delete(devname);
  }

  removeVif(devname: string): void {
    const rules = this.#desired.get(devname);
    if (!rules) return;
    this.#desired.delete(devname);
    this.#retiring.set(devname, rules);
  }

  hasVif(devname: string): boolean {
    return this.#desired.has(devname);
  }

  /** Is the VIF's chain in the kernel as desired, as far as we know? */
  isInSync(devname: string): boolean {
    const desired = this.#desired.get(devname);
    const written = this.#written?.get(devname);
    return !!desired && !!written && sameRules(desired, written);
  }

  get vifCount(): number {
    return this.#desired.size;
  }

  ruleCount(): number {
    let n = 1; // the dispatch rule of the base chain
    for (const rules of this.#desired.values()) n += rules.length;
    return n;
  }

  invalidate(): void {
    this.#written = null;
  }

  /**
   * How many VIFs' chains in the kernel differ from what was last written
   * (missing, flushed, edited, or their map element gone), read from
   * `nft -j list table`. Every VIF counts when the table itself is gone.
   */
  async countDrift(): Promise<number> {
    const written = this.#written;
    if (!written || written.size === 0) return 0;
    const result = await this.#runner.run([this.#nft, '-j', 'list', 'table', 'bridge', this.#names.bridgeTable]);
    // A missing table has lost every VIF; any other failure tells nothing
    // (the resync rewrites the whole table either way).
    if (result.code !== 0) return /No such file or directory/.test(result.stderr) ? written.size : 0;
    let listing: { nftables?: Record<string, unknown>[] };
    try {
      listing = JSON.parse(result.stdout) as typeof listing;
    } catch {
      return 0;
    }
    const rulesPerChain = new Map<string, number>();
    const elements = new Set<string>();
    for (const item of listing.nftables ?? []) {
      const rule = item.rule as { chain?: string } | undefined;
      if (rule?.chain) rulesPerChain.set(rule.chain, (rulesPerChain.get(rule.chain) ?? 0) + 1);
      const map = item.map as { name?: string; elem?: unknown[] } | undefined;
      if (map?.name === BRIDGE_MAP) {
        for (const elem of map.elem ?? []) if (Array.isArray(elem) && typeof elem[0] === 'string') elements.add(elem[0]);
      }
    }
    let drifted = 0;
    for (const [devname, rules] of written) {
      const chain = this.#names.bridgeVifChain(devname);
      if (!elements.has(devname) || rulesPerChain.get(chain) !== rules.length) drifted += 1;
    }
    return drifted;
  }

  /** The nft script that writes the whole table as desired ('' when no VIF is filtered). */
  renderFull(): string {
    return this.#desired.size ? renderBridgeTableReplace(this.#names, this.#desired) : '';
  }

  /** Writes new and changed VIFs; VIFs being removed stay in force. */
  applyAdditions(): Promise<number> {
    return this.#serialise(() => this.#write(false));
  }

  /** Writes everything, removals included. */
  apply(): Promise<number> {
    return this.#serialise(() => this.#write(true));
  }

  teardown(): Promise<void> {
    this.#desired.clear();
    this.#retiring.clear();
    return this.#serialise(async () => {
      await this.#run(renderBridgeTableDelete(this.#names));
      this.#written = new Map();
      this.#tableExists = false;
    });
  }

  async #write(removals: boolean): Promise<number> {
    const target: VifRules = removals ? this.#desired : new Map([...this.#retiring, ...this.#desired]);
    const script = this.#plan(target);
    if (!script) {
      if (removals) this.#retiring.clear();
      return 0;
    }
    const snapshot = new Map(target);
    await this.#run(script);
    this.#written = snapshot;
    if (removals) this.#retiring.clear();
    return 1;
  }

  #plan(target: VifRules): string {
    if (this.#written === null || !this.#tableExists) {
      if (target.size === 0 && this.#written !== null) return '';
      return renderBridgeTableReplace(this.#names, target);
    }
    const changed = new Map<string, readonly string[]>();
    for (const [devname, rules] of target) {
      const written = this.#written.get(devname);
      if (!written || !sameRules(rules, written)) changed.set(devname, rules);
    }
    const removed = [...this.#written.keys()].filter((d) => !target.has(d));
    return renderBridgeTableUpdate(this.#names, changed, removed);
  }

  #serialise<T>(work: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(work, work);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #run(script: string): Promise<void> {
    this.lastInput = script;
    const result = await this.#runner.run([this.#nft, '-f', '-'], { input: script });
    if (result.code !== 0) {
      this.#written = null;
      const reason = toolReason(result.stderr) || `exit ${result.code}`;
      throw new ApplyError(`${this.#nft} failed, previous bridge filter kept: ${reason}`, {
        tool: this.#nft,
        exitCode: result.code,
        stderr: result.stderr,
        input: script,
      });
    }
    this.#tableExists = true;
    this.#log.debug({ lines: script.split('\n').length }, 'nft bridge filter applied');
  }
}

function sameRules(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((r, i) => r === b[i]);
}
