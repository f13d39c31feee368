/**
 * NftManager: keeps virtfw's nftables `inet` table (chains, sets, verdict
 * maps) in step with the driver's desired state, and writes it together with
 * the bridge table's changes in ONE `nft -f` transaction: IPv4, IPv6, member
 * sets, dispatch maps and L2 anti-spoofing change all at once or not at all.
 *
 * Incremental like the IptablesManager: every rule carries its identity
 * (`comment "<chain hash>.<index>"`); the manager remembers what it wrote and
 * writes only what changed: a changed chain is flushed and refilled, a member
 * change is set elements, a new instance is its chains plus map elements.
 * When its picture of the kernel may be stale (first apply, failure,
 * `invalidate()`), it replaces the whole table in one transaction.
 */
import { ApplyError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { chainHash } from '../render/restore.js';
import type { CommandRunner } from './exec.js';
import { toolReason } from './iptables-manager.js';
import { Mutex } from '../util/mutex.js';
import { NftSession, SESSION_MAX_LINE, SessionBrokenError } from './nft-session.js';

export interface NftManagerOptions {
  /** the inet table's name */
  table: string;
  runner: CommandRunner;
  nftCommand?: string;
  logger?: Logger;
  /** map name -> nft type (`ipv4_addr : verdict`), declared with the table */
  maps: Readonly<Record<string, string>>;
  /** element-only changes through a kept `nft -i` (default: when the runner can start one) */
  session?: boolean;
  /** how long the kept `nft -i` may take to answer before `nft -f` is used instead */
  sessionTimeoutMs?: number;
}

interface Chain {
  rules: readonly string[];
  base: string | undefined;
  /** content hash, computed when written */
  hash: string | null;
}

interface NamedSet {
  type: string;
  elements: ReadonlySet<string>;
}

/**
 * What the kernel holds, as last written. Maps are not copied here: each map
 * keeps, for the keys changed since the last transaction, the value the
 * kernel holds (`#mapUndo`), so a change costs its own size, not the map's.
 */
interface Written {
  chains: Map<string, string>;
  sets: Map<string, ReadonlySet<string>>;
}

/** What is dirty, taken for one transaction: chain and set names, and per map the changed keys' values in the kernel. */
interface Dirty {
  chains: string[];
  sets: string[];
  maps: Map<string, Map<string, string | undefined>>;
}

/** What the kernel holds of the dirty chains (hash) and sets (elements) once a transaction commits; undefined: gone. */
interface Outcome {
  chains: Map<string, string | undefined>;
  sets: Map<string, ReadonlySet<string> | undefined>;
}

export interface NftApplyStats {
  transactions: number;
  chainsWritten: number;
  chainsDeleted: number;
  elementChanges: number;
  inputLines: number;
}

/** Extra statements for the same transaction, and what to do once it commits. */
export interface ExtraPlan {
  script: string;
  committed: () => void;
  failed: () => void;
}

export class NftManager {
  readonly table: string;
  readonly #runner: CommandRunner;
  readonly #nft: string;
  readonly #log: Logger;
  readonly #mapTypes: Readonly<Record<string, string>>;
  readonly #chains = new Map<string, Chain>();
  readonly #sets = new Map<string, NamedSet>();
  readonly #maps = new Map<string, Map<string, string>>();
  #written: Written | null = null;
  readonly #dirtyChains = new Set<string>();
  readonly #dirtySets = new Set<string>();
  /** map -> key -> the key's value in the kernel before its first change since the last transaction (undefined: absent) */
  readonly #mapUndo = new Map<string, Map<string, string | undefined>>();
  /** applies run one at a time; a failed one does not block the next */
  readonly #serial = new Mutex();
  /** a kept `nft -i` for element-only transactions, when the runner can keep one */
  readonly #session: NftSession | undefined;
  lastInput = '';

  constructor(options: NftManagerOptions) {
    this.table = options.table;
    this.#runner = options.runner;
    this.#nft = options.nftCommand ?? 'nft';
    this.#log = options.logger ?? silentLogger;
    this.#mapTypes = options.maps;
    for (const name of Object.keys(options.maps)) this.#maps.set(name, new Map());
    if (options.session !== false && NftSession.supported(this.#runner)) this.#session = new NftSession(this.#runner, this.#nft, options.sessionTimeoutMs);
  }

  /** Ends the kept `nft -i`, if any (the kernel keeps its rules). */
  close(): void {
    this.#session?.close();
  }

  // ------------------------------------------------------------ desired state

  setChain(name: string, rules: readonly string[], base?: string): void {
    const current = this.#chains.get(name);
    if (current && current.base === base && current.rules.length === rules.length && current.rules.every((r, i) => r === rules[i])) return;
    this.#chains.set(name, { rules: [...rules], base, hash: null });
    this.#dirtyChains.add(name);
  }

  removeChain(name: string): void {
    if (this.#chains.delete(name)) this.#dirtyChains.add(name);
  }

  hasChain(name: string): boolean {
    return this.#chains.has(name);
  }

  setSet(name: string, type: string, elements: readonly string[]): void {
    this.#sets.set(name, { type, elements: new Set(elements) });
    this.#dirtySets.add(name);
  }

  removeSet(name: string): void {
    if (this.#sets.delete(name)) this.#dirtySets.add(name);
  }

  setMapElement(map: string, key: string, verdict: string): void {
    const m = this.#map(map);
    const current = m.get(key);
    if (current === verdict) return;
    this.#remember(map, key, current);
    m.set(key, verdict);
  }

  removeMapElement(map: string, key: string): void {
    const m = this.#map(map);
    if (!m.has(key)) return;
    this.#remember(map, key, m.get(key));
    m.delete(key);
  }

  /** Notes the value a map element has in the kernel, before its first change since the last transaction. */
  #remember(map: string, key: string, value: string | undefined): void {
    let undo = this.#mapUndo.get(map);
    if (!undo) this.#mapUndo.set(map, (undo = new Map()));
    if (!undo.has(key)) undo.set(key, value);
  }

  #map(name: string): Map<string, string> {
    const m = this.#maps.get(name);
    if (!m) throw new Error(`unknown map ${name}`);
    return m;
  }

  /** Is the chain in the kernel with exactly the desired content, as last written? */
  isInSync(name: string): boolean {
    const chain = this.#chains.get(name);
    if (!chain || !this.#written || this.#dirtyChains.has(name)) return false;
    return this.#written.chains.get(name) === this.#hashOf(name, chain);
  }

  ruleCount(): number {
    let n = 0;
    for (const chain of this.#chains.values()) n += chain.rules.length;
    return n;
  }

  elementCount(): number {
    let n = 0;
    for (const set of this.#sets.values()) n += set.elements.size;
    for (const map of this.#maps.values()) n += map.size;
    return n;
  }

  invalidate(): void {
    this.#written = null;
  }

  /** The script that creates the whole table as desired (what a first apply writes). */
  renderFull(): string {
    return this.#fullScript().join('\n') + '\n';
  }

  // ------------------------------------------------------------------ apply

  /** One transaction: this table's changes with `extra` (the bridge table's). */
  apply(extra?: () => ExtraPlan): Promise<NftApplyStats> {
    return this.#serial.run(() => this.#apply(extra));
  }

  /** Removes the table (and runs `extra`, e.g. the bridge table's removal) in one transaction. */
  teardown(extraScript = ''): Promise<void> {
    this.#chains.clear();
    this.#sets.clear();
    for (const m of this.#maps.values()) m.clear();
    // Whatever happens to the removal, the next apply writes the table whole.
    this.#written = null;
    this.#mapUndo.clear();
    return this.#serial.run(async () => {
      await this.#run(`add table inet ${this.table}\ndelete table inet ${this.table}\n${extraScript}`);
      this.#written = null;
    });
  }

  #hashOf(name: string, chain: Chain): string {
    chain.hash ??= chainHash(`${name}\n${chain.base ?? ''}`, chain.rules);
    return chain.hash;
  }

  #ruleLines(name: string, chain: Chain): string[] {
    const h = this.#hashOf(name, chain);
    return chain.rules.map((rule, i) => `add rule inet ${this.table} ${name} ${rule} comment "${h}.${i}"`);
  }

  #chainDecl(name: string, chain: Chain): string {
    return chain.base ? `add chain inet ${this.table} ${name} { ${chain.base} }` : `add chain inet ${this.table} ${name}`;
  }

  #elementLines(verb: 'add' | 'delete', container: string, items: readonly string[]): string[] {
    const lines: string[] = [];
    for (let i = 0; i < items.length; i += 500) {
      lines.push(`${verb} element inet ${this.table} ${container} { ${items.slice(i, i + 500).join(', ')} }`);
    }
    return lines;
  }

  #fullScript(): string[] {
    const t = this.table;
    const lines = [`add table inet ${t}`, `delete table inet ${t}`, `add table inet ${t}`];
    for (const [name, set] of this.#sets) lines.push(`add set inet ${t} ${name} { type ${set.type}; }`);
    for (const name of this.#maps.keys()) lines.push(`add map inet ${t} ${name} { type ${this.#mapTypes[name]}; }`);
    const names = [...this.#chains.keys()].sort();
    for (const name of names) lines.push(this.#chainDecl(name, this.#chains.get(name) as Chain));
    for (const [name, set] of this.#sets) lines.push(...this.#elementLines('add', name, [...set.elements]));
    for (const name of names) lines.push(...this.#ruleLines(name, this.#chains.get(name) as Chain));
    for (const [name, map] of this.#maps) lines.push(...this.#elementLines('add', name, [...map].map(([k, v]) => `${k} : ${v}`)));
    return lines;
  }

  /**
   * Takes what is dirty for the transaction about to be built: changes made
   * while it runs stay dirty for the next one.
   */
  #takeDirty(): Dirty {
    const dirty: Dirty = { chains: [...this.#dirtyChains].sort(), sets: [...this.#dirtySets].sort(), maps: new Map(this.#mapUndo) };
    this.#dirtyChains.clear();
    this.#dirtySets.clear();
    this.#mapUndo.clear();
    return dirty;
  }

  /** What the kernel will hold of the dirty chains and sets once the transaction commits (undefined: gone). */
  #outcome(dirty: Dirty): Outcome {
    const chains = new Map<string, string | undefined>();
    for (const name of dirty.chains) {
      const chain = this.#chains.get(name);
      chains.set(name, chain && this.#hashOf(name, chain));
    }
    const sets = new Map<string, ReadonlySet<string> | undefined>();
    for (const name of dirty.sets) sets.set(name, this.#sets.get(name)?.elements);
    return { chains, sets };
  }

  /** `written` moved on by a committed transaction's outcome: the cost of the change, not of the table. */
  static #advance(written: Written, outcome: Outcome): Written {
    for (const [name, hash] of outcome.chains) {
      if (hash === undefined) written.chains.delete(name);
      else written.chains.set(name, hash);
    }
    for (const [name, elements] of outcome.sets) {
      if (elements === undefined) written.sets.delete(name);
      else written.sets.set(name, elements);
    }
    return written;
  }

  #snapshot(): Written {
    const chains = new Map<string, string>();
    for (const [name, chain] of this.#chains) chains.set(name, this.#hashOf(name, chain));
    const sets = new Map<string, ReadonlySet<string>>();
    for (const [name, set] of this.#sets) sets.set(name, set.elements);
    return { chains, sets };
  }

  async #apply(extra?: () => ExtraPlan): Promise<NftApplyStats> {
    const stats: NftApplyStats = { transactions: 0, chainsWritten: 0, chainsDeleted: 0, elementChanges: 0, inputLines: 0 };
    const written = this.#written;
    const dirty = this.#takeDirty();
    let lines: string[];
    let commit: () => Written;
    if (!written) {
      lines = this.#fullScript();
      stats.chainsWritten = this.#chains.size;
      const snapshot = this.#snapshot();
      commit = () => snapshot;
    } else {
      lines = this.#incremental(written, dirty, stats);
      const outcome = this.#outcome(dirty);
      commit = () => NftManager.#advance(written, outcome);
    }
    const plan = extra?.();
    const script = lines.join('\n') + (lines.length ? '\n' : '') + (plan?.script ?? '');
    if (!script.trim()) {
      plan?.committed();
      return stats;
    }
    try {
      const elementsOnly = written !== null && !plan?.script && lines.every((l) => l.startsWith('add element ') || l.startsWith('delete element '));
      await (elementsOnly ? this.#runElements(lines, script) : this.#run(script));
    } catch (err) {
      this.#written = null;
      plan?.failed();
      throw err;
    }
    this.#written = commit();
    plan?.committed();
    this.#warmSession();
    stats.transactions = 1;
    stats.inputLines = script.split('\n').length - 1;
    this.#log.debug({ table: this.table, ...stats }, 'nft transaction applied');
    return stats;
  }

  /**
   * The next change is likely element changes: have the session ready, and
   * through its first two commands (nft's first ruleset cache fill; the first
   * element change after it), which cost a few ms more than the ones after
   * them: no-op transactions (the table exists; an element a set already
   * holds is added again), queued like an apply, once the apply has returned.
   */
  #warmSession(): void {
    this.#session?.warmLater(this.#serial, () => {
      const noop = this.#heldElement();
      return [`add table inet ${this.table}`, ...(noop ? [`add element inet ${this.table} ${noop.set} { ${noop.element} }`] : [])];
    });
  }

  /** An element the kernel holds, as last written (adding it again changes nothing). */
  #heldElement(): { set: string; element: string } | undefined {
    for (const [set, elements] of this.#written?.sets ?? []) {
      for (const element of elements) return { set, element };
    }
    return undefined;
  }

  /** The statements that turn `written` into the desired state, in an order the kernel accepts. */
  #incremental(written: Written, dirty: Dirty, stats: NftApplyStats): string[] {
    const t = this.table;
    const newObjects: string[] = [];
    const elementDeletes: string[] = [];
    const chainWrites: string[] = [];
    const elementAdds: string[] = [];
    const removals: string[] = [];
    for (const name of dirty.sets) {
      const set = this.#sets.get(name);
      const before = written.sets.get(name);
      if (!set) {
        if (before) removals.push(`delete set inet ${t} ${name}`);
        continue;
      }
      if (!before) {
        newObjects.push(`add set inet ${t} ${name} { type ${set.type}; }`);
        elementAdds.push(...this.#elementLines('add', name, [...set.elements]));
        stats.elementChanges += set.elements.size;
        continue;
      }
      const gone = [...before].filter((e) => !set.elements.has(e));
      const added = [...set.elements].filter((e) => !before.has(e));
      elementDeletes.push(...this.#elementLines('delete', name, gone));
      elementAdds.push(...this.#elementLines('add', name, added));
      stats.elementChanges += gone.length + added.length;
    }
    for (const name of dirty.chains) {
      const chain = this.#chains.get(name);
      const before = written.chains.get(name);
      if (!chain) {
        if (before !== undefined) {
          chainWrites.push(`flush chain inet ${t} ${name}`);
          removals.unshift(`delete chain inet ${t} ${name}`);
          stats.chainsDeleted += 1;
        }
        continue;
      }
      if (before === this.#hashOf(name, chain)) continue;
      if (before === undefined) newObjects.push(this.#chainDecl(name, chain));
      else chainWrites.push(`flush chain inet ${t} ${name}`);
      chainWrites.push(...this.#ruleLines(name, chain));
      stats.chainsWritten += 1;
    }
    for (const [name, undo] of [...dirty.maps].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
      const map = this.#maps.get(name) as Map<string, string>;
      const gone: string[] = [];
      const added: string[] = [];
      for (const [key, before] of undo) {
        const now = map.get(key);
        if (now === before) continue;
        // A changed verdict is deleted and added again (nft refuses to add over an element).
        if (before !== undefined) gone.push(key);
        if (now !== undefined) added.push(`${key} : ${now}`);
      }
      elementDeletes.push(...this.#elementLines('delete', name, gone));
      elementAdds.push(...this.#elementLines('add', name, added));
      stats.elementChanges += gone.length + added.length;
    }
    // New objects exist before anything refers to them; map elements that
    // point at chains about to go are deleted before the chains are.
    return [...newObjects, ...elementDeletes, ...chainWrites, ...elementAdds, ...removals];
  }

  /** Element changes, one line through the kept session; `nft -f` when there is none or it broke. */
  async #runElements(lines: readonly string[], script: string): Promise<void> {
    const line = lines.join('; ');
    if (!this.#session || line.length > SESSION_MAX_LINE) return this.#run(script);
    this.lastInput = script;
    let result;
    try {
      result = await this.#session.run(line);
    } catch (err) {
      if (!(err instanceof SessionBrokenError)) throw err;
      this.#log.warn({ err: err.message }, 'nft session broke; using nft -f');
      // An add that already happened is harmless to repeat; a delete is not,
      // and fails the apply, after which the next one replaces the table.
      return this.#run(script);
    }
    if (!result.ok) this.#fail(`${this.#nft} -i`, null, result.stderr, script);
  }

  #fail(tool: string, exitCode: number | null, stderr: string, input: string): never {
    const reason = toolReason(stderr) || `exit ${exitCode}`;
    throw new ApplyError(`${tool} failed, previous ruleset kept (the whole transaction was refused): ${reason}`, {
      tool,
      exitCode,
      stderr,
      input,
    });
  }

  async #run(script: string): Promise<void> {
    this.lastInput = script;
    const result = await this.#runner.run([this.#nft, '-f', '-'], { input: script });
    if (result.code !== 0) this.#fail(this.#nft, result.code, result.stderr, script);
  }

  /**
   * How many of the chains, sets and maps we want differ in the kernel
   * (missing, flushed, edited, elements gone or added), read from
   * `nft -j list table inet <table>`: what a resync is about to repair.
   * Everything counts when the table is gone; 0 when the listing cannot be read.
   */
  async countDrift(): Promise<number> {
    const wanted = this.#chains.size + this.#sets.size + this.#maps.size;
    if (this.#chains.size === 0) return 0;
    const result = await this.#runner.run([this.#nft, '-j', 'list', 'table', 'inet', this.table]);
    if (result.code !== 0) return /No such file or directory/.test(result.stderr) ? wanted : 0;
    let listing: { nftables?: Record<string, Record<string, unknown>>[] };
    try {
      listing = JSON.parse(result.stdout) as typeof listing;
    } catch {
      return 0;
    }
    const comments = new Map<string, string[]>();
    const elements = new Map<string, number>();
    for (const item of listing.nftables ?? []) {
      if (item.chain && typeof item.chain.name === 'string') comments.set(item.chain.name, comments.get(item.chain.name) ?? []);
      if (item.rule && typeof item.rule.chain === 'string') {
        const list = comments.get(item.rule.chain) ?? [];
        list.push(typeof item.rule.comment === 'string' ? item.rule.comment : '');
        comments.set(item.rule.chain, list);
      }
      for (const kind of ['set', 'map'] as const) {
        const obj = item[kind];
        if (obj && typeof obj.name === 'string') elements.set(`${kind}:${obj.name}`, Array.isArray(obj.elem) ? obj.elem.length : 0);
      }
    }
    let drift = 0;
    for (const [name, chain] of this.#chains) {
      const hash = this.#hashOf(name, chain);
      const seen = comments.get(name);
      if (!seen || seen.length !== chain.rules.length || seen.some((c, i) => c !== `${hash}.${i}`)) drift += 1;
    }
    for (const [name, set] of this.#sets) if ((elements.get(`set:${name}`) ?? -1) !== set.elements.size) drift += 1;
    for (const [name, map] of this.#maps) if ((elements.get(`map:${name}`) ?? -1) !== map.size) drift += 1;
    return drift;
  }
}
