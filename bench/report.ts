/**
 * bench:compare report: the result document's types, the metrics pulled
 * from each side, the scale targets (iptables driver), the nftables driver's
 * targets, and the markdown tables.
 */

export type Status = 'ok' | 'failed' | 'skipped';

/** One column of a size's table, normalised so the report treats every side alike. */
export interface Metrics {
  prepare_all_s?: number;
  /** virtfw only: the tools alone loading virtfw's rendered input into an empty namespace */
  tools_only_s?: number;
  /** seconds inside iptables-restore/ip6tables-restore (+ nft and ipset restore for virtfw) during prepare_all */
  restore_subprocess_s?: number;
  rules_v4?: number;
  rules_v6?: number;
  bridge_rules?: number;
  /** virtfw only: elements of the bridge table's named sets and maps (not rules) */
  bridge_set_elements?: number;
  /** virtfw nftables: rules in `table inet virtfw` (0 elsewhere) */
  inet_rules?: number;
  /** virtfw nftables: rules in its instance chains (vm-in-*, vm-out-*, vm-spoof-*) */
  inet_instance_rules?: number;
  /** virtfw nftables: elements of its named sets (remote groups' member addresses) */
  inet_set_elements?: number;
  /** virtfw nftables: elements of its dispatch verdict maps */
  inet_map_elements?: number;
  ipset_members?: number;
  member_add_s?: number;
  /** virtfw: every member_add event's wall time (member_add_s is their median) */
  member_add_samples_s?: number[];
  rule_add_s?: number;
  /** removal of every port in one batch, without the conntrack -D cleanup */
  remove_all_s?: number;
  conntrack_cleanup_s?: number;
  peak_rss_mb?: number;
}

export interface Side {
  status: Status;
  /** why it failed or was skipped */
  reason?: string;
  metrics: Metrics;
  /** seconds the whole run (process) took, outside any timed phase */
  elapsed_s?: number;
  /** the machine's 1-minute load average when the run started (other work on the machine skews times) */
  load_at_start?: number;
  /** the side's own raw output */
  raw?: unknown;
}

export interface SizeResult {
  P: number;
  workload: { file: string; identical_to_neutron: boolean | null; allowed_address_pairs: number };
  neutron_on: Side;
  neutron_off: Side;
  virtfw_ipset: Side;
  virtfw_expand: Side;
  /** virtfw's NftablesFirewallDriver */
  virtfw_nftables: Side;
}

export interface TargetRow {
  target: string;
  requirement: string;
  ipset: { value: string; verdict: string };
  expand: { value: string; verdict: string };
}

/** One target of virtfw's nftables driver. */
export interface NftTargetRow {
  target: string;
  requirement: string;
  value: string;
  verdict: string;
}

/** Per size: how the nftables driver's rules and elements grow with P. */
export interface NftGrowth {
  P: number;
  inet_rules?: number;
  inet_instance_rules?: number;
  /** inet rules outside the instance chains: base chains and group chains */
  inet_other_rules?: number;
  per_instance?: number;
  inet_set_elements?: number;
  inet_map_elements?: number;
  bridge_rules?: number;
  bridge_set_elements?: number;
}

export interface NftTargets {
  at_P: number;
  official: boolean;
  rows: NftTargetRow[];
  growth: NftGrowth[];
}

export interface CompareDocument {
  format: 'virtfw-bench-compare/2';
  started: string;
  finished: string;
  duration_s: number;
  machine: Record<string, string | number>;
  config: Record<string, unknown>;
  sizes: SizeResult[];
  targets: { at_P: number; official: boolean; rows: TargetRow[] };
  targets_nftables: NftTargets;
  notes: string[];
}

// ------------------------------------------------------------------ numbers

export const MB = 1024; // KB per MB (2^20 bytes), as the project's README reports RSS

function fmtTime(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return '';
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  if (v >= 0.1) return v.toFixed(3);
  if (v >= 0.001) return v.toFixed(4);
  return v.toExponential(1);
}

function fmtRatio(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return '';
  if (v >= 100) return `${v.toFixed(0)}×`;
  if (v >= 10) return `${v.toFixed(1)}×`;
  return `${v.toFixed(2)}×`;
}

const fmtCount = (v: number | undefined) => (v === undefined ? '' : String(v));
const fmtMb = (v: number | undefined) => (v === undefined ? '' : v.toFixed(1));

/** Every rule in the kernel: iptables v4 + v6, the nft bridge table, the nft inet table. */
export function totalRules(m: Metrics): number | undefined {
  if (m.rules_v4 === undefined || m.rules_v6 === undefined) return undefined;
  return m.rules_v4 + m.rules_v6 + (m.bridge_rules ?? 0) + (m.inet_rules ?? 0);
}

const ratio = (a: number | undefined, b: number | undefined) =>
  a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0 ? undefined : a / b;

// ------------------------------------------------------------------- tables

type Kind = 'time' | 'count' | 'mem' | 'plain';

interface Row {
  label: string;
  kind: Kind;
  get: (m: Metrics, P: number) => number | undefined;
  /** only virtfw has it */
  virtfwOnly?: boolean;
  /** only virtfw's nftables driver has it (the inet table) */
  nftOnly?: boolean;
}

const perInstance = (m: Metrics, P: number) => (m.inet_instance_rules === undefined || !m.inet_rules || P <= 0 ? undefined : m.inet_instance_rules / P);

const ROWS: Row[] = [
  { label: 'prepare_all_s (program all P, one deferred apply)', kind: 'time', get: (m) => m.prepare_all_s },
  { label: 'tools_only_s (the tools alone, virtfw input)', kind: 'time', get: (m) => m.tools_only_s, virtfwOnly: true },
  { label: 'prepare_all_s / tools_only_s', kind: 'plain', get: (m) => ratio(m.prepare_all_s, m.tools_only_s), virtfwOnly: true },
  { label: 'restore_subprocess_s (inside restore tools / nft -f, prepare_all)', kind: 'time', get: (m) => m.restore_subprocess_s },
  { label: 'rules_v4 (iptables-save -A, all tables)', kind: 'count', get: (m) => m.rules_v4 },
  { label: 'rules_v6 (ip6tables-save -A, all tables)', kind: 'count', get: (m) => m.rules_v6 },
  { label: 'bridge_rules (nft table bridge virtfw)', kind: 'count', get: (m) => m.bridge_rules },
  { label: 'inet_rules (nft table inet virtfw, all chains)', kind: 'count', get: (m) => m.inet_rules, nftOnly: true },
  { label: 'inet_instance_rules (its instance chains)', kind: 'count', get: (m) => m.inet_instance_rules, nftOnly: true },
  { label: 'inet rules per instance (instance chains ÷ P)', kind: 'plain', get: perInstance, nftOnly: true },
  { label: 'kernel rules total (v4 + v6 + bridge + inet)', kind: 'count', get: (m) => totalRules(m) },
  { label: 'bridge_set_elements (nft named set/map elements)', kind: 'count', get: (m) => m.bridge_set_elements },
  { label: 'inet_set_elements (nft member sets)', kind: 'count', get: (m) => m.inet_set_elements, nftOnly: true },
  { label: 'inet_map_elements (nft dispatch verdict maps)', kind: 'count', get: (m) => m.inet_map_elements, nftOnly: true },
  { label: 'ipset_members (ipset save, add lines)', kind: 'count', get: (m) => m.ipset_members },
  { label: 'member_add_s (median of events)', kind: 'time', get: (m) => m.member_add_s },
  { label: 'rule_add_s (median of events)', kind: 'time', get: (m) => m.rule_add_s },
  { label: 'remove_all_s (excl. conntrack -D)', kind: 'time', get: (m) => m.remove_all_s },
  { label: 'conntrack_cleanup_s (conntrack -D of removed ports)', kind: 'time', get: (m) => m.conntrack_cleanup_s },
  { label: 'peak_rss_mb (programming process)', kind: 'mem', get: (m) => m.peak_rss_mb },
];

type Column = 'neutron' | 'iptables' | 'nftables';

function cell(side: Side, row: Row, P: number, column: Column): string {
  if (row.virtfwOnly && column === 'neutron') return '–';
  if (row.nftOnly && column !== 'nftables') return '–';
  const v = row.get(side.metrics, P);
  if (v === undefined) return side.status === 'ok' ? '' : side.status === 'skipped' ? 'skipped' : 'failed';
  switch (row.kind) {
    case 'time':
      return fmtTime(v);
    case 'count':
      return fmtCount(v);
    case 'mem':
      return fmtMb(v);
    case 'plain':
      return v.toFixed(2);
  }
}

function ratioCell(neutron: Side, virtfw: Side, row: Row, P: number): string {
  if (row.virtfwOnly || row.nftOnly) return '';
  const n = row.get(neutron.metrics, P);
  const v = row.get(virtfw.metrics, P);
  // time: Neutron / virtfw (how many times faster); counts and memory: virtfw / Neutron.
  if (row.kind === 'time') return fmtRatio(ratio(n, v));
  if (row.label.startsWith('bridge_') || row.label.startsWith('ipset_members')) return '';
  if (row.kind === 'count' || row.kind === 'mem') {
    const r = ratio(v, n);
    return r === undefined ? '' : r.toFixed(2);
  }
  return '';
}

/** virtfw's iptables driver (ipset) against its nftables driver: times iptables ÷ nftables; counts and memory nftables ÷ iptables. */
function driverRatioCell(iptables: Side, nftables: Side, row: Row, P: number): string {
  if (row.nftOnly || row.kind === 'plain' || row.label.startsWith('ipset_members')) return '';
  const i = row.get(iptables.metrics, P);
  const n = row.get(nftables.metrics, P);
  if (row.kind === 'time') return fmtRatio(ratio(i, n));
  const r = ratio(n, i);
  return r === undefined ? '' : r.toFixed(2);
}

function statusLine(name: string, side: Side): string | null {
  if (side.status === 'ok') return null;
  return `- ${name}: **${side.status}** — ${side.reason ?? ''}`;
}

export function sizeTable(s: SizeResult): string {
  const head = [
    'metric',
    'Neutron ipset on',
    'Neutron ipset off',
    'virtfw ipset',
    'virtfw expand',
    'virtfw nftables',
    'Neutron(ipset on) / virtfw(ipset)',
    'Neutron(ipset on) / virtfw(expand)',
    'Neutron(ipset on) / virtfw(nftables)',
    'virtfw iptables(ipset) / virtfw nftables',
  ];
  const lines = [`| ${head.join(' | ')} |`, `|---|${head.slice(1).map(() => '---:').join('|')}|`];
  for (const row of ROWS) {
    lines.push(
      `| ${[
        row.label,
        cell(s.neutron_on, row, s.P, 'neutron'),
        cell(s.neutron_off, row, s.P, 'neutron'),
        cell(s.virtfw_ipset, row, s.P, 'iptables'),
        cell(s.virtfw_expand, row, s.P, 'iptables'),
        cell(s.virtfw_nftables, row, s.P, 'nftables'),
        ratioCell(s.neutron_on, s.virtfw_ipset, row, s.P),
        ratioCell(s.neutron_on, s.virtfw_expand, row, s.P),
        ratioCell(s.neutron_on, s.virtfw_nftables, row, s.P),
        driverRatioCell(s.virtfw_ipset, s.virtfw_nftables, row, s.P),
      ].join(' | ')} |`,
    );
  }
  const sides = [
    ['Neutron ipset on', s.neutron_on],
    ['Neutron ipset off', s.neutron_off],
    ['virtfw ipset', s.virtfw_ipset],
    ['virtfw expand', s.virtfw_expand],
    ['virtfw nftables', s.virtfw_nftables],
  ] as const;
  const status = sides.map(([name, side]) => statusLine(name, side)).filter((l): l is string => l !== null);
  const wl = s.workload;
  const loads = sides.filter(([, side]) => side.load_at_start !== undefined).map(([name, side]) => `${name} ${side.load_at_start?.toFixed(2)}`);
  const parts = [
    `### P = ${s.P}`,
    '',
    lines.join('\n'),
    '',
    'Ratio columns: time rows = Neutron ÷ virtfw (× faster; > 1 means virtfw is faster); rule-count and memory rows = virtfw ÷ Neutron (< 1 means virtfw has fewer / uses less); the total compares virtfw v4+v6+bridge+inet with Neutron v4+v6. The last column compares virtfw\'s two drivers the same way: time rows = iptables(ipset) ÷ nftables (> 1 means nftables is faster), count and memory rows = nftables ÷ iptables(ipset).',
    '',
    `Workload: \`${wl.file}\`${wl.identical_to_neutron === null ? '' : wl.identical_to_neutron ? ', identical to the one Neutron ran' : ', **differs from the one Neutron ran**'}; ${wl.allowed_address_pairs} allowed address pair(s) that virtfw cannot express.`,
  ];
  if (loads.length) parts.push('', `1-minute load average when each run started (2 cores): ${loads.join(', ')}.`);
  if (status.length) parts.push('', ...status);
  return parts.join('\n');
}

// ------------------------------------------------------------------ targets

const verdict = (ok: boolean | null, official: boolean) => (ok === null ? 'n/a' : `${ok ? 'PASS' : 'FAIL'}${official ? '' : ' (indicative)'}`);

/** max/min of a metric over every size where the side ran. */
function flatness(sizes: SizeResult[], key: 'virtfw_ipset' | 'virtfw_expand', get: (m: Metrics) => number | undefined): { value: number; n: number } | null {
  const values = sizes.map((s) => get(s[key].metrics)).filter((v): v is number => v !== undefined && v > 0);
  if (values.length < 2) return null;
  return { value: Math.max(...values) / Math.min(...values), n: values.length };
}

export function evaluateTargets(sizes: SizeResult[]): { at_P: number; official: boolean; rows: TargetRow[] } {
  const at = sizes.find((s) => s.P === 1000) ?? sizes.reduce<SizeResult | undefined>((a, s) => (!a || s.P > a.P ? s : a), undefined);
  const official = at?.P === 1000;
  const rows: TargetRow[] = [];
  if (!at) return { at_P: 0, official: false, rows };
  const n = at.neutron_on.metrics;
  const span = `${Math.min(...sizes.map((s) => s.P))}–${Math.max(...sizes.map((s) => s.P))}`;

  const each = (fn: (key: 'virtfw_ipset' | 'virtfw_expand') => { value: string; verdict: string }) => ({ ipset: fn('virtfw_ipset'), expand: fn('virtfw_expand') });
  // "prepare_all: ApplyError: ..." -> "run failed in prepare_all (see P table)"
  const failedText = (side: Side) =>
    side.status === 'ok' ? 'not measured' : `run ${side.status}${side.status === 'failed' ? ` in ${(side.reason ?? '').split(':')[0]}` : ''} (see the P=${at.P} table)`;

  rows.push({
    target: `program ${at.P} instances`,
    requirement: '≥ 3× faster than Neutron, and prepare_all_s ≤ 1.25 × tools_only_s',
    ...each((key) => {
      const v = at[key].metrics;
      const speed = ratio(n.prepare_all_s, v.prepare_all_s);
      const overTools = ratio(v.prepare_all_s, v.tools_only_s);
      if (speed === undefined) return { value: failedText(at[key]), verdict: verdict(at[key].status === 'ok' ? null : false, official) };
      const ok = speed >= 3 && overTools !== undefined && overTools <= 1.25;
      return {
        value: `${fmtTime(n.prepare_all_s)} s / ${fmtTime(v.prepare_all_s)} s = ${fmtRatio(speed)}; prepare/tools = ${overTools === undefined ? 'n/a' : overTools.toFixed(2)}`,
        verdict: verdict(ok, official),
      };
    }),
  });

  const changeTarget = (label: string, get: (m: Metrics) => number | undefined, factor: number, limit: number) => {
    rows.push({
      target: label,
      requirement: `≥ ${factor}× faster AND < ${limit * 1000} ms; flat within 2× over P=${span}`,
      ...each((key) => {
        const v = get(at[key].metrics);
        const speed = ratio(get(n), v);
        const flat = flatness(sizes, key, get);
        if (v === undefined || speed === undefined) return { value: failedText(at[key]), verdict: verdict(at[key].status === 'ok' ? null : false, official) };
        const ok = speed >= factor && v < limit && flat !== null && flat.value <= 2;
        return {
          value: `${(v * 1000).toFixed(1)} ms; ${fmtRatio(speed)}; max/min over ${flat?.n ?? 0} sizes = ${flat ? flat.value.toFixed(2) : 'n/a'}`,
          verdict: verdict(ok, official),
        };
      }),
    });
  };
  changeTarget('one member added', (m) => m.member_add_s, 500, 0.03);
  changeTarget('one rule added', (m) => m.rule_add_s, 100, 0.1);

  const neutronRules = n.rules_v4 !== undefined && n.rules_v6 !== undefined ? n.rules_v4 + n.rules_v6 : undefined;
  rows.push({
    target: `kernel rules at ${at.P}`,
    requirement: 'virtfw (v4 + v6 + bridge nft) ≤ ½ × Neutron (v4 + v6)',
    ...each((key) => {
      const v = totalRules(at[key].metrics);
      const r = ratio(v, neutronRules);
      if (v === undefined || r === undefined) return { value: failedText(at[key]), verdict: verdict(at[key].status === 'ok' ? null : false, official) };
      return { value: `${v} / ${neutronRules} = ${r.toFixed(2)}`, verdict: verdict(r <= 0.5, official) };
    }),
  });

  rows.push({
    target: `peak RSS, programming ${at.P}`,
    requirement: '≤ 150 MB',
    ...each((key) => {
      const v = at[key].metrics.peak_rss_mb;
      if (v === undefined) return { value: failedText(at[key]), verdict: verdict(at[key].status === 'ok' ? null : false, official) };
      const note = at[key].status === 'ok' ? '' : ' (run failed early)';
      return { value: `${v.toFixed(1)} MB${note}`, verdict: verdict(at[key].status === 'ok' ? v <= 150 : false, official) };
    }),
  });
  return { at_P: at.P, official, rows };
}

export function targetsTable(t: CompareDocument['targets']): string {
  const lines = [
    `| target | requirement | virtfw ipset | verdict | virtfw expand | verdict |`,
    `|---|---|---|---|---|---|`,
    ...t.rows.map((r) => `| ${r.target} | ${r.requirement} | ${r.ipset.value} | **${r.ipset.verdict}** | ${r.expand.value} | ${r.expand.verdict} |`),
  ];
  return lines.join('\n');
}

// -------------------------------------------------- nftables driver targets

/** Per-instance rules may vary this much over the sizes (the mix of groups differs a little) and still count as constant. */
const PER_INSTANCE_TOLERANCE = 1.05;

/**
 * The nftables driver's targets at 1,000 instances (or the largest P
 * run, marked indicative): programming ≥ 10× faster than Neutron with ipset
 * and ≥ 2× faster than virtfw's iptables driver (ipset) in the same run; a
 * membership change under 5 ms (median); rules per instance constant in P.
 */
export function evaluateNftTargets(sizes: SizeResult[]): NftTargets {
  const at = sizes.find((s) => s.P === 1000) ?? sizes.reduce<SizeResult | undefined>((a, s) => (!a || s.P > a.P ? s : a), undefined);
  const official = at?.P === 1000;
  const growth: NftGrowth[] = [...sizes]
    .sort((a, b) => a.P - b.P)
    .map((s) => {
      const m = s.virtfw_nftables.metrics;
      return {
        P: s.P,
        inet_rules: m.inet_rules,
        inet_instance_rules: m.inet_instance_rules,
        inet_other_rules: m.inet_rules === undefined || m.inet_instance_rules === undefined ? undefined : m.inet_rules - m.inet_instance_rules,
        per_instance: perInstance(m, s.P),
        inet_set_elements: m.inet_set_elements,
        inet_map_elements: m.inet_map_elements,
        bridge_rules: m.bridge_rules,
        bridge_set_elements: m.bridge_set_elements,
      };
    });
  const rows: NftTargetRow[] = [];
  if (!at) return { at_P: 0, official: false, rows, growth };
  const nft = at.virtfw_nftables;
  const v = nft.metrics;
  const failed = (side: Side, name: string) =>
    side.status === 'ok' ? `${name}: not measured` : `${name} run ${side.status}${side.status === 'failed' ? ` in ${(side.reason ?? '').split(':')[0]}` : ''} (see the P=${at.P} table)`;
  const verdictOf = (ok: boolean | null) => verdict(ok, official);

  // Programming all instances.
  {
    const n = at.neutron_on.metrics.prepare_all_s;
    const i = at.virtfw_ipset.metrics.prepare_all_s;
    const speedN = ratio(n, v.prepare_all_s);
    const speedI = ratio(i, v.prepare_all_s);
    const overTools = ratio(v.prepare_all_s, v.tools_only_s);
    const row = { target: `program ${at.P} instances`, requirement: '≥ 10× faster than Neutron (ipset on) AND ≥ 2× faster than virtfw iptables (ipset), same run' };
    if (speedN === undefined || speedI === undefined) {
      const why = [speedN === undefined && v.prepare_all_s !== undefined ? failed(at.neutron_on, 'Neutron ipset on') : null, speedI === undefined && v.prepare_all_s !== undefined ? failed(at.virtfw_ipset, 'virtfw ipset') : null, v.prepare_all_s === undefined ? failed(nft, 'virtfw nftables') : null].filter(Boolean);
      rows.push({ ...row, value: why.join('; '), verdict: verdictOf(nft.status === 'ok' ? null : false) });
    } else {
      rows.push({
        ...row,
        value: `Neutron ${fmtTime(n)} s / ${fmtTime(v.prepare_all_s)} s = ${fmtRatio(speedN)}; virtfw iptables(ipset) ${fmtTime(i)} s / ${fmtTime(v.prepare_all_s)} s = ${fmtRatio(speedI)} (for information: prepare/tools = ${overTools === undefined ? 'n/a' : overTools.toFixed(2)}, nft -f alone ${fmtTime(v.tools_only_s)} s)`,
        verdict: verdictOf(speedN >= 10 && speedI >= 2),
      });
    }
  }

  // A membership change.
  {
    const row = { target: 'one member added', requirement: `median < 5 ms at P=${at.P} (for information: median over every event at every size, and flatness max/min of the per-size medians)` };
    const value = v.member_add_s;
    if (value === undefined) {
      rows.push({ ...row, value: failed(nft, 'virtfw nftables'), verdict: verdictOf(nft.status === 'ok' ? null : false) });
    } else {
      const all = sizes.flatMap((s) => s.virtfw_nftables.metrics.member_add_samples_s ?? []);
      const medians = sizes.map((s) => s.virtfw_nftables.metrics.member_add_s).filter((x): x is number => x !== undefined && x > 0);
      const flat = medians.length >= 2 ? Math.max(...medians) / Math.min(...medians) : undefined;
      const perSize = [...sizes]
        .sort((a, b) => a.P - b.P)
        .map((s) => `${s.P}: ${s.virtfw_nftables.metrics.member_add_s === undefined ? 'n/a' : (s.virtfw_nftables.metrics.member_add_s * 1000).toFixed(1)}`)
        .join(', ');
      rows.push({
        ...row,
        value: `${(value * 1000).toFixed(1)} ms; over all sizes: median ${all.length ? (medianOf(all) * 1000).toFixed(1) : 'n/a'} ms of ${all.length} events; per-size medians (ms) ${perSize}; max/min = ${flat === undefined ? 'n/a' : flat.toFixed(2)}`,
        verdict: verdictOf(value < 0.005),
      });
    }
  }

  // Rules per instance.
  {
    const row = {
      target: 'rules per instance',
      requirement: `inet rules in the instance chains ÷ P does not grow with P (every size ≤ ${PER_INSTANCE_TOLERANCE} × the smallest size's); base and group chains are not per instance`,
    };
    const known = growth.filter((g) => g.per_instance !== undefined);
    if (known.length < sizes.length || known.length === 0) {
      const missing = growth.filter((g) => g.per_instance === undefined).map((g) => g.P);
      rows.push({ ...row, value: `not measured at P=${missing.join(', ')} (see those tables)`, verdict: verdictOf(false) });
    } else {
      const first = known[0]?.per_instance ?? 0;
      const ok = known.every((g) => (g.per_instance ?? Infinity) <= first * PER_INSTANCE_TOLERANCE);
      const others = [...new Set(known.map((g) => g.inet_other_rules))];
      rows.push({
        ...row,
        value: `${known.map((g) => `P=${g.P}: ${g.per_instance?.toFixed(2)}`).join(', ')}; rules outside them: ${others.join(', ')}${others.length === 1 ? ' at every size' : ''} (see the growth table)`,
        verdict: known.length < 2 ? verdictOf(null) : verdictOf(ok),
      });
    }
  }
  return { at_P: at.P, official, rows, growth };
}

/** The middle value (the mean of the two middle ones for an even count); NaN for none. */
export function medianOf(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return NaN;
  return n % 2 ? (s[(n - 1) / 2] ?? NaN) : ((s[n / 2 - 1] ?? 0) + (s[n / 2] ?? 0)) / 2;
}

export function nftTargetsTable(t: NftTargets): string {
  return [`| target | requirement | virtfw nftables | verdict |`, `|---|---|---|---|`, ...t.rows.map((r) => `| ${r.target} | ${r.requirement} | ${r.value} | **${r.verdict}** |`)].join('\n');
}

/** How the nftables driver's rules and elements grow with P: a least-squares line through total inet rules, and the table. */
export function nftGrowthTable(t: NftTargets): string {
  const g = t.growth;
  const head = [
    'P',
    'inet rules (all)',
    'in instance chains',
    'per instance',
    'other (base + group chains)',
    'member set elements',
    'dispatch map elements',
    'bridge rules',
    'bridge rules ÷ P',
    'bridge set/map elements',
  ];
  const f = (x: number | undefined) => (x === undefined ? 'n/a' : String(x));
  const lines = [
    `| ${head.join(' | ')} |`,
    `|${head.map(() => '---:').join('|')}|`,
    ...g.map(
      (r) =>
        `| ${[
          r.P,
          f(r.inet_rules),
          f(r.inet_instance_rules),
          r.per_instance === undefined ? 'n/a' : r.per_instance.toFixed(2),
          f(r.inet_other_rules),
          f(r.inet_set_elements),
          f(r.inet_map_elements),
          f(r.bridge_rules),
          r.bridge_rules === undefined ? 'n/a' : (r.bridge_rules / r.P).toFixed(2),
          f(r.bridge_set_elements),
        ].join(' | ')} |`,
    ),
  ];
  const pts = g.filter((r): r is NftGrowth & { inet_rules: number } => r.inet_rules !== undefined);
  const out = [lines.join('\n')];
  if (pts.length >= 2) {
    const n = pts.length;
    const mx = pts.reduce((a, r) => a + r.P, 0) / n;
    const my = pts.reduce((a, r) => a + r.inet_rules, 0) / n;
    const sxx = pts.reduce((a, r) => a + (r.P - mx) ** 2, 0);
    const slope = sxx === 0 ? 0 : pts.reduce((a, r) => a + (r.P - mx) * (r.inet_rules - my), 0) / sxx;
    const icept = my - slope * mx;
    const maxDev = Math.max(...pts.map((r) => Math.abs(r.inet_rules - (icept + slope * r.P))));
    out.push(
      '',
      `Least-squares line through the inet rule totals: rules ≈ ${icept.toFixed(1)} + ${slope.toFixed(3)} × P (largest deviation ${maxDev.toFixed(1)} rules): the slope is the rules each instance adds (0 when instances share their groups' chains); the member sets' elements (remote groups' addresses) and the dispatch maps' elements (one per instance address or device) carry the rest of the growth, outside the rules.`,
    );
  }
  return out.join('\n');
}

// ----------------------------------------------------------------- document

export function renderMarkdown(doc: CompareDocument): string {
  const m = doc.machine;
  const out: string[] = [
    '# virtfw (iptables and nftables drivers) vs OpenStack Neutron (iptables) — security groups, same workload, same run',
    '',
    `Run ${doc.started} → ${doc.finished} (${(doc.duration_s / 60).toFixed(1)} min), \`npm run bench:compare\`.`,
    '',
    '## Machine',
    '',
    ...Object.entries(m).map(([k, v]) => `- ${k}: ${v}`),
    '',
    `Config: ${Object.entries(doc.config)
      .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
      .join(', ')}.`,
    '',
    `## Scale targets (iptables driver) at ${doc.targets.at_P} instances${doc.targets.official ? '' : ' (P=1000 not run: indicative only)'}`,
    '',
    'Ratios are to Neutron with ipset on, in this run. The targets are for virtfw with `memberMatch: ipset`; the expand columns are for information.',
    '',
    targetsTable(doc.targets),
    '',
    `## nftables driver targets at ${doc.targets_nftables.at_P} instances${doc.targets_nftables.official ? '' : ' (P=1000 not run: indicative only)'}`,
    '',
    'For virtfw\'s `NftablesFirewallDriver`; ratios are to Neutron with ipset on and to virtfw\'s iptables driver with `memberMatch: ipset`, in this run.',
    '',
    nftTargetsTable(doc.targets_nftables),
    '',
    'Growth with P (nftables driver, kernel counts after prepare_all, `nft -j list table inet|bridge virtfw`; instance chains are `vm-in-*`, `vm-out-*` (named by their rules: one pair per distinct list of groups, shared by the instances that have it) and `vm-spoof-*` (per instance with routed VIFs)):',
    '',
    nftGrowthTable(doc.targets_nftables),
    '',
    '## Per size',
    '',
    'Times in seconds (wall, `performance.now()` / `time.perf_counter()`); RSS in MB (2^20 bytes). Neutron: `iptables_hybrid` driver, iptables-nft, numbers from its own harness (`/work/shared/bench/neutron/run.sh`). virtfw ipset / expand: `IptablesFirewallDriver` with that `memberMatch`; virtfw nftables: `NftablesFirewallDriver`; real tools, each run in a fresh namespace. `–` = does not apply to that column. See bench/README.md for exactly what each phase times.',
    '',
  ];
  for (const s of doc.sizes) out.push(sizeTable(s), '');
  if (doc.notes.length) out.push('## Notes on fairness and on this run', '', ...doc.notes.map((n) => `- ${n}`), '');
  return out.join('\n');
}
