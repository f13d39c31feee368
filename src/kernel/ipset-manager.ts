/**
 * IpsetManager: keeps the ipsets that hold remote groups' member addresses
 * (one `hash:ip` set per group and family, named `<prefix>-m<4|6><hash>`) in
 * step with the model, with `ipset restore`: a membership change is element
 * adds and deletes only, no iptables at all.
 *
 * Ordering with iptables: a set must exist before a rule matches against it
 * and may be destroyed only once no rule does. So `applyAdditions()` (create
 * sets, change members) runs before the iptables transaction and `apply()`
 * (also destroy unwanted sets) after it.
 *
 * When its picture of the kernel may be stale (first apply, after a failure,
 * `invalidate()`), it lists the sets (`ipset list -n`) and rewrites each
 * wanted set whole, through a temporary set and `swap`, so a packet never
 * sees a set half filled.
 */
import { ApplyError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import type { IpVersion } from '../model/types.js';
import type { Names } from '../render/names.js';
import type { CommandRunner } from './exec.js';
import { toolReason } from './iptables-manager.js';
import { Mutex } from '../util/mutex.js';

export interface IpsetManagerOptions {
  names: Names;
  runner: CommandRunner;
  ipsetCommand?: string;
  logger?: Logger;
  /** maxelem of every set; default 262144 */
  maxElements?: number;
}

interface DesiredSet {
  version: IpVersion;
  members: ReadonlySet<string>;
}

export class IpsetManager {
  readonly #names: Names;
  readonly #runner: CommandRunner;
  readonly #ipset: string;
  readonly #log: Logger;
  readonly #maxElements: number;
  readonly #desired = new Map<string, DesiredSet>();
  /** set -> members as last written; null = unknown */
  #written: Map<string, ReadonlySet<string>> | null = null;
  readonly #dirty = new Set<string>();
  /** applies run one at a time; a failed one does not block the next */
  readonly #serial = new Mutex();
  lastInput = '';

  constructor(options: IpsetManagerOptions) {
    this.#names = options.names;
    this.#runner = options.runner;
    this.#ipset = options.ipsetCommand ?? 'ipset';
    this.#log = options.logger ?? silentLogger;
    this.#maxElements = options.maxElements ?? 262_144;
  }

  /** States the members of a set (created on the next apply if new). */
  setMembers(name: string, version: IpVersion, members: readonly string[]): void {
    this.#desired.set(name, { version, members: new Set(members) });
    this.#dirty.add(name);
  }

  removeSet(name: string): void {
    if (this.#desired.delete(name)) this.#dirty.add(name);
  }

  get setCount(): number {
    return this.#desired.size;
  }

  memberCount(): number {
    let n = 0;
    for (const set of this.#desired.values()) n += set.members.size;
    return n;
  }

  invalidate(): void {
    this.#written = null;
  }

  /** `ipset restore` input that creates every wanted set from nothing. */
  renderFull(): string {
    const lines: string[] = [];
    for (const [name, set] of [...this.#desired].sort(([a], [b]) => a.localeCompare(b))) {
      lines.push(this.#create(name, set.version), ...[...set.members].map((m) => `add ${name} ${m}`));
    }
    return lines.length ? `${lines.join('\n')}\n` : '';
  }

  /** Creates new sets and writes member changes; unwanted sets stay until `apply()`. */
  applyAdditions(): Promise<number> {
    return this.#serial.run(() => this.#write(false));
  }

  /** Writes everything, destroying sets no longer wanted. */
  apply(): Promise<number> {
    return this.#serial.run(() => this.#write(true));
  }

  /** Destroys every set of ours (after the rules using them are gone). */
  teardown(): Promise<void> {
    for (const name of this.#desired.keys()) this.#dirty.add(name);
    this.#desired.clear();
    this.#written = null;
    return this.#serial.run(async () => {
      await this.#write(true);
    });
  }

  #create(name: string, version: IpVersion): string {
    return `create ${name} hash:ip family ${version === 4 ? 'inet' : 'inet6'} maxelem ${this.#maxElements} -exist`;
  }

  #tempName(name: string): string {
    // `<prefix>-m...` -> `<prefix>-t...`: same length, within ipset's 31 characters.
    return name.replace(/-m(?=[46])/, '-t');
  }

  async #observe(): Promise<Map<string, ReadonlySet<string>>> {
    const result = await this.#runner.run([this.#ipset, 'list', '-n']);
    if (result.code !== 0) {
      throw new ApplyError(`${this.#ipset} list failed: ${toolReason(result.stderr) || `exit ${result.code}`}`, {
        tool: this.#ipset,
        exitCode: result.code,
        stderr: result.stderr,
      });
    }
    const ours = new Map<string, ReadonlySet<string>>();
    for (const line of result.stdout.split('\n')) {
      const name = line.trim();
      // Members unknown: every wanted set is rewritten whole (swap).
      if (this.#names.owns(name)) ours.set(name, new Set(['\0unknown']));
    }
    return ours;
  }

  async #write(removals: boolean): Promise<number> {
    let written = this.#written;
    let full = false;
    if (!written) {
      written = await this.#observe();
      full = true;
    }
    const lines: string[] = [];
    const nextWritten = new Map(written);
    const names = full ? new Set([...this.#desired.keys(), ...written.keys()]) : new Set(this.#dirty);
    /** set -> what this restore writes of it (undefined: gone), to tell later changes from it */
    const cleaned = new Map<string, DesiredSet | undefined>();
    for (const name of [...names].sort()) {
      const desired = this.#desired.get(name);
      const before = written.get(name);
      if (!desired) {
        if (before && removals) {
          lines.push(`destroy ${name}`);
          nextWritten.delete(name);
        }
        if (removals || !before) cleaned.set(name, undefined);
        continue;
      }
      if (!before) {
        lines.push(this.#create(name, desired.version), ...[...desired.members].map((m) => `add ${name} ${m}`));
      } else if (before.has('\0unknown')) {
        const temp = this.#tempName(name);
        lines.push(
          this.#create(temp, desired.version),
          `flush ${temp}`,
          ...[...desired.members].map((m) => `add ${temp} ${m}`),
          `swap ${temp} ${name}`,
          `destroy ${temp}`,
        );
      } else {
        for (const m of before) if (!desired.members.has(m)) lines.push(`del ${name} ${m} -exist`);
        for (const m of desired.members) if (!before.has(m)) lines.push(`add ${name} ${m} -exist`);
      }
      nextWritten.set(name, desired.members);
      cleaned.set(name, desired);
    }
    if (lines.length > 0) {
      const input = `${lines.join('\n')}\n`;
      this.lastInput = input;
      const result = await this.#runner.run([this.#ipset, 'restore'], { input });
      if (result.code !== 0) {
        this.#written = null;
        const lineNo = /line (\d+)/.exec(result.stderr)?.[1];
        const failedLine = lineNo ? lines[Number(lineNo) - 1] : undefined;
        throw new ApplyError(
          `${this.#ipset} restore failed, previous sets kept: ${toolReason(result.stderr) || `exit ${result.code}`}${failedLine ? ` (at: ${failedLine})` : ''}`,
          { tool: this.#ipset, exitCode: result.code, stderr: result.stderr, input, ...(failedLine ? { failedLine } : {}) },
        );
      }
      this.#log.debug({ lines: lines.length }, 'ipset restore applied');
    }
    this.#written = nextWritten;
    // A set changed again while the restore ran stays dirty for the next one.
    for (const [name, wrote] of cleaned) if (this.#desired.get(name) === wrote) this.#dirty.delete(name);
    return lines.length ? 1 : 0;
  }

}
