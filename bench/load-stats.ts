/** Small numeric helpers for the load benchmark: percentiles, a seeded PRNG, formatting. */

export interface Distribution {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

/** Nearest-rank percentiles of `values` (unsorted is fine; the array is sorted in place). */
export function distribution(values: number[]): Distribution | null {
  if (values.length === 0) return null;
  values.sort((a, b) => a - b);
  const rank = (p: number) => values[Math.min(values.length - 1, Math.max(0, Math.ceil((p / 100) * values.length) - 1))] ?? 0;
  let sum = 0;
  for (const v of values) sum += v;
  return {
    n: values.length,
    p50: round(rank(50)),
    p90: round(rank(90)),
    p99: round(rank(99)),
    max: round(values[values.length - 1] ?? 0),
    mean: round(sum / values.length),
  };
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)] ?? 0;
}

export function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** mulberry32: a small deterministic PRNG, so a run's workload is reproducible from its seed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function pick<T>(random: () => number, items: readonly T[]): T | undefined {
  return items.length === 0 ? undefined : items[Math.floor(random() * items.length)];
}

/** `2025-06-01T12:00:00.123456Z` (the store's timestamps, microseconds) as epoch milliseconds with a fraction. */
export function parseMicros(at: string): number {
  const ms = Date.parse(`${at.slice(0, 23)}Z`);
  const micros = Number(at.slice(23, 26));
  return ms + (Number.isFinite(micros) ? micros / 1000 : 0);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A markdown table. */
export function mdTable(header: string[], rows: (string | number)[][]): string {
  const line = (cells: (string | number)[]) => `| ${cells.map(String).join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

/** A fixed-width text table for the terminal. */
export function textTable(header: string[], rows: (string | number)[][]): string {
  const all = [header, ...rows].map((r) => r.map(String));
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  const fmt = (r: string[]) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [fmt(all[0] ?? []), fmt(widths.map((w) => '-'.repeat(w))), ...all.slice(1).map(fmt)].join('\n');
}

export function fmtDist(d: Distribution | null, unit = 'ms'): string {
  return d ? `p50 ${d.p50} / p90 ${d.p90} / p99 ${d.p99} / max ${d.max} ${unit} (n=${d.n})` : 'n/a';
}
