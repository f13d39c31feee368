/**
 * Builds iptables-restore input for `--noflush` mode, where only the chains
 * named in the input change:
 *
 * - `:CHAIN - [0:0]` creates a chain, or empties it if it exists;
 * - `-A CHAIN ...` appends; `-I`/`-D` insert into or delete from a chain;
 * - `-X CHAIN` deletes a chain, which must be empty and unreferenced by then.
 *
 * The kernel commits the whole table or nothing, so a reader never sees a
 * half-written chain. The builder keeps declarations before rules and
 * deletions last, whatever order the caller adds them in.
 */
import { createHash } from 'node:crypto';

/** Length of a rule's identity hash: 12 base64url characters, 72 bits. */
export const RULE_HASH_LENGTH = 12;

/**
 * Identity hashes of a chain's rules, chained from the chain name through
 * every rule, so a rule's hash also fixes its position (as Calico's are).
 */
export function ruleHashes(chain: string, rules: readonly string[]): string[] {
  const out: string[] = [];
  let previous = chain;
  for (const rule of rules) {
    previous = createHash('sha256').update(previous).update('\0').update(rule).digest('base64url').slice(0, RULE_HASH_LENGTH);
    out.push(previous);
  }
  return out;
}

export class RestoreBuilder {
  readonly #declarations: string[] = [];
  readonly #rules: string[] = [];
  readonly #deletions: string[] = [];

  constructor(
    private readonly table: string,
    private readonly commentTag: string,
  ) {}

  /** Creates or empties a chain. */
  declare(chain: string): this {
    this.#declarations.push(`:${chain} - [0:0]`);
    return this;
  }

  /** Appends a rule carrying its identity hash as a comment. */
  append(chain: string, rule: string, hash: string): this {
    this.#rules.push(`-A ${chain} -m comment --comment "${this.commentTag}${hash}" ${rule}`);
    return this;
  }

  /** Any other rule command (`-I FORWARD 1 ...`, `-D FORWARD ...`), in order after the appends. */
  command(line: string): this {
    this.#rules.push(line);
    return this;
  }

  delete(chain: string): this {
    this.#deletions.push(`-X ${chain}`);
    return this;
  }

  get empty(): boolean {
    return this.#declarations.length + this.#rules.length + this.#deletions.length === 0;
  }

  /** Number of lines that change the kernel (declarations, rules, deletions). */
  get size(): number {
    return this.#declarations.length + this.#rules.length + this.#deletions.length;
  }

  toString(): string {
    if (this.empty) return '';
    return [`*${this.table}`, ...this.#declarations, ...this.#rules, ...this.#deletions, 'COMMIT', ''].join('\n');
  }
}
