/**
 * BridgeFilter: keeps the nftables bridge table of L2 anti-spoofing in step
 * with the VIFs the driver wants filtered (see render/bridge.ts: one fixed
 * chain, per-VIF data in sets). One `nft -f` transaction per apply: the whole
 * table when its kernel state is unknown (first apply, after a failure, after
 * `invalidate()`), otherwise only the set elements of the devices set or
 * removed since (an apply costs the size of the change, not of the host).
 *
 * Ordering with iptables: a new VIF's anti-spoofing must be in force before
 * its iptables chains accept traffic, and a removed VIF's must stay until its
 * chains are gone. So the driver calls `applyAdditions()` before the iptables
 * transaction (removed VIFs are kept, "retiring") and `apply()` after it.
 */
import { ApplyError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import {
  BRIDGE_RULES,
  BRIDGE_SET_NAMES,
  bridgeElements,
  countMarks,
  renderBridgeElementUpdate,
  renderBridgeTableDelete,
  renderBridgeTableReplace,
  type BridgeSet,
  type BridgeVif,
} from '../render/bridge.js';
import type { Names } from '../render/names.js';
import type { CommandRunner } from './exec.js';
import { toolReason } from './iptables-manager.js';
import { Mutex } from '../util/mutex.js';

export interface BridgeFilterOptions {
  names: Names;
  runner: CommandRunner;
  nftCommand?: string;
  logger?: Logger;
}

type Vifs = ReadonlyMap<string, BridgeVif>;

const sameVif = (a: BridgeVif, b: BridgeVif): boolean =>
  a.mac === b.mac && a.mark === b.mark && a.ip4.length === b.ip4.length && a.ip6.length === b.ip6.length && a.ip4.every((x, i) => x === b.ip4[i]) && a.ip6.every((x, i) => x === b.ip6[i]);

export class BridgeFilter {
  readonly #names: Names;
  readonly #runner: CommandRunner;
  readonly #nft: string;
  readonly #log: Logger;
  readonly #desired = new Map<string, BridgeVif>();
  /** removed from `desired` but maybe still in the kernel, until the next full `apply()` */
  readonly #retiring = new Map<string, BridgeVif>();
  /** devname -> VIF as last written; null = unknown */
  #written: Map<string, BridgeVif> | null = null;
  /** mark number -> how many written VIFs have it (its `mark-<n>` chain exists while any does) */
  #writtenMarks = new Map<number, number>();
  /** devices set or removed since they were last written: an apply looks at these only */
  readonly #dirty = new Set<string>();
  #tableExists = false;
  /** applies run one at a time; a failed one does not block the next */
  readonly #serial = new Mutex();
  lastInput = '';

  constructor(options: BridgeFilterOptions) {
    this.#names = options.names;
    this.#runner = options.runner;
    this.#nft = options.nftCommand ?? 'nft';
    this.#log = options.logger ?? silentLogger;
  }

  setVif(vif: BridgeVif): void {
    this.#desired.set(vif.devname, vif);
    this.#retiring.delete(vif.devname);
    this.#dirty.add(vif.devname);
  }

  removeVif(devname: string): void {
    const vif = this.#desired.get(devname);
    if (!vif) return;
    this.#desired.delete(devname);
    this.#retiring.set(devname, vif);
    this.#dirty.add(devname);
  }

  /** Gives a filtered VIF another mark number (or none); nothing for a device not filtered. */
  setMark(devname: string, mark: number | undefined): void {
    const vif = this.#desired.get(devname);
    if (!vif || vif.mark === mark) return;
    const { mark: _old, ...rest } = vif;
    this.setVif(mark === undefined ? rest : { ...rest, mark });
  }

  hasVif(devname: string): boolean {
    return this.#desired.has(devname);
  }

  /** Is the VIF's anti-spoofing in the kernel as desired, as far as we know? */
  isInSync(devname: string): boolean {
    const desired = this.#desired.get(devname);
    const written = this.#written?.get(devname);
    return !!desired && !!written && sameVif(desired, written);
  }

  get vifCount(): number {
    return this.#desired.size;
  }

  /** Rules of the table: fixed chains, and one per mark number in use. */
  ruleCount(): number {
    return BRIDGE_RULES.length + 1 + countMarks(this.#desired.values()).size;
  }

  /** Set elements of the table. */
  elementCount(): number {
    let n = 0;
    for (const vif of this.#desired.values()) for (const set of BRIDGE_SET_NAMES) n += bridgeElements(vif)[set].length;
    return n;
  }

  invalidate(): void {
    this.#written = null;
  }

  /** The nft script that writes the whole table as desired ('' when no VIF is filtered). */
  renderFull(): string {
    return this.#desired.size ? renderBridgeTableReplace(this.#names, this.#desired.values()) : '';
  }

  /** Writes new and changed VIFs; VIFs being removed stay in force. */
  applyAdditions(): Promise<number> {
    return this.#serial.run(() => this.#write(false));
  }

  /** Writes everything, removals included. */
  apply(): Promise<number> {
    return this.#serial.run(() => this.#write(true));
  }

  teardown(): Promise<void> {
    this.#desired.clear();
    this.#retiring.clear();
    this.#dirty.clear();
    return this.#serial.run(async () => {
      await this.#run(renderBridgeTableDelete(this.#names));
      this.#written = new Map();
      this.#writtenMarks = new Map();
      this.#tableExists = false;
    });
  }

  /**
   * How many VIFs' anti-spoofing in the kernel differs from what we want
   * (elements missing or extra), read from `nft -j list table`.
   * Every VIF counts when the table itself is gone.
   */
  async countDrift(): Promise<number> {
    // Compared with what we want (which a resync is about to write), so a
    // resync after a failed apply counts what it repairs too.
    const written: ReadonlyMap<string, BridgeVif> = this.#desired;
    if (written.size === 0) return 0;
    const result = await this.#runner.run([this.#nft, '-j', 'list', 'table', 'bridge', this.#names.bridgeTable]);
    // A missing table has lost every VIF; any other failure tells nothing
    // (the resync rewrites the whole table either way).
    if (result.code !== 0) return /No such file or directory/.test(result.stderr) ? written.size : 0;
    let listing: { nftables?: { set?: { name?: string; elem?: unknown[] }; map?: { name?: string; elem?: unknown[] } }[] };
    try {
      listing = JSON.parse(result.stdout) as typeof listing;
    } catch {
      return 0;
    }
    const inKernel = new Map<string, Set<string>>();
    for (const item of listing.nftables ?? []) {
      const container = item.set ?? item.map;
      if (container?.name) inKernel.set(container.name, new Set((container.elem ?? []).map(elementText)));
    }
    const drifted = new Set<string>();
    const expected = new Map<string, Set<string>>(BRIDGE_SET_NAMES.map((s) => [s, new Set<string>()]));
    for (const [devname, vif] of written) {
      const own = bridgeElements(vif);
      for (const set of BRIDGE_SET_NAMES) {
        for (const element of own[set]) {
          expected.get(set)?.add(element);
          if (!inKernel.get(set)?.has(element)) drifted.add(devname);
        }
      }
    }
    for (const set of BRIDGE_SET_NAMES) {
      for (const element of inKernel.get(set) ?? []) {
        if (!expected.get(set)?.has(element)) drifted.add(/^"([^"]+)"/.exec(element)?.[1] ?? element);
      }
    }
    return drifted.size;
  }

  /**
   * The nft statements that bring the table to the desired state (removals
   * included or not), and what to record once they are committed; for a
   * caller that puts them into a transaction of its own (the nftables driver).
   */
  plan(removals: boolean): { script: string; committed: () => void } {
    // What each device should be after this apply: retiring VIFs stay until removals are written.
    const want = (devname: string): BridgeVif | undefined => this.#desired.get(devname) ?? (removals ? undefined : this.#retiring.get(devname));
    const planned = new Map([...this.#dirty].map((devname) => [devname, want(devname)]));
    let script: string;
    let whole: Map<string, BridgeVif> | null = null;
    let markDelta = new Map<number, number>();
    if (this.#written === null || !this.#tableExists) {
      whole = removals ? new Map(this.#desired) : new Map([...this.#retiring, ...this.#desired]);
      script = whole.size === 0 && this.#written !== null ? '' : renderBridgeTableReplace(this.#names, whole.values());
    } else {
      ({ script, markDelta } = this.#plan(this.#written, planned));
    }
    return {
      script,
      committed: () => {
        if (whole && script) {
          this.#written = whole;
          this.#writtenMarks = countMarks(whole.values());
          this.#tableExists = true;
        } else if (!whole && this.#written) {
          for (const [devname, vif] of planned) {
            if (vif) this.#written.set(devname, vif);
            else this.#written.delete(devname);
          }
          for (const [mark, delta] of markDelta) {
            const n = (this.#writtenMarks.get(mark) ?? 0) + delta;
            if (n > 0) this.#writtenMarks.set(mark, n);
            else this.#writtenMarks.delete(mark);
          }
        }
        // Written as desired: clean. Still retiring (removals not written yet), or
        // changed again since the plan: stays dirty.
        for (const [devname, vif] of planned) {
          if (want(devname) !== vif) continue;
          if (removals || this.#desired.get(devname) === vif) this.#dirty.delete(devname);
          if (removals) this.#retiring.delete(devname);
        }
      },
    };
  }

  /** A transaction that included a plan failed: the kernel state is unknown. */
  failed(): void {
    this.#written = null;
  }

  async #write(removals: boolean): Promise<number> {
    const { script, committed } = this.plan(removals);
    if (script) await this.#run(script);
    committed();
    return script ? 1 : 0;
  }

  /**
   * The element changes that take `written` to `planned` (devname -> VIF, or
   * undefined: gone), and how many VIFs each mark number gains or loses.
   */
  #plan(written: Vifs, planned: ReadonlyMap<string, BridgeVif | undefined>): { script: string; markDelta: Map<number, number> } {
    const added = new Map<BridgeSet, string[]>();
    const removed = new Map<BridgeSet, string[]>();
    const markDelta = new Map<number, number>();
    const count = (mark: number | undefined, by: number) => {
      if (mark !== undefined) markDelta.set(mark, (markDelta.get(mark) ?? 0) + by);
    };
    const push = (into: Map<BridgeSet, string[]>, set: BridgeSet, items: string[]) => {
      if (items.length) into.set(set, [...(into.get(set) ?? []), ...items]);
    };
    for (const [devname, vif] of planned) {
      const before = written.get(devname);
      if (!vif && !before) continue;
      if (vif && before && sameVif(before, vif)) continue;
      const now = vif ? bridgeElements(vif) : null;
      const was = before ? bridgeElements(before) : null;
      for (const set of BRIDGE_SET_NAMES) {
        const old = new Set(was?.[set] ?? []);
        const next = new Set(now?.[set] ?? []);
        push(removed, set, [...old].filter((e) => !next.has(e)));
        push(added, set, [...next].filter((e) => !old.has(e)));
      }
      if (vif?.mark !== before?.mark) {
        count(vif?.mark, 1);
        count(before?.mark, -1);
      }
    }
    // A number's chain comes with its first VIF and goes with its last.
    const marks = { added: [] as number[], removed: [] as number[] };
    for (const [mark, delta] of markDelta) {
      const was = this.#writtenMarks.get(mark) ?? 0;
      if (was === 0 && delta > 0) marks.added.push(mark);
      else if (was > 0 && was + delta <= 0) marks.removed.push(mark);
    }
    return { script: renderBridgeElementUpdate(this.#names, added, removed, marks), markDelta };
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

/** An element of `nft -j` output as the text render/bridge.ts writes it. */
function elementText(elem: unknown): string {
  const value = (v: unknown) => (typeof v === 'string' ? v : JSON.stringify(v));
  if (typeof elem === 'string') return `"${elem}"`;
  // a verdict map element: [key, {"jump": {"target": chain}}]
  if (Array.isArray(elem) && elem.length === 2) {
    const [key, verdict] = elem as [unknown, { jump?: { target?: string } }];
    return `${elementText(key)} : jump ${verdict?.jump?.target ?? value(verdict)}`;
  }
  const concat = (elem as { concat?: unknown[] }).concat;
  if (Array.isArray(concat)) return concat.map((v, i) => (i === 0 ? `"${value(v)}"` : value(v))).join(' . ');
  return value(elem);
}
