/**
 * IptablesManager: makes the kernel's filter tables hold the chains the
 * driver wants, and nothing else of ours, without touching anyone else's.
 *
 * # API model
 * Callers state whole chains (`setChain`, `removeChain`) and the manager
 * writes them on `apply()`. While deferred (`deferApplyOn`), `apply()` does
 * nothing, so any number of changes become one restore per family.
 *
 * # Design
 * 1. Ownership: every chain we own starts with `<prefix>-`; built-in chains
 *    are touched only to insert one hook rule each (`-I FORWARD 1 ... -j
 *    <prefix>-FORWARD`), tagged with the comment `<prefix>:hook`.
 * 2. Atomicity: each apply is one `iptables-restore --noflush` transaction
 *    per family; a failure leaves the previous ruleset whole.
 * 3. Incrementality: every rule carries an identity hash in its comment (see
 *    restore.ts). The manager remembers the hashes it wrote per chain and
 *    writes only chains whose hashes differ, so the restore input grows
 *    with the change, not with the ruleset.
 * 4. The kernel is re-read (`iptables-save -t filter`) only when the cache
 *    may be stale: on the first apply, after a failed apply, and after
 *    `invalidate()` (periodic resync). Re-reading also finds and removes
 *    chains of ours the driver no longer wants (left by an earlier run).
 *
 * # Concurrency
 * Applies are serialised. State may change while an apply runs; whatever was
 * not in the transaction stays dirty for the next one.
 */
import { ApplyError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import type { IpVersion } from '../model/types.js';
import type { Names } from '../render/names.js';
import { RestoreBuilder, ruleHashes } from '../render/restore.js';
import type { CommandRunner } from './exec.js';
import { parseIptablesSave } from './iptables-save.js';
import { Mutex } from '../util/mutex.js';

export interface FamilyCommands {
  save: string;
  restore: string;
}

export const DEFAULT_COMMANDS: Readonly<Record<IpVersion, FamilyCommands>> = Object.freeze({
  4: { save: 'iptables-save', restore: 'iptables-restore' },
  6: { save: 'ip6tables-save', restore: 'ip6tables-restore' },
});

export interface IptablesManagerOptions {
  names: Names;
  runner: CommandRunner;
  /** Families to manage; default both. */
  versions?: readonly IpVersion[];
  /** Built-in chain -> our chain it jumps to first. */
  hooks: readonly { builtin: string; target: string }[];
  commands?: Partial<Record<IpVersion, FamilyCommands>>;
  /** Seconds to wait for the xtables lock (`--wait`); default 10. */
  lockWaitSeconds?: number;
  logger?: Logger;
}

interface DesiredChain {
  rules: readonly string[];
  /** computed lazily, when the chain is about to be compared or written */
  hashes: string[] | null;
}

export interface ApplyStats {
  /** restore transactions run */
  restores: number;
  chainsWritten: number;
  chainsDeleted: number;
  rulesWritten: number;
  /** hook rules inserted into (or duplicates removed from) built-in chains */
  hookFixes: number;
  /** lines of restore input */
  inputLines: number;
  durationMs: number;
}

interface FamilyState {
  desired: Map<string, DesiredChain>;
  /** what the kernel holds, as far as we know; null = unknown, re-read before writing */
  written: Map<string, readonly (string | null)[]> | null;
  dirty: Set<string>;
  /** hook rules known to be in place */
  hooksInPlace: boolean;
  /** a read of the kernel started ahead of the next apply (see `prefetch`) */
  observation: Promise<ReturnType<typeof parseIptablesSave>> | null;
}

const sameHashes = (a: readonly (string | null)[] | undefined, b: readonly string[]): boolean =>
  a !== undefined && a.length === b.length && a.every((h, i) => h === b[i]);

export class IptablesManager {
  readonly names: Names;
  readonly versions: readonly IpVersion[];
  readonly #runner: CommandRunner;
  readonly #hooks: readonly { builtin: string; target: string }[];
  readonly #commands: Record<IpVersion, FamilyCommands>;
  readonly #lockWait: number;
  readonly #log: Logger;
  readonly #families: Record<IpVersion, FamilyState>;
  #deferred = false;
  #hooksWanted = true;
  /** applies run one at a time; a failed one does not block the next */
  readonly #serial = new Mutex();
  /** The input of the last restore per family, kept for error reports and debugging. */
  readonly lastInput: Partial<Record<IpVersion, string>> = {};

  constructor(options: IptablesManagerOptions) {
    this.names = options.names;
    this.versions = options.versions ?? [4, 6];
    this.#runner = options.runner;
    this.#hooks = options.hooks;
    this.#commands = { 4: { ...DEFAULT_COMMANDS[4], ...options.commands?.[4] }, 6: { ...DEFAULT_COMMANDS[6], ...options.commands?.[6] } };
    this.#lockWait = options.lockWaitSeconds ?? 10;
    this.#log = options.logger ?? silentLogger;
    const family = (): FamilyState => ({ desired: new Map(), written: null, dirty: new Set(), hooksInPlace: false, observation: null });
    this.#families = { 4: family(), 6: family() };
  }

  // ------------------------------------------------------------ desired state

  /** States the whole content of one of our chains. Unchanged content is a no-op. */
  setChain(version: IpVersion, chain: string, rules: readonly string[]): void {
    if (!this.names.owns(chain)) throw new Error(`chain ${chain} is not ours (prefix ${this.names.prefix}-)`);
    const fam = this.#families[version];
    const current = fam.desired.get(chain);
    if (current && current.rules.length === rules.length && current.rules.every((r, i) => r === rules[i])) return;
    fam.desired.set(chain, { rules: [...rules], hashes: null });
    fam.dirty.add(chain);
  }

  removeChain(version: IpVersion, chain: string): void {
    const fam = this.#families[version];
    if (fam.desired.delete(chain)) fam.dirty.add(chain);
  }

  hasChain(version: IpVersion, chain: string): boolean {
    return this.#families[version].desired.has(chain);
  }

  getChain(version: IpVersion, chain: string): readonly string[] | undefined {
    return this.#families[version].desired.get(chain)?.rules;
  }

  chainNames(version: IpVersion): string[] {
    return [...this.#families[version].desired.keys()];
  }

  /** Is the chain in the kernel with exactly the desired content, as last written or read? */
  isInSync(version: IpVersion, chain: string): boolean {
    const fam = this.#families[version];
    const desired = fam.desired.get(chain);
    if (!desired || !fam.written || fam.dirty.has(chain)) return false;
    return sameHashes(fam.written.get(chain), this.#hashesOf(chain, desired));
  }

  /** Number of rules we want in the kernel, per family. */
  ruleCount(version: IpVersion): number {
    let n = 0;
    for (const chain of this.#families[version].desired.values()) n += chain.rules.length;
    return n + (this.#hooksWanted ? this.#hooks.length : 0);
  }

  /**
   * Everything we want in one family, as iptables-restore --noflush input
   * (what a first apply on an empty kernel writes).
   */
  renderFull(version: IpVersion): string {
    const fam = this.#families[version];
    const builder = new RestoreBuilder('filter', this.names.commentTag);
    const chains = [...fam.desired.keys()].sort();
    for (const chain of chains) builder.declare(chain);
    for (const chain of chains) {
      const desired = fam.desired.get(chain);
      if (!desired) continue;
      const hashes = this.#hashesOf(chain, desired);
      desired.rules.forEach((rule, i) => builder.append(chain, rule, hashes[i] ?? ''));
    }
    for (const { builtin, target } of this.#hooks) {
      if (fam.desired.has(target)) builder.command(`-I ${builtin} 1 -m comment --comment "${this.names.commentTag}hook" -j ${target}`);
    }
    return builder.toString();
  }

  /** Forget what we believe the kernel holds: the next apply re-reads it. */
  invalidate(): void {
    for (const v of this.versions) {
      this.#families[v].written = null;
      this.#families[v].observation = null;
    }
  }

  /**
   * Starts reading the kernel now for families whose state is unknown, so
   * the read overlaps other work (the bridge and ipset transactions) instead
   * of delaying the next apply. Harmless when nothing needs reading.
   */
  prefetch(): void {
    if (this.#deferred) return;
    for (const v of this.versions) {
      const fam = this.#families[v];
      if (fam.written === null && fam.observation === null) {
        fam.observation = this.#observe(v);
        fam.observation.catch(() => undefined);
      }
    }
  }

  get deferred(): boolean {
    return this.#deferred;
  }

  deferApplyOn(): void {
    this.#deferred = true;
  }

  async deferApplyOff(): Promise<ApplyStats> {
    this.#deferred = false;
    return this.apply();
  }

  /** Writes every pending change, one restore per family. A no-op while deferred. */
  apply(): Promise<ApplyStats> {
    if (this.#deferred) return Promise.resolve(emptyStats());
    return this.#serial.run(() => this.#applyAll());
  }

  /** Removes every chain and hook rule of ours from the kernel (both families). */
  teardown(): Promise<ApplyStats> {
    for (const v of this.versions) {
      const fam = this.#families[v];
      for (const chain of fam.desired.keys()) fam.dirty.add(chain);
      fam.desired.clear();
      fam.written = null;
    }
    this.#hooksWanted = false;
    return this.#serial.run(async () => {
      try {
        return await this.#applyAll();
      } finally {
        this.#hooksWanted = true;
      }
    });
  }

  // ------------------------------------------------------------------ apply


  async #applyAll(): Promise<ApplyStats> {
    const stats = emptyStats();
    const started = performance.now();
    // The families are independent tables and tools: write them side by side.
    await Promise.all(this.versions.map((v) => this.#applyFamily(v, stats)));
    stats.durationMs = performance.now() - started;
    return stats;
  }

  #hashesOf(chain: string, desired: DesiredChain): string[] {
    desired.hashes ??= ruleHashes(chain, desired.rules);
    return desired.hashes;
  }

  async #observe(version: IpVersion): Promise<ReturnType<typeof parseIptablesSave>> {
    const cmd = this.#commands[version].save;
    const result = await this.#runner.run([cmd, '-t', 'filter']);
    if (result.code !== 0) {
      throw new ApplyError(`${cmd} failed: ${result.stderr.trim() || `exit ${result.code}`}`, {
        tool: cmd,
        exitCode: result.code,
        stderr: result.stderr,
      });
    }
    return parseIptablesSave(result.stdout, this.names);
  }

  async #applyFamily(version: IpVersion, stats: ApplyStats): Promise<void> {
    const fam = this.#families[version];
    let candidates: Set<string>;
    const hookLines: string[] = [];
    let written = fam.written;
    if (!written) {
      const observed = await (fam.observation ?? this.#observe(version));
      fam.observation = null;
      written = observed.chains;
      candidates = new Set([...fam.desired.keys(), ...written.keys(), ...fam.dirty]);
      for (const { builtin, target } of this.#hooks) {
        const count = observed.hooks.get(builtin)?.get(target) ?? 0;
        const spec = `-m comment --comment "${this.names.commentTag}hook" -j ${target}`;
        const keep = this.#hooksWanted ? 1 : 0;
        if (count < keep && fam.desired.has(target)) hookLines.push(`-I ${builtin} 1 ${spec}`);
        for (let i = keep; i < count; i++) hookLines.push(`-D ${builtin} ${spec}`);
      }
      fam.written = written;
      fam.hooksInPlace = hookLines.length === 0 && this.#hooksWanted;
    } else {
      candidates = new Set(fam.dirty);
      if (!fam.hooksInPlace && this.#hooksWanted) {
        // Written state is known but hooks are not: re-read to find out.
        fam.written = null;
        return this.#applyFamily(version, stats);
      }
    }
    fam.dirty.clear();

    const builder = new RestoreBuilder('filter', this.names.commentTag);
    const toWrite: [string, string[]][] = [];
    const toDelete: string[] = [];
    // Sorted, so that the same state always gives the same transaction text.
    for (const chain of [...candidates].sort()) {
      const desired = fam.desired.get(chain);
      if (desired) {
        const hashes = this.#hashesOf(chain, desired);
        if (!sameHashes(written.get(chain), hashes)) toWrite.push([chain, hashes]);
      } else if (written.has(chain)) {
        toDelete.push(chain);
      }
    }
    // Hook targets must exist before the hook rules that jump to them.
    for (const [chain, hashes] of toWrite) {
      builder.declare(chain);
      const rules = fam.desired.get(chain)?.rules ?? [];
      rules.forEach((rule, i) => builder.append(chain, rule, hashes[i] ?? ''));
      stats.rulesWritten += rules.length;
    }
    for (const chain of toDelete) builder.declare(chain);
    for (const line of hookLines) builder.command(line);
    for (const chain of toDelete) builder.delete(chain);
    if (builder.empty) return;

    const input = builder.toString();
    this.lastInput[version] = input;
    try {
      await this.#restore(version, input);
    } catch (err) {
      // The kernel kept its previous ruleset; what we wanted is still wanted.
      fam.written = null;
      fam.hooksInPlace = false;
      for (const chain of candidates) fam.dirty.add(chain);
      throw err;
    }
    for (const [chain, hashes] of toWrite) written.set(chain, hashes);
    for (const chain of toDelete) written.delete(chain);
    if (hookLines.length) fam.hooksInPlace = this.#hooksWanted;
    stats.restores += 1;
    stats.chainsWritten += toWrite.length;
    stats.chainsDeleted += toDelete.length;
    stats.hookFixes += hookLines.length;
    stats.inputLines += builder.size;
    this.#log.debug(
      { family: `ipv${version}`, chainsWritten: toWrite.length, chainsDeleted: toDelete.length, lines: builder.size },
      'iptables-restore applied',
    );
  }

  async #restore(version: IpVersion, input: string): Promise<void> {
    const cmd = this.#commands[version].restore;
    const result = await this.#runner.run([cmd, `--wait=${this.#lockWait}`, '--noflush'], { input });
    if (result.code === 0) return;
    const lineNo = /line:?\s*(\d+)/i.exec(result.stderr)?.[1];
    const failedLine = lineNo ? input.split('\n')[Number(lineNo) - 1] : undefined;
    const reason = toolReason(result.stderr) || `exit ${result.code}`;
    throw new ApplyError(
      `${cmd} failed, previous ruleset kept: ${reason}${failedLine ? ` (at input line ${lineNo}: ${failedLine})` : ''}`,
      { tool: cmd, exitCode: result.code, stderr: result.stderr, input, ...(failedLine ? { failedLine } : {}) },
    );
  }
}

/**
 * The kernel's reason from a tool's stderr: iptables-nft-restore starts with
 * a bare version banner (`iptables-restore v1.8.9 (nf_tables): `) and puts
 * the reason on the next line; usage hints are noise.
 */
export function toolReason(stderr: string): string {
  return stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !/^\S+ v[\d.]+(?: \([^)]*\))?:$/.test(l) && !/^Try `/.test(l))
    .join('; ');
}

function emptyStats(): ApplyStats {
  return { restores: 0, chainsWritten: 0, chainsDeleted: 0, rulesWritten: 0, hookFixes: 0, inputLines: 0, durationMs: 0 };
}
