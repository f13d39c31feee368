/**
 * bench:compare report: the result document's types, the metrics pulled
 * from each side, the issue-5 targets, and the markdown tables.
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
  ipset_members?: number;
  member_add_s?: number;
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
}

export interface TargetRow {
  target: string;
  requirement: string;
  ipset: { value: string; verdict: string };
  expand: { value: string; verdict: string };
}

export interface CompareDocument {
  format: 'virtfw-bench-compare/1';
  started: string;
  finished: string;
  duration_s: number;
  machine: Record<string, string | number>;
  config: Record<string, unknown>;
  sizes: SizeResult[];
  targets: { at_P: number; official: boolean; rows: TargetRow[] };
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

export function totalRules(m: Metrics): number | undefined {
  if (m.rules_v4 === undefined || m.rules_v6 === undefined) return undefined;
  return m.rules_v4 + m.rules_v6 + (m.bridge_rules ?? 0);
}

const ratio = (a: number | undefined, b: number | undefined) =>
  a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0 ? undefined : a / b;

// ------------------------------------------------------------------- tables

type Kind = 'time' | 'count' | 'mem' | 'plain';

interface Row {
  label: string;
  kind: Kind;
  get: (m: Metrics) => number | undefined;
  /** only virtfw has it */
  virtfwOnly?: boolean;
}

const ROWS: Row[] = [
  { label: 'prepare_all_s (program all P, one deferred apply)', kind: 'time', get: (m) => m.prepare_all_s },
  { label: 'tools_only_s (the tools alone, virtfw input)', kind: 'time', get: (m) => m.tools_only_s, virtfwOnly: true },
  { label: 'prepare_all_s / tools_only_s', kind: 'plain', get: (m) => ratio(m.prepare_all_s, m.tools_only_s), virtfwOnly: true },
  { label: 'restore_subprocess_s (inside restore tools, prepare_all)', kind: 'time', get: (m) => m.restore_subprocess_s },
  { label: 'rules_v4 (iptables-save -A, all tables)', kind: 'count', get: (m) => m.rules_v4 },
  { label: 'rules_v6 (ip6tables-save -A, all tables)', kind: 'count', get: (m) => m.rules_v6 },
  { label: 'bridge_rules (nft table bridge virtfw)', kind: 'count', get: (m) => m.bridge_rules },
  { label: 'kernel rules total (v4 + v6 + bridge)', kind: 'count', get: totalRules },
  { label: 'bridge_set_elements (nft named set/map elements)', kind: 'count', get: (m) => m.bridge_set_elements },
  { label: 'ipset_members (ipset save, add lines)', kind: 'count', get: (m) => m.ipset_members },
  { label: 'member_add_s (median of events)', kind: 'time', get: (m) => m.member_add_s },
  { label: 'rule_add_s (median of events)', kind: 'time', get: (m) => m.rule_add_s },
  { label: 'remove_all_s (excl. conntrack -D)', kind: 'time', get: (m) => m.remove_all_s },
  { label: 'conntrack_cleanup_s (conntrack -D of removed ports)', kind: 'time', get: (m) => m.conntrack_cleanup_s },
  { label: 'peak_rss_mb (programming process)', kind: 'mem', get: (m) => m.peak_rss_mb },
];

function cell(side: Side, row: Row, isVirtfw: boolean): string {
  if (row.virtfwOnly && !isVirtfw) return '–';
  const v = row.get(side.metrics);
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

function ratioCell(neutron: Side, virtfw: Side, row: Row): string {
  if (row.virtfwOnly) return '';
  const n = row.get(neutron.metrics);
  const v = row.get(virtfw.metrics);
  // time: Neutron / virtfw (how many times faster); counts and memory: virtfw / Neutron.
  if (row.kind === 'time') return fmtRatio(ratio(n, v));
  if (row.label.startsWith('bridge_') || row.label.startsWith('ipset_members')) return '';
  if (row.kind === 'count' || row.kind === 'mem') {
    const r = ratio(v, n);
    return r === undefined ? '' : r.toFixed(2);
  }
  return '';
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
    'Neutron(ipset on) / virtfw(ipset)',
    'Neutron(ipset on) / virtfw(expand)',
  ];
  const lines = [`| ${head.join(' | ')} |`, `|---|${head.slice(1).map(() => '---:').join('|')}|`];
  for (const row of ROWS) {
    lines.push(
      `| ${[
        row.label,
        cell(s.neutron_on, row, false),
        cell(s.neutron_off, row, false),
        cell(s.virtfw_ipset, row, true),
        cell(s.virtfw_expand, row, true),
        ratioCell(s.neutron_on, s.virtfw_ipset, row),
        ratioCell(s.neutron_on, s.virtfw_expand, row),
      ].join(' | ')} |`,
    );
  }
  const status = [
    statusLine('Neutron ipset on', s.neutron_on),
    statusLine('Neutron ipset off', s.neutron_off),
    statusLine('virtfw ipset', s.virtfw_ipset),
    statusLine('virtfw expand', s.virtfw_expand),
  ].filter((l): l is string => l !== null);
  const wl = s.workload;
  const loads = (
    [
      ['Neutron on', s.neutron_on],
      ['Neutron off', s.neutron_off],
      ['virtfw ipset', s.virtfw_ipset],
      ['virtfw expand', s.virtfw_expand],
    ] as const
  )
    .filter(([, side]) => side.load_at_start !== undefined)
    .map(([name, side]) => `${name} ${side.load_at_start?.toFixed(2)}`);
  const parts = [
    `### P = ${s.P}`,
    '',
    lines.join('\n'),
    '',
    'Ratio columns: time rows = Neutron ÷ virtfw (× faster; > 1 means virtfw is faster); rule-count and memory rows = virtfw ÷ Neutron (< 1 means virtfw has fewer / uses less); the total compares virtfw v4+v6+bridge with Neutron v4+v6.',
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

// ----------------------------------------------------------------- document

export function renderMarkdown(doc: CompareDocument): string {
  const m = doc.machine;
  const out: string[] = [
    '# virtfw vs OpenStack Neutron — iptables security groups, same workload, same run',
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
    `## Issue-5 targets at ${doc.targets.at_P} instances${doc.targets.official ? '' : ' (P=1000 not run: indicative only)'}`,
    '',
    'Ratios are to Neutron with ipset on, in this run. The targets are for virtfw with `memberMatch: ipset`; the expand columns are for information.',
    '',
    targetsTable(doc.targets),
    '',
    '## Per size',
    '',
    'Times in seconds (wall, `performance.now()` / `time.perf_counter()`); RSS in MB (2^20 bytes). Neutron: `iptables_hybrid` driver, iptables-nft, numbers from its own harness (`/work/shared/bench/neutron/run.sh`). virtfw: `IptablesFirewallDriver`, real tools in a fresh namespace. See bench/README.md for exactly what each phase times.',
    '',
  ];
  for (const s of doc.sizes) out.push(sizeTable(s), '');
  if (doc.notes.length) out.push('## Notes on fairness and on this run', '', ...doc.notes.map((n) => `- ${n}`), '');
  return out.join('\n');
}
