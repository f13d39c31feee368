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
/**
 * A chain's content hash: two 32-bit FNV-1a lanes (different offset bases)
 * over the chain name and its rules, as 13 base-36 characters. Not
 * cryptographic: it identifies what virtfw wrote, it does not defend against
 * a forger (who would be root on the host anyway). Hashing once per chain
 * instead of once per rule keeps it cheap for 100,000-rule hosts.
 */
export function chainHash(chain: string, rules: readonly string[]): string {
  let a = 0x811c9dc5;
  let b = 0x01000193 ^ 0x9e3779b9;
  const feed = (text: string) => {
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      a = Math.imul(a ^ c, 0x01000193);
      b = Math.imul(b ^ c, 0x01000193) ^ (b >>> 13);
    }
    a = Math.imul(a ^ 10, 0x01000193);
    b = Math.imul(b ^ 10, 0x01000193) ^ (b >>> 13);
  };
  feed(chain);
  for (const rule of rules) feed(rule);
  const hi = (a >>> 0).toString(36).padStart(7, '0');
  const lo = (b >>> 0).toString(36).padStart(7, '0');
  return `${hi}${lo}`.slice(0, 13);
}

/**
 * Identity of each rule of a chain, carried in its comment: the chain's
 * content hash and the rule's position. Any change anywhere in the chain
 * changes every identity, so comparing the identities read back from the
 * kernel with the wanted ones tells whether the chain is exactly as written
 * (Calico's chained rule hashes, at one hash per chain).
 */
export function ruleHashes(chain: string, rules: readonly string[]): string[] {
  const h = chainHash(chain, rules);
  return rules.map((_, i) => `${h}.${i}`);
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
