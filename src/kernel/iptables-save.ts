/**
 * Reads the parts of `iptables-save -t filter` output that virtfw owns: its
 * chains (by prefix) with the identity hash each rule carries in its comment,
 * and how many of its hook rules each built-in chain holds. Foreign rules are
 * never interpreted, only skipped.
 */
import type { Names } from '../render/names.js';

export interface ObservedTable {
  /** our chain -> rule hashes in order (null: a rule without our comment) */
  chains: Map<string, (string | null)[]>;
  /** built-in chain -> number of our hook rules in it (by target) */
  hooks: Map<string, Map<string, number>>;
  /** every chain name in the table, ours or not */
  allChains: Set<string>;
}

/** Splits a rule line into tokens, honouring the double quotes iptables-save writes. */
export function tokenize(line: string): string[] {
  const tokens: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  for (let m = re.exec(line); m; m = re.exec(line)) tokens.push(m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : (m[2] ?? ''));
  return tokens;
}

export function jumpTarget(tokens: readonly string[]): string | null {
  for (let i = tokens.length - 2; i >= 0; i--) {
    if (tokens[i] === '-j' || tokens[i] === '-g') return tokens[i + 1] ?? null;
  }
  return null;
}

export function commentOf(tokens: readonly string[]): string | null {
  const i = tokens.indexOf('--comment');
  return i === -1 ? null : (tokens[i + 1] ?? null);
}

export function parseIptablesSave(text: string, names: Names, table = 'filter'): ObservedTable {
  const observed: ObservedTable = { chains: new Map(), hooks: new Map(), allChains: new Set() };
  let inTable = false;
  const tag = names.commentTag;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('*')) {
      inTable = line === `*${table}`;
      continue;
    }
    if (!inTable) continue;
    if (line === 'COMMIT') {
      inTable = false;
      continue;
    }
    if (line.startsWith(':')) {
      const name = line.slice(1).split(/\s+/)[0] ?? '';
      observed.allChains.add(name);
      if (names.owns(name)) observed.chains.set(name, []);
      continue;
    }
    if (!line.startsWith('-A ')) continue;
    const tokens = tokenize(line);
    const chain = tokens[1] ?? '';
    const comment = commentOf(tokens);
    if (names.owns(chain)) {
      const list = observed.chains.get(chain) ?? [];
      list.push(comment?.startsWith(tag) ? comment.slice(tag.length) : null);
      observed.chains.set(chain, list);
      continue;
    }
    const target = jumpTarget(tokens);
    if (target && names.owns(target) && comment === `${tag}hook`) {
      const perChain = observed.hooks.get(chain) ?? new Map<string, number>();
      perChain.set(target, (perChain.get(target) ?? 0) + 1);
      observed.hooks.set(chain, perChain);
    }
  }
  return observed;
}
