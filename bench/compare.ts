/**
 * npm run bench:compare — virtfw vs OpenStack Neutron's iptables driver,
 * side by side, on the shared workload, in one run. See bench/README.md.
 *
 * For each P (SIZES, default "10 100 500 1000"; QUICK=1: "10 100"):
 *   1. Neutron, ipset on and off: /work/shared/bench/neutron/run.sh itself
 *      (its own namespace nbench-<pid>-..., its own timings, results.json);
 *      ipset off is skipped above NEUTRON_IPSET_OFF_MAX (default 500).
 *   2. virtfw on the same workload: the iptables driver with memberMatch ipset
 *      and expand, and the nftables driver; one child process each
 *      (bench/virtfw-run.ts) in a fresh namespace vfwcmp<pid>-p<P>-<ipset|expand|nft>,
 *      plus one --tools-only child each in another fresh namespace (…-t).
 *   3. A markdown + JSON report in bench/results/ (and latest.md), printed.
 *
 * Environment: SIZES, QUICK, REPEATS (3), RUN_TIMEOUT (420, Neutron's per-run
 * cap), NEUTRON_IPSET_OFF_MAX (500), VIRTFW_RUN_TIMEOUT (900), VIRTFW_RUNNER
 * (bundle | tsx), NEUTRON_BENCH_DIR, KEEP_WORK=1 (keep the scratch folder), QUIET_WAIT
 * (seconds to wait, before each measured run, for a quiet machine; default 0).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readWorkload, workloadCore } from './neutron-workload.js';
import {
  MB,
  evaluateNftTargets,
  evaluateTargets,
  medianOf,
  renderMarkdown,
  type CompareDocument,
  type Metrics,
  type Side,
  type SizeResult,
} from './report.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '..');
const RESULTS = join(HERE, 'results');

// ------------------------------------------------------------------- config

const env = process.env;
const SIZES = (env.SIZES ?? (env.QUICK === '1' ? '10 100' : '10 100 500 1000'))
  .split(/[\s,]+/)
  .filter(Boolean)
  .map(Number);
if (!SIZES.length || SIZES.some((p) => !Number.isInteger(p) || p < 1)) {
  console.error(`SIZES: ${JSON.stringify(env.SIZES)} is not a list of positive integers`);
  process.exit(2);
}
const REPEATS = Number(env.REPEATS ?? 3);
/** fresh runs of each virtfw driver per size, interleaved; each figure is their median */
const VIRTFW_RUNS = Number(env.VIRTFW_RUNS ?? 3);
if (!Number.isInteger(VIRTFW_RUNS) || VIRTFW_RUNS < 1) {
  console.error(`VIRTFW_RUNS: ${JSON.stringify(env.VIRTFW_RUNS)} is not a whole number of at least 1`);
  process.exit(2);
}
const RUN_TIMEOUT = Number(env.RUN_TIMEOUT ?? 420);
const OFF_MAX = Number(env.NEUTRON_IPSET_OFF_MAX ?? 500);
const VIRTFW_TIMEOUT = Number(env.VIRTFW_RUN_TIMEOUT ?? 900);
const NEUTRON_DIR = env.NEUTRON_BENCH_DIR ?? '/work/shared/bench/neutron';
const QUIET_WAIT = Number(env.QUIET_WAIT ?? 0);
const PY = '/usr/bin/python3';
const NS_PREFIX = `vfwcmp${process.pid}`;

// ---------------------------------------------------------- process control

const log = (msg: string) => process.stderr.write(`[compare] ${msg}\n`);
const active = new Set<ChildProcess>();
const namespaces = new Set<string>();
/** pids of run.sh processes: their namespaces are nbench-<pid>-... */
const neutronPids = new Set<number>();

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** The process and all its descendants (found through /proc), by pid. */
function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(entry));
      children.set(ppid, list);
    } catch {
      // gone meanwhile
    }
  }
  const out: number[] = [];
  const walk = (pid: number) => {
    out.push(pid);
    for (const c of children.get(pid) ?? []) walk(c);
  };
  walk(root);
  return out;
}

function killTree(root: number): void {
  const pids = processTree(root);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // already gone
    }
  }
  for (let i = 0; i < 30 && pids.some(alive); i++) sleepSync(100);
  for (const pid of pids.filter(alive)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function listNamespaces(): string[] {
  return spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .stdout.split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
}

function addNamespace(name: string): void {
  const r = spawnSync('ip', ['netns', 'add', name], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip netns add ${name}: ${r.stderr.trim()}`);
  namespaces.add(name);
}

function deleteNamespace(name: string): void {
  spawnSync('ip', ['netns', 'del', name], { encoding: 'utf8' });
  namespaces.delete(name);
}

/** Ends every child this run started and deletes every namespace it (or its run.sh) made. */
function cleanup(): void {
  for (const child of active) if (child.pid) killTree(child.pid);
  active.clear();
  const ours = (ns: string) => ns.startsWith(`${NS_PREFIX}-`) || [...neutronPids].some((pid) => ns.startsWith(`nbench-${pid}-`));
  for (const ns of new Set([...namespaces, ...listNamespaces().filter(ours)])) deleteNamespace(ns);
}

/** the scratch folder of this run, removed at the end (KEEP_WORK=1 keeps it) */
let scratchDir: string | null = null;

function removeScratch(): void {
  if (!scratchDir) return;
  if (env.KEEP_WORK === '1') log(`scratch kept: ${scratchDir}`);
  else rmSync(scratchDir, { recursive: true, force: true });
  scratchDir = null;
}

let interrupted = false;
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(signal, () => {
    if (interrupted) return;
    interrupted = true;
    log(`${signal}: stopping children and deleting namespaces`);
    cleanup();
    removeScratch();
    process.exit(130);
  });
}

interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  elapsed_s: number;
  timedOut: boolean;
}

/** Runs a child in its own process group, streaming its stderr (and optionally stdout) to ours. */
function runChild(label: string, argv: string[], opts: { env?: NodeJS.ProcessEnv; timeoutS: number; echoStdout?: boolean; cwd?: string }): Promise<ChildResult> {
  return new Promise((resolveRun, reject) => {
    const [cmd, ...args] = argv;
    if (!cmd) return reject(new Error('empty command'));
    const t0 = performance.now();
    const child = spawn(cmd, args, { cwd: opts.cwd ?? ROOT, env: opts.env ?? env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    active.add(child);
    if (label.startsWith('neutron') && child.pid) neutronPids.add(child.pid);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const echo = (chunk: Buffer) => {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim()) process.stderr.write(`  [${label}] ${line}\n`);
    };
    child.stdout?.on('data', (d: Buffer) => {
      out.push(d);
      if (opts.echoStdout) echo(d);
    });
    child.stderr?.on('data', (d: Buffer) => {
      err.push(d);
      echo(d);
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      log(`${label}: no result after ${opts.timeoutS} s, stopping it`);
      if (child.pid) killTree(child.pid);
    }, opts.timeoutS * 1000);
    child.on('error', (e) => {
      clearTimeout(timer);
      active.delete(child);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      active.delete(child);
      resolveRun({
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        elapsed_s: (performance.now() - t0) / 1000,
        timedOut,
      });
    });
  });
}

/** CPU pressure (PSI `some avg10`, % of time runnable tasks waited for a CPU), or null without PSI. */
function cpuPressure(): number | null {
  try {
    const m = /some avg10=([\d.]+)/.exec(readFileSync('/proc/pressure/cpu', 'utf8'));
    return m?.[1] ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/**
 * With QUIET_WAIT=S, waits up to S seconds before a measured run until the
 * machine is quiet (CPU pressure under 20 %, else load average under the
 * core count). Returns the load average when the run starts.
 */
async function waitQuiet(label: string): Promise<number> {
  const quiet = () => {
    const psi = cpuPressure();
    return psi === null ? (loadavg()[0] ?? 0) < cpus().length : psi < 20;
  };
  const deadline = Date.now() + QUIET_WAIT * 1000;
  if (QUIET_WAIT > 0 && !quiet()) {
    log(`${label}: machine busy (load ${loadavg()[0]?.toFixed(2)}, cpu pressure ${cpuPressure() ?? '?'} %), waiting up to ${QUIET_WAIT} s`);
    while (Date.now() < deadline && !quiet()) await new Promise((r) => setTimeout(r, 2000));
  }
  return loadavg()[0] ?? 0;
}

const firstLine = (argv: string[]) => {
  const r = spawnSync(argv[0] ?? '', argv.slice(1), { encoding: 'utf8' });
  return `${r.stdout}${r.stderr}`.trim().split('\n')[0] ?? '';
};

// ------------------------------------------------------------------ Neutron

interface NeutronRow {
  P: number;
  ipset: string;
  failed?: string;
  prepare_all_s?: number;
  rules_v4?: number;
  rules_v6?: number;
  ipset_members?: number;
  member_add_s?: number;
  rule_add_s?: number;
  remove_all_s?: number;
  restore_subprocess_s?: number;
  conntrack_cleanup_s?: number;
  max_rss_kb?: number;
  [key: string]: unknown;
}

function neutronMetrics(row: NeutronRow): Metrics {
  return {
    prepare_all_s: row.prepare_all_s,
    restore_subprocess_s: row.restore_subprocess_s,
    rules_v4: row.rules_v4,
    rules_v6: row.rules_v6,
    bridge_rules: 0, // Neutron's iptables drivers use no nftables bridge table
    bridge_set_elements: 0,
    inet_rules: 0, // nor an nftables inet table of its own
    inet_instance_rules: 0,
    inet_set_elements: 0,
    inet_map_elements: 0,
    ipset_members: row.ipset_members,
    member_add_s: row.member_add_s,
    rule_add_s: row.rule_add_s,
    remove_all_s: row.remove_all_s,
    conntrack_cleanup_s: row.conntrack_cleanup_s,
    peak_rss_mb: row.max_rss_kb === undefined ? undefined : row.max_rss_kb / MB,
  };
}

async function runNeutron(P: number, mode: 'on' | 'off', scratch: string): Promise<{ side: Side; workloadFile: string | null; machine: Record<string, unknown> | null }> {
  if (mode === 'off' && P > OFF_MAX) {
    return {
      side: { status: 'skipped', reason: `P=${P} > NEUTRON_IPSET_OFF_MAX=${OFF_MAX} (its member/rule refreshes are O(P × rules) in Python; P=1000 hits the ${RUN_TIMEOUT} s cap)`, metrics: {} },
      workloadFile: null,
      machine: null,
    };
  }
  const load = await waitQuiet(`Neutron P=${P} ${mode}`);
  const work = join(scratch, `neutron-p${P}-${mode}`);
  mkdirSync(work, { recursive: true });
  log(`Neutron P=${P} ipset ${mode} (WORK=${work})`);
  const r = await runChild(`neutron p${P} ${mode}`, ['bash', join(NEUTRON_DIR, 'run.sh')], {
    env: { ...env, WORK: work, SIZES: String(P), IPSET_MODES: mode, REPEATS: String(REPEATS), RUN_TIMEOUT: String(RUN_TIMEOUT) },
    timeoutS: RUN_TIMEOUT + 900,
    echoStdout: true,
  });
  const resultsPath = join(work, 'results.json');
  const wl = join(work, 'workloads', `workload-p${P}.json`);
  const workloadFile = existsSync(wl) ? wl : null;
  if (!existsSync(resultsPath)) {
    return {
      side: { status: 'failed', reason: `run.sh exited ${r.code ?? r.signal}${r.timedOut ? ' (stopped)' : ''} without results.json`, metrics: {}, elapsed_s: r.elapsed_s },
      workloadFile,
      machine: null,
    };
  }
  const results = JSON.parse(readFileSync(resultsPath, 'utf8')) as { machine?: Record<string, unknown>; summary?: NeutronRow[]; runs?: unknown[] };
  const row = results.summary?.find((s) => s.P === P && s.ipset === mode);
  if (!row) return { side: { status: 'failed', reason: 'no summary row in results.json', metrics: {}, elapsed_s: r.elapsed_s }, workloadFile, machine: null };
  if (row.failed) {
    return {
      side: { status: 'failed', reason: `failed: ${row.failed}`, metrics: {}, elapsed_s: r.elapsed_s, load_at_start: load, raw: row },
      workloadFile,
      machine: results.machine ?? null,
    };
  }
  return {
    side: { status: 'ok', metrics: neutronMetrics(row), elapsed_s: round3(r.elapsed_s), load_at_start: load, raw: row },
    workloadFile,
    machine: results.machine ?? null,
  };
}

// ------------------------------------------------------------------- virtfw

const round3 = (x: number) => Number(x.toFixed(3));
const round6 = (x: number) => Number(x.toFixed(6));

/** The child's command: plain node on an esbuild bundle (production-like), or tsx. */
function childCommand(scratch: string): { argv: string[]; how: string } {
  const esbuild = join(ROOT, 'node_modules', '.bin', 'esbuild');
  if (env.VIRTFW_RUNNER !== 'tsx' && existsSync(esbuild)) {
    const bundle = join(scratch, 'virtfw-run.mjs');
    const r = spawnSync(
      esbuild,
      [join(HERE, 'virtfw-run.ts'), '--bundle', '--platform=node', '--format=esm', '--target=node20', `--outfile=${bundle}`, '--log-level=warning'],
      { encoding: 'utf8' },
    );
    if (r.status === 0) return { argv: [process.execPath, bundle], how: 'node on an esbuild bundle of bench/virtfw-run.ts + src (compiled JS, as `node dist/...` runs)' };
    log(`esbuild failed (${r.stderr.trim()}); falling back to tsx`);
  }
  return { argv: [join(ROOT, 'node_modules', '.bin', 'tsx'), join(HERE, 'virtfw-run.ts')], how: 'tsx bench/virtfw-run.ts' };
}

function parseChildJson(r: ChildResult): Record<string, unknown> | null {
  const line = r.stdout
    .split('\n')
    .reverse()
    .find((l) => l.startsWith('{'));
  if (!line) return null;
  try {
    return JSON.parse(line) as Record<string, unknown>;
  } catch {
    return null;
  }
}

interface VirtfwRun {
  failed?: string;
  phases?: {
    prepare_all?: { wall_s: number; restore_subprocess_s: number };
    member_add?: { median_wall_s: number; samples?: { wall_s: number }[] };
    rule_add?: { median_wall_s: number };
    remove_all?: { wall_s: number; excl_conntrack_s: number; conntrack_s: number };
  };
  counts?: {
    after_prepare?: {
      rules_v4: number;
      rules_v6: number;
      bridge_rules: number;
      bridge_set_elements?: number;
      inet?: { rules: number; instance_rules: number; set_elements: number; map_elements: number };
      ipset_members: number;
    };
  };
  peak_rss_kb?: number;
}

interface ToolsRun {
  failed?: string;
  tools_only_s?: number;
  notes?: string[];
}

/** ipset / expand: the iptables driver with that memberMatch; nftables: the nftables driver. */
type VirtfwVariant = 'ipset' | 'expand' | 'nftables';

async function runVirtfw(P: number, variant: VirtfwVariant, workloadFile: string, command: string[], round: number): Promise<Side> {
  const base = `${NS_PREFIX}-p${P}-${variant === 'nftables' ? 'nft' : variant}${round}`;
  const driverArgs = variant === 'nftables' ? ['--driver', 'nftables'] : ['--driver', 'iptables', '--member-match', variant];
  const exec = async (ns: string, extra: string[], label: string) => {
    addNamespace(ns);
    try {
      return await runChild(label, [...command, '--workload', workloadFile, ...driverArgs, '--ns', ns, ...extra], { timeoutS: VIRTFW_TIMEOUT });
    } finally {
      deleteNamespace(ns);
    }
  };
  const load = await waitQuiet(`virtfw P=${P} ${variant}`);
  log(`virtfw P=${P} ${variant} run ${round + 1}/${VIRTFW_RUNS} (netns ${base})`);
  const runResult = await exec(base, [], `virtfw p${P} ${variant}`);
  const run = parseChildJson(runResult) as VirtfwRun | null;
  log(`virtfw P=${P} ${variant} tools only (netns ${base}-t)`);
  const toolsResult = await exec(`${base}-t`, ['--tools-only'], `virtfw p${P} ${variant} tools`);
  const tools = parseChildJson(toolsResult) as ToolsRun | null;

  if (!run) {
    const tail = runResult.stderr.trim().split('\n').slice(-3).join(' | ');
    return { status: 'failed', reason: `child exited ${runResult.code ?? runResult.signal}${runResult.timedOut ? ' (timed out)' : ''} without a result: ${tail}`, metrics: {}, elapsed_s: round3(runResult.elapsed_s) };
  }
  const ph = run.phases ?? {};
  const c = run.counts?.after_prepare;
  const metrics: Metrics = {
    prepare_all_s: ph.prepare_all?.wall_s,
    tools_only_s: tools && !tools.failed ? tools.tools_only_s : undefined,
    restore_subprocess_s: ph.prepare_all?.restore_subprocess_s,
    rules_v4: c?.rules_v4,
    rules_v6: c?.rules_v6,
    bridge_rules: c?.bridge_rules,
    bridge_set_elements: c?.bridge_set_elements,
    inet_rules: c?.inet?.rules,
    inet_instance_rules: c?.inet?.instance_rules,
    inet_set_elements: c?.inet?.set_elements,
    inet_map_elements: c?.inet?.map_elements,
    ipset_members: c?.ipset_members,
    member_add_s: ph.member_add?.median_wall_s,
    member_add_samples_s: ph.member_add?.samples?.map((x) => x.wall_s),
    rule_add_s: ph.rule_add?.median_wall_s,
    remove_all_s: ph.remove_all?.excl_conntrack_s,
    conntrack_cleanup_s: ph.remove_all?.conntrack_s,
    peak_rss_mb: !run.failed && run.peak_rss_kb !== undefined ? run.peak_rss_kb / MB : undefined,
  };
  const reasons: string[] = [];
  if (run.failed) reasons.push(run.failed);
  if (!tools) reasons.push(`tools-only child exited ${toolsResult.code ?? toolsResult.signal} without a result`);
  else if (tools.failed) reasons.push(`tools-only: ${tools.failed}`);
  return {
    status: run.failed ? 'failed' : 'ok',
    ...(reasons.length ? { reason: reasons.join('; ') } : {}),
    metrics,
    elapsed_s: round3(runResult.elapsed_s + toolsResult.elapsed_s),
    load_at_start: load,
    raw: { run, tools },
  };
}

const VARIANTS: readonly VirtfwVariant[] = ['ipset', 'expand', 'nftables'];

/** Every virtfw variant VIRTFW_RUNS times, interleaved (so a noisy spell hits all of them alike). */
async function runVirtfwAll(P: number, workloadFile: string, command: string[]): Promise<Record<VirtfwVariant, Side>> {
  const runs: Record<VirtfwVariant, Side[]> = { ipset: [], expand: [], nftables: [] };
  for (let round = 0; round < VIRTFW_RUNS; round++) {
    for (const variant of VARIANTS) runs[variant].push(await runVirtfw(P, variant, workloadFile, command, round));
  }
  return { ipset: combineRuns(runs.ipset), expand: combineRuns(runs.expand), nftables: combineRuns(runs.nftables) };
}

/**
 * One figure per metric from several fresh runs: the median (member_add_s:
 * the median of every event of every run; peak RSS: the largest). A failed
 * run makes the side failed. `raw` is the run with the median prepare_all_s,
 * with every run's metrics beside it.
 */
function combineRuns(sides: readonly Side[]): Side {
  const failed = sides.find((s) => s.status !== 'ok');
  if (failed || sides.length === 1) return failed ?? (sides[0] as Side);
  const metrics: Metrics = {};
  const keys = new Set(sides.flatMap((s) => Object.keys(s.metrics))) as Set<keyof Metrics>;
  for (const key of keys) {
    const values = sides.map((s) => s.metrics[key]).filter((v): v is number => typeof v === 'number');
    if (values.length === sides.length) (metrics as Record<string, number>)[key] = round6(medianOf(values));
  }
  const samples = sides.flatMap((s) => s.metrics.member_add_samples_s ?? []);
  if (samples.length) {
    metrics.member_add_samples_s = samples;
    metrics.member_add_s = round6(medianOf(samples));
  }
  const rss = sides.map((s) => s.metrics.peak_rss_mb).filter((v): v is number => typeof v === 'number');
  if (rss.length) metrics.peak_rss_mb = Math.max(...rss);
  const byPrepare = [...sides].sort((a, b) => (a.metrics.prepare_all_s ?? 0) - (b.metrics.prepare_all_s ?? 0));
  const middle = byPrepare[(byPrepare.length - 1) >> 1] as Side;
  return {
    status: 'ok',
    metrics,
    elapsed_s: round3(sides.reduce((n, s) => n + (s.elapsed_s ?? 0), 0)),
    load_at_start: sides[0]?.load_at_start,
    raw: { ...(middle.raw as object), runs: sides.map((s) => ({ metrics: s.metrics, load_at_start: s.load_at_start })) },
  };
}

// ----------------------------------------------------------------- workload

function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    return `{${Object.keys(obj)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(obj[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

function generateWorkload(P: number, scratch: string): string {
  const file = join(scratch, `workload-p${P}.json`);
  const argv =
    REPEATS === 3
      ? [join(NEUTRON_DIR, 'workload.py'), '--ports', String(P)]
      : [
          '-c',
          `import json, sys; sys.path.insert(0, ${JSON.stringify(NEUTRON_DIR)}); import workload as wl; ` +
            `print(json.dumps(wl.generate(${P}, member_add_repeats=${REPEATS}, rule_add_repeats=${REPEATS}), indent=1, sort_keys=True))`,
        ];
  const r = spawnSync(PY, argv, { encoding: 'utf8', maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`workload.py --ports ${P}: ${r.stderr.trim()}`);
  writeFileSync(file, r.stdout);
  return file;
}

// --------------------------------------------------------------------- main

/** The commit virtfw was measured at, and whether src/ had uncommitted changes. */
function sourceVersion(): string {
  const head = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).stdout.trim() || 'unknown';
  const dirty = spawnSync('git', ['status', '--porcelain', '--', 'src'], { cwd: ROOT, encoding: 'utf8' })
    .stdout.split('\n')
    .filter(Boolean).length;
  return dirty ? `${head} + uncommitted changes in ${dirty} src file(s)` : head;
}

function machineInfo(neutron: Record<string, unknown> | null): Record<string, string | number> {
  const dpkg = spawnSync('dpkg-query', ['-W', '-f', '${Version}', 'python3-neutron'], { encoding: 'utf8' }).stdout.trim();
  return {
    cores: cpus().length,
    cpu: cpus()[0]?.model ?? 'unknown',
    memory: `${(totalmem() / 2 ** 30).toFixed(1)} GiB`,
    kernel: firstLine(['uname', '-r']),
    iptables: firstLine(['iptables', '-V']),
    ipset: firstLine(['ipset', '-v']),
    nft: firstLine(['nft', '-v']),
    node: process.version,
    python: firstLine([PY, '--version']),
    'load average (1/5/15 min) at the end': loadavg()
      .map((x) => x.toFixed(2))
      .join(' '),
    neutron: `${typeof neutron?.neutron === 'string' ? neutron.neutron : 'unknown'}${dpkg ? ` (python3-neutron ${dpkg})` : ''}`,
  };
}

const STATIC_NOTES = [
  'Same workload on both sides: every virtfw run loads `workload.py --ports P` output and the report says whether it is identical to the `workload-p<P>.json` Neutron wrote. 10 groups × 10 rules, 5 off-host members per group; each port in exactly one group; `allowSameNetTraffic: false`; no provider rules.',
  'Neutron is `iptables_hybrid` (ML2/OVS hybrid plug) as its harness runs it: besides filtering it programs **conntrack zones** (raw PREROUTING, 3 rules per port and family), counted in its rules_v4/rules_v6. virtfw uses no zones (one conntrack table per host namespace), so part of its rule advantage is work Neutron does and virtfw does not.',
  '**Allowed address pairs**: 1 port in 10 has one; Neutron adds an anti-spoof rule and a member address for it; virtfw has no such concept, so it programs slightly less (see each table\'s workload line).',
  'Anti-spoofing: Neutron does it in iptables (per-port `-s` chain with `--mac-source`, one rule per address); virtfw in an nftables bridge table (MAC, ARP, IPv4/IPv6 source, DHCP/RA server drops), whose rules are counted as bridge_rules and included in virtfw\'s total; per-VIF data the driver keeps in nft sets/maps is shown as bridge_set_elements (not rules, like ipset members).',
  'DHCP/RA: Neutron\'s server gives every port 5 provider rules (DHCP, DHCPv6, RA from anywhere). virtfw accepts DHCP replies from the subnet\'s DHCP server and RAs from its gateway in shared base chains; the workload names no subnets, so the bench puts ports in 10.10.0.0/16 (gateway .1, DHCP server .2) and 2001:db8:a::/64 (gateway ::1).',
  'Both sides put a comment on every rule (Neutron: descriptive text, `comment_iptables_rules=True`; virtfw: an identity hash) and both count `-A` lines of iptables-save/ip6tables-save over all tables.',
  'Timing scope: Neutron\'s harness subtracts its fake-RPC (server) time; virtfw\'s times include its VirtAPI reads (InMemoryVirtAPI; `virtapi_s` per phase in the JSON), which is slightly against virtfw. Neutron uses eventlet\'s green subprocess (≈10 ms polling floor per command) but skips the privsep daemon a real agent uses. Driver construction is excluded on both sides.',
  'conntrack: Neutron queues `conntrack -D` (4 per port) for async workers; its harness runs them after remove_all and reports them as conntrack_cleanup_s. virtfw (both drivers) cleans up in the background once the removed instances\' rules are gone, so it is not in its remove_all_s; its conntrack_cleanup_s is the wait for it right after remove_all (`await driver.connectionCleanupDone()`). The work differs: for more than 8 addresses per family virtfw first lists the table (`conntrack -L`, once per family) and deletes only addresses that have entries (none in these fresh namespaces), where Neutron runs every delete.',
  'Namespaces: Neutron\'s harness process runs inside its namespace, so it execs each tool directly; virtfw runs from outside with `netns` set, so every tool call (restores, saves, sysctl, conntrack) goes through the driver\'s NetnsRunner (`nsenter --net=…` or `ip netns exec`), one more exec per call (a few ms).',
  'virtfw may run tools side by side (e.g. both families at once): its subprocess and restore times are the time at least one such tool was running (the union of the calls), not their sum; the JSON has both per tool (`busy_s`, `s`).',
  'virtfw turns on `net.bridge.bridge-nf-call-ip(6)tables` during its first apply (a sysctl in its namespace), inside prepare_all_s; Neutron only warns that br_netfilter is missing.',
  'Peak RSS: Neutron = `ru_maxrss` of its harness process (Python with Neutron, oslo and eventlet imported) as the harness records it; virtfw = `process.resourceUsage().maxRSS` of the child at its end (VmHWM agrees). Neither includes the tools they spawn.',
  'Neutron with ipset off has a known bug (its README): a partial refresh drops group 0\'s IPv6 members, so its member_add/rule_add include spurious work.',
  'virtfw nftables column: `NftablesFirewallDriver` on the same workload, with the same phases, accounting and namespace wrapper as the iptables columns. It writes IPv4, IPv6, the remote groups\' member sets, the dispatch maps and the bridge table in **one `nft -f` transaction** per apply (prepare_all: one; a member added: one `add element` line), where the iptables driver runs `iptables-restore` and `ip6tables-restore` side by side, `ipset restore` and an `nft -f` for the bridge table. Its restore_subprocess_s is the time inside that one `nft -f`.',
  'Dispatch by verdict maps: the nftables driver reaches an instance\'s chains through verdict maps keyed by address, device or bridge-port mark, one element per instance address/device rather than jump rules, and its remote-group members are nft named sets (like ipset). Rule counts are therefore not like for like with the iptables columns: elements are shown on their own rows (inet_set_elements: member sets; inet_map_elements: dispatch maps), as ipset members are. Kernel rules total = v4 + v6 + bridge + inet (the nft inet table).',
  'Bridge table with the nftables driver: frames bridged to a VIF get a packet mark in the bridge forward hook naming the ingress chain of the VIF\'s instance (a one-rule `mark-<n>` chain per distinct ingress chain, chosen by a verdict map keyed by the output port), so its bridge_rules are one per distinct list of groups more than the iptables driver\'s; they are in its total.',
  'The nftables driver looks for other firewalls on its devices as its first batch starts (`iptables-legacy-save`, `ip6tables-legacy-save` and `nft list ruleset` side by side, then `iptables-nft-save` / `ip6tables-nft-save` for a family whose tables the nft listing shows: none in the fresh namespace), inside its prepare_all_s as in production. Its rules_v4/rules_v6 (iptables-save / ip6tables-save `-A` lines) are shown for comparability and should be 0.',
  'tools_only_s for nftables: one `nft -f -` of `renderRuleset().nft` (inet and bridge tables in one script), rendered with a FakeKernel, into an empty namespace; the JSON records whether it equals (as a set of lines) the one transaction the driver wrote in its prepare_all.',
  'Neutron(ipset on) / virtfw(nftables) compares Neutron on iptables-nft with virtfw on native nftables; virtfw iptables(ipset) / virtfw nftables compares virtfw\'s two drivers in the same run (time rows: iptables ÷ nftables, > 1 = nftables faster; count and memory rows: nftables ÷ iptables).',
  'Other work on the machine skews every time in both columns: the load average at the start and end of the run, and when each run started, is printed; compare only figures from runs on a quiet machine.',
  'Neutron: every figure is one run (member_add/rule_add: median of REPEATS events). virtfw: each variant ran VIRTFW_RUNS times per size, interleaved (ipset, expand, nftables, ipset, ...), each in a fresh process and namespace; each figure is the median of the runs (member_add_s: the median of every event of every run; peak RSS: the largest); the JSON keeps every run\'s metrics. Expect ±10–20 % run-to-run noise on 2 cores, more for values under 50 ms.',
];

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) {
    console.error('bench:compare must run as root (network namespaces, iptables)');
    process.exit(1);
  }
  const started = new Date();
  const stamp = started.toISOString().replace(/:/g, '-').replace(/\.\d+Z$/, 'Z');
  mkdirSync(RESULTS, { recursive: true });
  const scratch = mkdtempSync(join('/tmp', `${NS_PREFIX}-`));
  scratchDir = scratch;
  const partial = join(RESULTS, `compare-${stamp}.json.tmp`);
  const loadAtStart = loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');
  log(`sizes ${SIZES.join(' ')}; scratch ${scratch}; namespaces ${NS_PREFIX}-*; load average ${loadAtStart}`);
  const { argv: command, how } = childCommand(scratch);
  const floorKb = Number(spawnSync(process.execPath, ['-e', 'console.log(process.resourceUsage().maxRSS)'], { encoding: 'utf8' }).stdout.trim());

  const sizes: SizeResult[] = [];
  let neutronMachine: Record<string, unknown> | null = null;
  const config = {
    sizes: SIZES,
    repeats: REPEATS,
    virtfw_runs: VIRTFW_RUNS,
    neutron_run_timeout_s: RUN_TIMEOUT,
    neutron_ipset_off_max: OFF_MAX,
    quiet_wait_s: QUIET_WAIT,
    neutron_driver: 'iptables_hybrid (iptables-nft)',
    virtfw_child: how,
    virtfw_options: 'iptables: { netns, memberMatch, allowSameNetTraffic: false }; nftables: { netns, allowSameNetTraffic: false } (others default)',
    virtfw_source: sourceVersion(),
  };
  try {
    for (const P of SIZES) {
      const on = await runNeutron(P, 'on', scratch);
      neutronMachine ??= on.machine;
      const off = await runNeutron(P, 'off', scratch);
      neutronMachine ??= off.machine;
      const workloadFile = generateWorkload(P, scratch);
      const ours = readWorkload(workloadFile);
      const identical = on.workloadFile ? canonical(workloadCore(readWorkload(on.workloadFile))) === canonical(workloadCore(ours)) : null;
      const aap = ours.ports.reduce((n, p) => n + p.allowed_address_pairs.length, 0);
      const { ipset: virtfwIpset, expand: virtfwExpand, nftables: virtfwNft } = await runVirtfwAll(P, workloadFile, command);
      sizes.push({
        P,
        workload: { file: workloadFile.replace(`${scratch}/`, '<scratch>/'), identical_to_neutron: identical, allowed_address_pairs: aap },
        neutron_on: on.side,
        neutron_off: off.side,
        virtfw_ipset: virtfwIpset,
        virtfw_expand: virtfwExpand,
        virtfw_nftables: virtfwNft,
      });
      writeFileSync(partial, JSON.stringify({ started: started.toISOString(), config, sizes }, null, 1));
    }
  } finally {
    cleanup();
    removeScratch();
  }

  const finished = new Date();
  const notes = [...STATIC_NOTES];
  const skipped = sizes.filter((s) => s.neutron_off.status === 'skipped').map((s) => s.P);
  if (skipped.length) notes.unshift(`Neutron with ipset off was **skipped** at P=${skipped.join(', ')} (NEUTRON_IPSET_OFF_MAX=${OFF_MAX}) to keep the run bounded; its P=1000 run is known to hit the ${RUN_TIMEOUT} s cap (rc=124). Set NEUTRON_IPSET_OFF_MAX=1000 to run it anyway.`);
  const ipsetFailures = sizes.filter((s) => s.virtfw_ipset.status !== 'ok');
  if (ipsetFailures.length) {
    notes.unshift(
      `virtfw with \`memberMatch: ipset\` **failed** at P=${ipsetFailures.map((s) => s.P).join(', ')}: ${ipsetFailures[0]?.virtfw_ipset.reason ?? ''}. Its targets are therefore FAIL in this run; the virtfw expand column is the working mode.`,
    );
  }
  const nftFailures = sizes.filter((s) => s.virtfw_nftables.status !== 'ok');
  if (nftFailures.length) {
    notes.unshift(
      `virtfw's **nftables driver failed** at P=${nftFailures.map((s) => s.P).join(', ')}: ${nftFailures[0]?.virtfw_nftables.reason ?? ''}. Its targets are therefore FAIL in this run.`,
    );
  }
  const busiest = Math.max(
    ...sizes.flatMap((s) => [s.neutron_on, s.neutron_off, s.virtfw_ipset, s.virtfw_expand, s.virtfw_nftables].map((side) => side.load_at_start ?? 0)),
  );
  // The measured run itself keeps about one core busy; more than the core count means other work competed.
  if (busiest > cpus().length) {
    notes.unshift(
      `**The machine was not quiet**: the 1-minute load average reached ${busiest.toFixed(2)} on ${cpus().length} cores when a run started (see each size). Times of both sides are inflated by an unknown, uneven amount; re-run on a quiet machine before drawing conclusions from ratios.`,
    );
  }
  const differs = sizes.filter((s) => s.workload.identical_to_neutron === false).map((s) => s.P);
  if (differs.length) notes.unshift(`**The virtfw workload differs from Neutron's** at P=${differs.join(', ')}: the comparison is not like for like there.`);
  notes.push(`virtfw child: ${how}; a bare \`node -e\` process on this machine peaks at ${(floorKb / MB).toFixed(1)} MB (tsx adds about 30 MB more).`);

  const doc: CompareDocument = {
    format: 'virtfw-bench-compare/2',
    started: started.toISOString(),
    finished: finished.toISOString(),
    duration_s: round3((finished.getTime() - started.getTime()) / 1000),
    machine: { ...machineInfo(neutronMachine), 'load average (1/5/15 min) at the start': loadAtStart },
    config,
    sizes,
    targets: evaluateTargets(sizes),
    targets_nftables: evaluateNftTargets(sizes),
    notes,
  };
  const markdown = renderMarkdown(doc);
  writeFileSync(join(RESULTS, `compare-${stamp}.json`), `${JSON.stringify(doc, null, 1)}\n`);
  writeFileSync(join(RESULTS, `compare-${stamp}.md`), markdown);
  writeFileSync(join(RESULTS, 'latest.md.tmp'), markdown);
  renameSync(join(RESULTS, 'latest.md.tmp'), join(RESULTS, 'latest.md'));
  rmSync(partial, { force: true });
  process.stdout.write(`${markdown}\n`);
  log(`wrote bench/results/compare-${stamp}.{json,md} and bench/results/latest.md`);
  const left = listNamespaces().filter((ns) => ns.startsWith(`${NS_PREFIX}-`) || ns.startsWith('nbench-'));
  if (left.length) log(`WARNING: namespaces left: ${left.join(' ')}`);
}

await main();
