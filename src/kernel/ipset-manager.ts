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
 *
 * A change that is only member adds and deletes (a group's membership) goes
 * through one kept `ipset -` process when the runner can keep one (about 1 ms,
 * where starting `ipset restore` costs 10-30 ms); it falls back to `ipset
 * restore` if that process breaks.
 */
import { ApplyError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import type { IpVersion } from '../model/types.js';
import type { Names } from '../render/names.js';
import type { CommandRunner } from './exec.js';
import { toolReason } from './iptables-manager.js';
import { SessionBrokenError, ToolSession, type SessionDialect } from './tool-session.js';
import { Mutex } from '../util/mutex.js';

export interface IpsetManagerOptions {
  names: Names;
  runner: CommandRunner;
  ipsetCommand?: string;
  logger?: Logger;
  /** maxelem of every set; default 262144 */
  maxElements?: number;
  /** keep an `ipset -` process for member changes when the runner can (default true) */
  session?: boolean;
  sessionTimeoutMs?: number;
}

/**
 * `ipset -` (interactive: one command per line, run as read). The sync line
 * is a `create` with a family of our marker's name, refused while parsing
 * (nothing reaches the kernel): "Syntax error: unknown inet family <marker>".
 */
const IPSET_DIALECT: SessionDialect = {
  args: ['-'],
  oneLine: false,
  syncLine: (marker) => `create virtfw-sync hash:ip family ${marker}`,
  ownOutput(stderr, marker) {
    const at = stderr.indexOf(`unknown inet family ${marker}\n`);
    return at === -1 ? undefined : stderr.slice(0, stderr.lastIndexOf('\n', at) + 1).trim();
  },
};

const isMemberChange = (line: string) => line.startsWith('add ') || line.startsWith('del ');

interface DesiredSet {
  version: IpVersion;
  /** sorted, each once */
  members: readonly string[];
}

/** A set whose members are unknown (found by a listing): it is rewritten whole. */
const UNKNOWN: readonly string[] = Object.freeze([]);

/**
 * The list sorted, each once, as the manager keeps it: a frozen list that
 * already is (a group's member list from the store) is kept as it is, any
 * other is copied, so a caller's later change to it cannot reach the manager.
 */
function sortedMembers(list: readonly string[]): readonly string[] {
  for (let i = 1; i < list.length; i++) {
    if (!((list[i - 1] as string) < (list[i] as string))) return [...new Set(list)].sort();
  }
  return Object.isFrozen(list) ? list : [...list];
}

/**
 * `del` lines for what `before` has and `after` lacks, then `add` lines for
 * the reverse: one walk over both sorted lists, so a change costs a string
 * comparison per member (and nothing when the list is the one last written).
 */
function memberChanges(name: string, before: readonly string[], after: readonly string[], lines: string[]): void {
  if (before === after) return;
  const adds: string[] = [];
  let i = 0;
  let j = 0;
  while (i < before.length || j < after.length) {
    const gone = before[i];
    const kept = after[j];
    if (gone === kept) {
      i++;
      j++;
    } else if (kept === undefined || (gone !== undefined && gone < kept)) {
      lines.push(`del ${name} ${gone} -exist`);
      i++;
    } else {
      adds.push(`add ${name} ${kept} -exist`);
      j++;
    }
  }
  for (const line of adds) lines.push(line);
}

export class IpsetManager {
  readonly #names: Names;
  readonly #runner: CommandRunner;
  readonly #ipset: string;
  readonly #log: Logger;
  readonly #maxElements: number;
  readonly #desired = new Map<string, DesiredSet>();
  /** set -> members as last written (sorted; UNKNOWN: not known); null = nothing known */
  #written: Map<string, readonly string[]> | null = null;
  readonly #dirty = new Set<string>();
  /** applies run one at a time; a failed one does not block the next */
  readonly #serial = new Mutex();
  /** a kept `ipset -` for member changes, when the runner can keep one */
  readonly #session: ToolSession | undefined;
  lastInput = '';

  constructor(options: IpsetManagerOptions) {
    this.#names = options.names;
    this.#runner = options.runner;
    this.#ipset = options.ipsetCommand ?? 'ipset';
    this.#log = options.logger ?? silentLogger;
    this.#maxElements = options.maxElements ?? 262_144;
    if (options.session !== false && ToolSession.supported(this.#runner)) {
      this.#session = new ToolSession(this.#runner, this.#ipset, IPSET_DIALECT, options.sessionTimeoutMs);
    }
  }

  /** Ends the kept `ipset -`, if any (the kernel keeps the sets). */
  close(): void {
    this.#session?.close();
  }

  /** States the members of a set (created on the next apply if new). */
  setMembers(name: string, version: IpVersion, members: readonly string[]): void {
    this.#desired.set(name, { version, members: sortedMembers(members) });
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
    for (const set of this.#desired.values()) n += set.members.length;
    return n;
  }

  invalidate(): void {
    this.#written = null;
  }

  /** `ipset restore` input that creates every wanted set from nothing. */
  renderFull(): string {
    const lines: string[] = [];
    for (const [name, set] of [...this.#desired].sort(([a], [b]) => a.localeCompare(b))) {
      lines.push(this.#create(name, set.version), ...set.members.map((m) => `add ${name} ${m}`));
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

  async #observe(): Promise<Map<string, readonly string[]>> {
    const result = await this.#runner.run([this.#ipset, 'list', '-n']);
    if (result.code !== 0) {
      throw new ApplyError(`${this.#ipset} list failed: ${toolReason(result.stderr) || `exit ${result.code}`}`, {
        tool: this.#ipset,
        exitCode: result.code,
        stderr: result.stderr,
      });
    }
    const ours = new Map<string, readonly string[]>();
    for (const line of result.stdout.split('\n')) {
      const name = line.trim();
      // Members unknown: every wanted set is rewritten whole (swap).
      if (this.#names.owns(name)) ours.set(name, UNKNOWN);
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
        } else if (before) {
          // A set of ours nothing wants (an earlier run's, found by the
          // listing): destroyed by the next apply(), once no rule uses it.
          this.#dirty.add(name);
        }
        if (removals || !before) cleaned.set(name, undefined);
        continue;
      }
      if (!before) {
        lines.push(this.#create(name, desired.version), ...desired.members.map((m) => `add ${name} ${m}`));
      } else if (before === UNKNOWN) {
        const temp = this.#tempName(name);
        lines.push(
          this.#create(temp, desired.version),
          `flush ${temp}`,
          ...desired.members.map((m) => `add ${temp} ${m}`),
          `swap ${temp} ${name}`,
          `destroy ${temp}`,
        );
      } else {
        memberChanges(name, before, desired.members, lines);
      }
      nextWritten.set(name, desired.members);
      cleaned.set(name, desired);
    }
    if (lines.length > 0) {
      const input = `${lines.join('\n')}\n`;
      this.lastInput = input;
      if (!full && this.#session && lines.every(isMemberChange)) {
        await this.#runMemberChanges(this.#session, lines, input);
      } else {
        await this.#restore(lines, input);
      }
      this.#log.debug({ lines: lines.length }, 'ipset changes applied');
    }
    this.#written = nextWritten;
    // A set changed again while the restore ran stays dirty for the next one.
    for (const [name, wrote] of cleaned) if (this.#desired.get(name) === wrote) this.#dirty.delete(name);
    // The next change is likely a membership change: have the session ready
    // (when there are sets to change: with no member sets, none is started).
    if (this.#desired.size > 0) this.#warmLater();
    return lines.length ? 1 : 0;
  }

  #warmLater(): void {
    this.#session?.warmLater(this.#serial, () => {
      const held = this.#heldMember();
      return held ? [`add ${held.name} ${held.member} -exist`] : [];
    });
  }

  /**
   * Member adds and deletes (all `-exist`, so they fail only for a missing
   * set) through the kept process. It runs each line as it reads it, so
   * after a refusal the state is unknown: the next write lists and rewrites.
   */
  async #runMemberChanges(session: ToolSession, lines: readonly string[], input: string): Promise<void> {
    let result;
    try {
      result = await session.run(lines.join('\n'));
    } catch (err) {
      if (!(err instanceof SessionBrokenError)) throw err;
      this.#log.warn({ err: err.message }, 'ipset session broke; running ipset restore instead');
      return this.#restore(lines, input);
    }
    if (!result.ok) {
      this.#written = null;
      throw new ApplyError(`${this.#ipset} failed, its sets are rewritten at the next apply: ${toolReason(result.stderr)}`, {
        tool: `${this.#ipset} -`,
        exitCode: null,
        stderr: result.stderr,
        input,
      });
    }
  }

  /** A member the kernel holds, as last written (adding it again with -exist changes nothing). */
  #heldMember(): { name: string; member: string } | undefined {
    for (const [name, members] of this.#written ?? []) {
      const member = members[0];
      if (member !== undefined) return { name, member };
    }
    return undefined;
  }

  async #restore(lines: readonly string[], input: string): Promise<void> {
    const result = await this.#runner.run([this.#ipset, 'restore'], { input });
    if (result.code === 0) return;
    this.#written = null;
    const lineNo = /line (\d+)/.exec(result.stderr)?.[1];
    const failedLine = lineNo ? lines[Number(lineNo) - 1] : undefined;
    throw new ApplyError(
      `${this.#ipset} restore failed, previous sets kept: ${toolReason(result.stderr) || `exit ${result.code}`}${failedLine ? ` (at: ${failedLine})` : ''}`,
      { tool: this.#ipset, exitCode: result.code, stderr: result.stderr, input, ...(failedLine ? { failedLine } : {}) },
    );
  }
}
