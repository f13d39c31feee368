/**
 * npm run bench:load — many host agents following one PostgreSQL store under
 * a steady stream of changes (a script, not a test).
 *
 *   npm run bench:load                                   # 50 agents, 10,000 instances, 100 changes/s for 60 s
 *   npm run bench:load -- --agents 5 --instances 1000 --seconds 10      # quick
 *
 * Flags (each also BENCH_LOAD_<NAME>, e.g. BENCH_LOAD_AGENTS=5):
 *   --agents 50 --instances 10000 --groups 100 --spread 5 (home hosts per group)
 *   --rate 100 (changes/s) --seconds 60 --writers 32 (writes in flight)
 *   --idle-seconds 10 (agents in sync, no changes: measured before the load)
 *   --deadline-factor 1.5  no write is started after factor x seconds (when the writes fall
 *                    behind the schedule, the rest is reported as not started)
 *   --agent-pool 2 (each agent's pool size, `?pool=`) --seed 1
 *   --agent-nice 0   niceness of the agents: with 10, the writer and PostgreSQL get the CPU first,
 *                    closer to real agents that each have a host of their own
 *   --exact          agents run the bench's dump driver (IptablesFirewallDriver + a SIGUSR2
 *                    dump), so the final check compares whole rulesets and in-memory kernels
 *   --keep-logs      keep the agents' logs (their directory is printed)
 *   --agent-node-args "--cpu-prof --cpu-prof-dir=/tmp/prof"   node flags of the agents (profiling)
 *   --results-dir bench/results   --no-results (print only)
 *   --sync-timeout 600 --drain-timeout 300 (seconds)
 *
 * What it does:
 *  1. a private PostgreSQL cluster (test/helpers/private-pg.ts, max_connections 400), database virtfw_bench;
 *  2. groups, rules and instances written through a Store in this process (see load-workload.ts);
 *  3. `node dist/cli/main.js agent --host host-NN --db URL?pool=N --dry-run --resync-interval 600
 *     --listen 127.0.0.1:PORT` per host (dist is rebuilt first if older than src), then waits
 *     until every agent has logged "host in sync" and applied the latest seq;
 *  4. `rate` changes a second for `seconds` through the same Store, open loop (mix: load-workload.ts MIX);
 *  5. waits until every agent has applied the last seq, then checks every host (load-verify.ts);
 *  6. latency per (agent, change): the agent's first "applied" log line with appliedSeq >= the
 *     change's seq (pino `time`) minus the change's `at` in the log; for the agents the change
 *     concerns (ConcernModel) and for every agent;
 *  7. pg_stat_activity and /proc sampled every second throughout (load-monitor.ts);
 *  8. prints a summary and writes bench/results/load-<date>.json and .md, and load-latest.md.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import type { DriverOptions } from '../src/drivers/options.js';
import type { Change, ChangeRecord, Store } from '../src/store/store.js';
import { PrivatePostgres } from '../test/helpers/private-pg.js';
import { AgentFleet, agentPort, writeDumpDriver, type RunningAgent } from './load-agents.js';
import { Monitor, allProcessTicks, commandOf, machineTicks, portsByPid, type ConnSample, type CpuSample } from './load-monitor.js';
import { loadProduct } from './load-product.js';
import { distribution, fmtDist, mdTable, median, parseMicros, rng, round, sleep, textTable, type Distribution } from './load-stats.js';
import { checkHost, type HostCheck } from './load-verify.js';
import { ConcernModel, LiveModel, MIX, loadInitialData, planChange, topology, type ChangeKind } from './load-workload.js';

// ---------------------------------------------------------------- arguments

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
const DATABASE = 'virtfw_bench';

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  if (i !== -1) return process.argv[i + 1];
  const eq = process.argv.find((a) => a.startsWith(`--${name}=`));
  if (eq) return eq.slice(name.length + 3);
  return process.env[`BENCH_LOAD_${name.toUpperCase().replace(/-/g, '_')}`];
}

function num(name: string, fallback: number): number {
  const v = flag(name);
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${name}: ${v} is not a non-negative number`);
  return n;
}

function bool(name: string): boolean {
  const env = process.env[`BENCH_LOAD_${name.toUpperCase().replace(/-/g, '_')}`];
  return process.argv.includes(`--${name}`) || env === '1' || env === 'true';
}

const cfg = {
  agents: num('agents', 50),
  instances: num('instances', 10_000),
  groups: num('groups', 100),
  spread: num('spread', 5),
  rate: num('rate', 100),
  seconds: num('seconds', 60),
  deadlineFactor: num('deadline-factor', 1.5),
  idleSeconds: num('idle-seconds', 10),
  writers: num('writers', 32),
  agentPool: num('agent-pool', 2),
  agentNice: num('agent-nice', 0),
  seed: num('seed', 1),
  exact: bool('exact'),
  agentNodeArgs: flag('agent-node-args') ?? '',
  keepLogs: bool('keep-logs'),
  results: !bool('no-results'),
  resultsDir: resolve(ROOT, flag('results-dir') ?? 'bench/results'),
  syncTimeoutS: num('sync-timeout', 600),
  drainTimeoutS: num('drain-timeout', 300),
};

const log = (msg: string) => process.stderr.write(`[load ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

// ------------------------------------------------------------------ helpers

/** Rebuilds dist when a source file is newer than its compiled file. */
function ensureBuilt(): void {
  const stale: string[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (name.endsWith('.ts')) {
        const out = join(ROOT, 'dist', relative(join(ROOT, 'src'), path)).replace(/\.ts$/, '.js');
        if (!existsSync(out) || statSync(out).mtimeMs < statSync(path).mtimeMs) stale.push(relative(ROOT, path));
      }
    }
  };
  walk(join(ROOT, 'src'));
  if (stale.length === 0) return;
  log(`dist is older than ${stale.length} source file(s) (${stale.slice(0, 3).join(', ')}...): npx tsc -p tsconfig.build.json`);
  const r = spawnSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'inherit' });
  if (r.status !== 0) throw new Error('the build failed');
}

function machine(pgVersion: string): Record<string, string | number> {
  const cpu = cpus();
  const debian = existsSync('/etc/debian_version') ? readFileSync('/etc/debian_version', 'utf8').trim() : 'unknown';
  return {
    cores: cpu.length,
    cpuModel: cpu[0]?.model ?? 'unknown',
    memoryGiB: round(totalmem() / 2 ** 30, 1),
    kernel: release(),
    debian,
    node: process.version,
    postgres: pgVersion,
  };
}

/** What the machine is doing before the bench starts anything: busy percent over 3 s, and the processes using the most CPU in it. */
async function backgroundCpu(): Promise<{ busyPercent: number; loadAverage: number[]; top: { pid: number; cpu: number; command: string }[] }> {
  const m0 = machineTicks();
  const p0 = allProcessTicks();
  const t0 = performance.now();
  await sleep(3000);
  const m1 = machineTicks();
  const p1 = allProcessTicks();
  const seconds = (performance.now() - t0) / 1000;
  const top = [...p1.entries()]
    .map(([pid, ticks]) => ({ pid, cpu: round(((ticks - (p0.get(pid) ?? ticks)) / 100 / seconds) * 100, 0) }))
    .filter((p) => p.cpu >= 5 && p.pid !== process.pid)
    .sort((a, b) => b.cpu - a.cpu)
    .slice(0, 5)
    .map((p) => ({ ...p, command: commandOf(p.pid).slice(0, 100) }));
  return { busyPercent: round(((m1.busy - m0.busy) / Math.max(1, m1.total - m0.total)) * 100 * cpus().length, 0), loadAverage: loadavg().map((l) => round(l, 2)), top };
}

/** The commit measured, and whether src/ had changes not committed (dist is built from the working tree). */
function sourceState(): { commit: string; uncommittedSrc: string[] } {
  const git = (args: string[]) => spawnSync('git', args, { cwd: ROOT, encoding: 'utf8' }).stdout ?? '';
  return {
    commit: git(['rev-parse', '--short', 'HEAD']).trim(),
    // porcelain lines are `XY path`: the leading status column may be a space
    uncommittedSrc: git(['status', '--porcelain', '--', 'src']).split('\n').filter((l) => l.length > 3).map((l) => l.slice(3)),
  };
}

async function waitFor(what: string, timeoutS: number, check: () => Promise<boolean> | boolean, every = 250): Promise<number> {
  const start = performance.now();
  for (;;) {
    if (await check()) return performance.now() - start;
    if (performance.now() - start > timeoutS * 1000) throw new Error(`timed out after ${timeoutS} s waiting for ${what}`);
    await sleep(every);
  }
}

async function allChanges(store: Store, after: number): Promise<ChangeRecord[]> {
  const out: ChangeRecord[] = [];
  let from = after;
  for (;;) {
    const batch = await store.changesSince(from, 1000);
    out.push(...batch);
    if (batch.length < 1000) return out;
    from = batch.at(-1)?.seq ?? from;
  }
}

function changeKind(c: Change): string {
  if (c.kind === 'instance-updated') return c.host !== c.previousHost ? 'instance-migrated' : c.networkChanged ? 'instance-network' : 'instance-groups';
  return c.kind;
}

// --------------------------------------------------------------------- state

let pgServer: PrivatePostgres | null = null;
let fleet: AgentFleet | null = null;
let workDir: string | null = null;
let cleaningUp = false;
/** keep the agents' logs when the run failed */
let failedRun = false;

async function cleanup(reason: string): Promise<void> {
  if (cleaningUp) return;
  cleaningUp = true;
  if (fleet) {
    const stopped = await fleet.stopAll(5000);
    log(`${reason}: agents stopped (${stopped.graceful} on SIGTERM, ${stopped.killed} killed)`);
  }
  pgServer?.stop();
  pgServer = null;
  if (workDir && !cfg.keepLogs && !failedRun) rmSync(workDir, { recursive: true, force: true });
}

process.on('exit', () => {
  // last resort (an uncaught error): our agents by PID; PrivatePostgres stops its own cluster on exit
  fleet?.killAllSync();
  if (workDir && !cfg.keepLogs && !failedRun) rmSync(workDir, { recursive: true, force: true });
});
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    log(`${sig}: stopping`);
    void cleanup(sig).finally(() => process.exit(130));
  });
}

// ---------------------------------------------------------------------- main

interface WriteRecord {
  kind: ChangeKind;
  due: number;
  start: number;
  end: number;
  error: string | null;
}

async function main(): Promise<void> {
  ensureBuilt();
  const product = await loadProduct(ROOT);
  const startedAt = new Date();
  const source = sourceState();
  const background = await backgroundCpu();
  log(`machine busy before the run: ${background.busyPercent}% of ${cpus().length * 100}% (load average ${background.loadAverage.join(' ')})${background.top.length ? `; top: ${background.top.map((p) => `${p.command} ${p.cpu}%`).join(', ')}` : ''}`);
  if (background.busyPercent > 20) log('WARNING: the machine is busy with other work; CPU-bound figures will be pessimistic');
  log(`config: ${JSON.stringify(cfg)}`);

  // ---------------------------------------------------------- PostgreSQL
  pgServer = await PrivatePostgres.start({ maxConnections: 400 });
  const admin = new pg.Client({ connectionString: pgServer.url(), application_name: 'virtfw-bench-admin' });
  await admin.connect();
  await admin.query(`create database ${DATABASE}`);
  const pgVersion = (await admin.query<{ v: string }>("select current_setting('server_version') as v")).rows[0]?.v ?? 'unknown';
  await admin.end();
  const dbUrl = pgServer.url(DATABASE);
  log(`PostgreSQL ${pgVersion} on port ${pgServer.port} (${pgServer.dir})`);

  process.env.PGAPPNAME = 'virtfw-bench-writer';
  const store = product.openStore(`${dbUrl}?pool=${cfg.writers + 2}`);
  await store.migrate();

  const monitor = new Monitor(dbUrl, DATABASE, cpus().length, () => (fleet ? fleet.running().map((a) => a.pid) : []), () => pgServer?.pid() ?? null);
  await monitor.start();

  try {
    // ------------------------------------------------------ initial data
    monitor.phase = 'load-data';
    const topo = topology(cfg.agents, cfg.groups, cfg.spread);
    const model = new LiveModel(topo);
    let t = performance.now();
    await loadInitialData(store, model, cfg.instances, cfg.writers, (m) => log(`initial data: ${m}`));
    const loadDataS = (performance.now() - t) / 1000;
    const seq0 = await store.latestChangeSeq();
    log(`initial data in ${loadDataS.toFixed(1)} s; change log at seq ${seq0}`);

    const concern = new ConcernModel(topo.hosts);
    for (const [id, inst] of model.instances) concern.addInstance(id, topo.hosts[inst.host] ?? '', inst.groups.map((g) => model.groupIds[g] ?? ''));
    for (const rule of await store.listRules(null)) if (rule.remoteGroupId !== null) concern.addReference(rule.securityGroupId, rule.remoteGroupId);
    const perHost = topo.hosts.map((h) => [...model.instances.values()].filter((i) => topo.hosts[i.host] === h).length);

    // ------------------------------------------------------------ agents
    monitor.phase = 'agents-start';
    workDir = mkdtempSync(join(tmpdir(), 'virtfw-load-'));
    const driverSpec = cfg.exact ? writeDumpDriver(workDir, join(ROOT, 'dist')) : undefined;
    fleet = new AgentFleet(join(ROOT, 'dist', 'cli', 'main.js'));
    const agentUrl = `${dbUrl}?pool=${cfg.agentPool}`;
    t = performance.now();
    const ports = new Set<number>();
    for (const host of topo.hosts) {
      fleet.start({
        host,
        port: await agentPort(ports),
        dbUrl: agentUrl,
        logFile: join(workDir, `${host}.log`),
        ...(driverSpec ? { driver: driverSpec, dumpFile: join(workDir, `${host}.dump.json`) } : {}),
        ...(cfg.agentNice ? { nice: cfg.agentNice } : {}),
        ...(cfg.agentNodeArgs ? { nodeArgs: cfg.agentNodeArgs.split(/\s+/).filter(Boolean) } : {}),
      });
    }
    const agents = fleet.agents;
    log(`${agents.length} agents started (logs in ${workDir}); waiting for their initial sync`);
    const running = fleet;
    await waitFor('every agent in sync', cfg.syncTimeoutS, () => {
      running.pollLogs();
      const dead = agents.filter((a) => a.exited);
      if (dead.length) {
        running.pollLogs();
        failedRun = true;
        throw new Error(
          `agent(s) exited during start: ${dead.map((a) => `${a.spec.host} (exit ${a.exited?.code}): ${[...a.log.issues.map((i) => `${i.msg} ${i.detail}`), ...a.log.nonJson.filter((l) => !/Deprecation|trace-warnings/.test(l))].join(' | ').slice(0, 600)}`).join('; ')} (logs kept in ${workDir})`,
        );
      }
      return agents.every((a) => a.log.inSyncAt !== null && a.log.appliedSeq >= seq0);
    }, 500);
    const agentsInSyncS = (performance.now() - t) / 1000;
    await waitFor('every agent status report in the store', 30, async () => {
      const rows = await store.listAgentStatus();
      return rows.length >= agents.length && rows.every((r) => r.appliedSeq >= seq0);
    });
    log(`all ${agents.length} agents in sync after ${agentsInSyncS.toFixed(1)} s`);

    monitor.phase = 'idle';
    await sleep(cfg.idleSeconds * 1000);

    // -------------------------------------------------------------- load
    monitor.phase = 'load';
    const random = rng(cfg.seed);
    const total = Math.round(cfg.rate * cfg.seconds);
    const interval = 1000 / cfg.rate;
    const writes: WriteRecord[] = [];
    let inflight = 0;
    let skipped = 0;
    let slot: (() => void) | null = null;
    const pending = new Set<Promise<void>>();
    let attribution: Promise<Awaited<ReturnType<typeof attributeConnections>> | null> | null = null;
    const loadStart = performance.now();
    const loadStartWall = Date.now();
    let nextPoll = loadStart + 500;
    const deadline = loadStart + cfg.seconds * cfg.deadlineFactor * 1000;
    let behind = 0;
    for (let k = 0; k < total; k++) {
      const due = loadStart + k * interval;
      let now = performance.now();
      if (due > now) await sleep(due - now);
      while (inflight >= cfg.writers) await new Promise<void>((r) => (slot = r));
      now = performance.now();
      if (now > deadline) {
        // open loop with a deadline: what could not be started in time is not written
        behind = total - k;
        log(`load deadline (${cfg.deadlineFactor} x ${cfg.seconds} s) reached with ${behind} changes not started`);
        break;
      }
      if (now > nextPoll) {
        fleet.pollLogs();
        nextPoll = now + 500;
        if (attribution === null && now - loadStart > (cfg.seconds * 1000) / 2) attribution = attributeConnections(monitor, agents).catch(() => null);
      }
      const plan = planChange(model, random);
      if (!plan) {
        skipped++;
        continue;
      }
      for (const key of plan.keys) model.busy.add(key);
      inflight++;
      const rec: WriteRecord = { kind: plan.kind, due, start: now, end: 0, error: null };
      writes.push(rec);
      const p = plan
        .exec(store)
        .then((effect) => {
          plan.commit();
          if (effect) concern.queueRuleEffect(effect);
        })
        .catch((err: unknown) => {
          rec.error = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
        })
        .finally(() => {
          rec.end = performance.now();
          for (const key of plan.keys) model.busy.delete(key);
          inflight--;
          pending.delete(p);
          const wake = slot;
          slot = null;
          wake?.();
        });
      pending.add(p);
    }
    await Promise.all([...pending]);
    const loadEnd = performance.now();
    const lastCommitWall = Date.now();
    const finalSeq = await store.latestChangeSeq();
    log(`load done: ${writes.length} writes in ${((loadEnd - loadStart) / 1000).toFixed(1)} s (${writes.filter((w) => w.error).length} failed, ${skipped} not planned, ${behind} not started by the deadline); latest seq ${finalSeq}`);
    const attributed = attribution ? await attribution : null;

    // ------------------------------------------------------------- drain
    monitor.phase = 'drain';
    let drainTimedOut = false;
    try {
      await waitFor('every agent to apply the last change', cfg.drainTimeoutS, () => {
        running.pollLogs();
        return agents.every((a) => a.exited !== null || a.log.appliedSeq >= finalSeq);
      });
    } catch (err) {
      drainTimedOut = true;
      log((err as Error).message);
    }
    fleet.pollLogs();
    const lastApplied = Math.max(...agents.map((a) => a.log.appliedAt(finalSeq) ?? 0));
    const drainS = lastApplied > 0 ? (lastApplied - lastCommitWall) / 1000 : null;
    log(`drained: last agent applied seq ${finalSeq} ${drainS === null ? 'never' : `${drainS.toFixed(2)} s after the last write returned`}`);
    let reportedInStore = false;
    try {
      await waitFor('status reports in the store', 15, async () => (await store.listAgentStatus()).every((r) => r.appliedSeq >= finalSeq));
      reportedInStore = true;
    } catch (err) {
      log((err as Error).message);
    }
    const agentRows = await store.listAgentStatus();

    // ------------------------------------------------------------ verify
    monitor.phase = 'verify';
    log('checking every host against a fresh render from the database');
    const checks: HostCheck[] = [];
    for (const a of agents) {
      try {
        checks.push(await checkHost(product, store, a, finalSeq));
      } catch (err) {
        checks.push({
          host: a.spec.host, ok: false, problems: [`check failed: ${(err as Error).message}`], instancesInStore: 0, instancesAtAgent: 0, notFiltered: 0,
          agentCounts: {}, freshCounts: {}, appliedSeqMetric: null, applyErrors: null, driftRepairs: null,
          exact: 'unavailable', exactSource: null, kernel: 'unavailable', orderOnly: [],
        });
      }
    }
    log(`verification: ${checks.filter((c) => c.ok).length}/${checks.length} hosts ok`);

    // ------------------------------------------------------ measurements
    const changes = await allChanges(store, seq0);
    monitor.phase = 'stop';
    await sleep(1100); // one more sample
    await monitor.stop();
    const stopped = await fleet.stopAll(15_000);
    const agentExits = agents.map((a) => ({ host: a.spec.host, code: a.exited?.code ?? null, signal: a.exited?.signal ?? null }));
    await store.close();

    const result = analyse({
      startedAt,
      source,
      background,
      agentDriverOptions: product.agentDriverOptions,
      pgVersion,
      topoHosts: topo.hosts,
      perHost,
      seq0,
      finalSeq,
      loadDataS,
      agentsInSyncS,
      agents,
      writes,
      skipped,
      behind,
      loadStart,
      loadEnd,
      loadStartWall,
      changes,
      concern,
      conns: monitor.conns,
      cpu: monitor.cpu,
      checks,
      drainS,
      drainTimedOut,
      reportedInStore,
      agentRows: agentRows.map((r) => ({ host: r.host, appliedSeq: r.appliedSeq, lastError: r.lastError, updatedAt: r.updatedAt })),
      attributed,
      stopped,
      agentExits,
      workDir,
    });
    report(result);
  } finally {
    await monitor.stop().catch(() => undefined);
    await store.close().catch(() => undefined);
    await cleanup('done');
  }
}

/** Pool and LISTEN connections per agent, from client ports (pg_stat_activity) and the agents' sockets (/proc). */
async function attributeConnections(monitor: Monitor, agents: RunningAgent[]): Promise<{ perAgent: Record<string, { pool: number; listener: number }>; unattributed: number }> {
  const rows = await monitor.activity();
  const owner = portsByPid(agents.filter((a) => !a.exited).map((a) => a.pid));
  const hostOf = new Map(agents.map((a) => [a.pid, a.spec.host]));
  const perAgent: Record<string, { pool: number; listener: number }> = {};
  let unattributed = 0;
  for (const r of rows) {
    const pid = owner.get(r.port);
    const host = pid === undefined ? undefined : hostOf.get(pid);
    if (!host) {
      if (!r.app.startsWith('virtfw-bench')) unattributed++;
      continue;
    }
    const entry = (perAgent[host] ??= { pool: 0, listener: 0 });
    if (r.app === 'virtfw-listener') entry.listener++;
    else entry.pool++;
  }
  return { perAgent, unattributed };
}

// ------------------------------------------------------------------ analysis

interface AnalysisInput {
  startedAt: Date;
  source: ReturnType<typeof sourceState>;
  background: Awaited<ReturnType<typeof backgroundCpu>>;
  agentDriverOptions: DriverOptions;
  pgVersion: string;
  topoHosts: string[];
  perHost: number[];
  seq0: number;
  finalSeq: number;
  loadDataS: number;
  agentsInSyncS: number;
  agents: RunningAgent[];
  writes: WriteRecord[];
  skipped: number;
  behind: number;
  loadStart: number;
  loadEnd: number;
  loadStartWall: number;
  changes: ChangeRecord[];
  concern: ConcernModel;
  conns: ConnSample[];
  cpu: CpuSample[];
  checks: HostCheck[];
  drainS: number | null;
  drainTimedOut: boolean;
  reportedInStore: boolean;
  agentRows: { host: string; appliedSeq: number; lastError: string | null; updatedAt: string }[];
  attributed: { perAgent: Record<string, { pool: number; listener: number }>; unattributed: number } | null;
  stopped: { graceful: number; killed: number };
  agentExits: { host: string; code: number | null; signal: string | null }[];
  workDir: string;
}

function analyse(x: AnalysisInput) {
  // -- propagation latency
  const concerned: number[] = [];
  const everyAgent: number[] = [];
  const byKind = new Map<string, number[]>();
  const perAgent = new Map<string, number[]>();
  const concernedCounts: number[] = [];
  const perSecond = new Map<number, { n: number; lat: number[] }>();
  let missing = 0;
  for (const rec of x.changes) {
    const hosts = x.concern.process(rec.change);
    concernedCounts.push(hosts.size);
    const at = parseMicros(rec.at);
    const kind = changeKind(rec.change);
    const second = Math.floor((at - x.loadStartWall) / 1000);
    const bucket = perSecond.get(second) ?? { n: 0, lat: [] };
    bucket.n++;
    perSecond.set(second, bucket);
    for (const a of x.agents) {
      const applied = a.log.appliedAt(rec.seq);
      if (applied === null) {
        if (hosts.has(a.spec.host)) missing++;
        continue;
      }
      const ms = applied - at;
      everyAgent.push(ms);
      if (!hosts.has(a.spec.host)) continue;
      concerned.push(ms);
      bucket.lat.push(ms);
      let k = byKind.get(kind);
      if (!k) byKind.set(kind, (k = []));
      k.push(ms);
      let p = perAgent.get(a.spec.host);
      if (!p) perAgent.set(a.spec.host, (p = []));
      p.push(ms);
    }
  }
  const agentP99 = [...perAgent.entries()].map(([host, v]) => ({ host, ...distribution(v) }) as { host: string } & Distribution).sort((a, b) => b.p99 - a.p99);

  // -- backlog: committed seq minus each agent's applied seq, once a second
  const commitTimes = x.changes.map((c) => parseMicros(c.at));
  let maxBacklog = { seqs: 0, host: '', atS: 0 };
  const endWall = Math.max(...x.agents.map((a) => a.log.times.at(-1) ?? 0));
  for (let w = x.loadStartWall; w <= endWall; w += 1000) {
    let lo = 0;
    let hi = commitTimes.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((commitTimes[mid] ?? 0) <= w) lo = mid + 1;
      else hi = mid;
    }
    const committed = lo === 0 ? x.seq0 : (x.changes[lo - 1]?.seq ?? x.seq0);
    for (const a of x.agents) {
      let i = a.log.times.length - 1;
      while (i >= 0 && (a.log.times[i] ?? 0) > w) i--;
      const applied = i >= 0 ? (a.log.seqs[i] ?? 0) : 0;
      if (committed - applied > maxBacklog.seqs) maxBacklog = { seqs: committed - applied, host: a.spec.host, atS: round((w - x.loadStartWall) / 1000, 0) };
    }
  }

  // -- writes
  const loadS = (x.loadEnd - x.loadStart) / 1000;
  const failed = x.writes.filter((w) => w.error);
  const failuresByKind: Record<string, number> = {};
  for (const w of failed) failuresByKind[w.kind] = (failuresByKind[w.kind] ?? 0) + 1;
  const writesByKind: Record<string, number> = {};
  for (const w of x.writes) writesByKind[w.kind] = (writesByKind[w.kind] ?? 0) + 1;
  const changesByKind: Record<string, number> = {};
  for (const c of x.changes) changesByKind[changeKind(c.change)] = (changesByKind[changeKind(c.change)] ?? 0) + 1;

  // -- connections
  const phaseConns = (phase: string) => x.conns.filter((s) => s.phase === phase);
  const connStats = (samples: ConnSample[]) =>
    samples.length === 0
      ? null
      : {
          samples: samples.length,
          peakTotal: Math.max(...samples.map((s) => s.total)),
          medianTotal: median(samples.map((s) => s.total)),
          medianAgentPool: median(samples.map((s) => s.agentPool)),
          peakAgentPool: Math.max(...samples.map((s) => s.agentPool)),
          medianListener: median(samples.map((s) => s.listener)),
          medianBench: median(samples.map((s) => s.bench)),
          medianActive: median(samples.map((s) => s.byState.active ?? 0)),
          peakActive: Math.max(...samples.map((s) => s.byState.active ?? 0)),
          medianIdleInTx: median(samples.map((s) => s.byState['idle in transaction'] ?? 0)),
          medianTps: median(samples.map((s) => s.tps)),
          medianRowsPerSecond: median(samples.map((s) => s.rowsPerSecond)),
        };
  const phases = ['load-data', 'agents-start', 'idle', 'load', 'drain', 'verify'];
  const connections = Object.fromEntries(phases.map((p) => [p, connStats(phaseConns(p))]));
  const perAgentPeak: Record<string, number> = {};
  for (const s of x.conns) for (const [h, n] of Object.entries(s.perAgent)) perAgentPeak[h] = Math.max(perAgentPeak[h] ?? 0, n);
  const loadConns = phaseConns('load');
  const perAgentMedianLoad = x.topoHosts.map((h) => median(loadConns.map((s) => s.perAgent[h] ?? 0)));

  // -- cpu
  const cpuStats = (phase: string) => {
    const s = x.cpu.filter((c) => c.phase === phase);
    if (s.length === 0) return null;
    const avg = (f: (c: CpuSample) => number) => round(s.reduce((a, c) => a + f(c), 0) / s.length, 0);
    return {
      seconds: s.length,
      machineAvg: avg((c) => c.machine),
      machinePeak: round(Math.max(...s.map((c) => c.machine)), 0),
      agentsAvg: avg((c) => c.agents),
      postgresAvg: avg((c) => c.postgres),
      benchAvg: avg((c) => c.bench),
      otherAvg: avg((c) => Math.max(0, c.machine - c.agents - c.postgres - c.bench)),
      agentsRssMb: round(Math.max(...s.map((c) => c.agentsRssMb)), 0),
      maxAgentRssMb: round(Math.max(...s.map((c) => c.maxAgentRssMb)), 0),
      postgresAnonMb: round(Math.max(...s.map((c) => c.postgresAnonMb)), 0),
    };
  };
  const cpu = Object.fromEntries(phases.map((p) => [p, cpuStats(p)]));

  // -- agents' logs
  const issues: Record<string, number> = {};
  const issueSamples: { host: string; level: number; msg: string; detail: string }[] = [];
  const nonJson: { host: string; line: string }[] = [];
  for (const a of x.agents) {
    for (const [msg, n] of a.log.issueCounts) issues[msg] = (issues[msg] ?? 0) + n;
    for (const i of a.log.issues) if (issueSamples.length < 30) issueSamples.push({ host: a.spec.host, level: i.level, msg: i.msg, detail: i.detail });
    for (const line of a.log.nonJson) if (nonJson.length < 20) nonJson.push({ host: a.spec.host, line });
  }
  const batchSizes = x.agents.flatMap((a) => a.log.batchSizes);
  const loadBatches = x.agents.map((a) => a.log.batchSizes.length);

  const perSecondRows = [...perSecond.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([second, b]) => ({ second, commits: b.n, ...(distribution(b.lat) ?? {}) }));

  return {
    benchmark: 'virtfw bench:load',
    startedAt: x.startedAt.toISOString(),
    machine: machine(x.pgVersion),
    source: x.source,
    backgroundBeforeRun: x.background,
    loadAverageAtEnd: loadavg().map((l) => round(l, 2)),
    config: { ...cfg, resultsDir: relative(ROOT, cfg.resultsDir), mix: MIX, writePath: 'Store in the bench process (openStore on the same PostgreSQL), not the HTTP API' },
    scenario: {
      hosts: x.topoHosts.length,
      instancesPerHost: { min: Math.min(...x.perHost), max: Math.max(...x.perHost) },
      changeLogBefore: x.seq0,
      changeLogAfter: x.finalSeq,
    },
    phases: {
      initialDataSeconds: round(x.loadDataS, 1),
      initialDataInstancesPerSecond: round(cfg.instances / x.loadDataS, 0),
      agentsToAllInSyncSeconds: round(x.agentsInSyncS, 1),
      agentInitialSyncMs: distribution(x.agents.map((a) => a.log.inSyncMs ?? NaN).filter(Number.isFinite)),
      loadSeconds: round(loadS, 2),
      drainSecondsAfterLastWrite: x.drainS === null ? null : round(x.drainS, 2),
      drainTimedOut: x.drainTimedOut,
      statusReportsInStoreCaughtUp: x.reportedInStore,
    },
    writes: {
      planned: Math.round(cfg.rate * cfg.seconds),
      issued: x.writes.length,
      notPlanned: x.skipped,
      notStartedByDeadline: x.behind,
      failed: failed.length,
      failuresByKind,
      failureSamples: failed.slice(0, 5).map((w) => `${w.kind}: ${w.error}`),
      achievedPerSecond: round(x.writes.length / loadS, 1),
      byKind: writesByKind,
      latencyMs: distribution(x.writes.map((w) => w.end - w.start)),
      scheduleLagMs: distribution(x.writes.map((w) => Math.max(0, w.start - w.due))),
    },
    changes: { count: x.changes.length, byKind: changesByKind, concernedHostsPerChange: distribution(concernedCounts), unmatchedRuleChanges: x.concern.unmatchedRuleChanges },
    latencyMs: {
      method: "per (agent, change): the agent's first 'applied' log line (pino time) with appliedSeq >= the change's seq, minus the change's `at` (same clock)",
      concerned: distribution(concerned),
      everyAgent: distribution(everyAgent),
      missingConcerned: missing,
      byKind: Object.fromEntries([...byKind.entries()].map(([k, v]) => [k, distribution(v)])),
      slowestAgents: agentP99.slice(0, 5),
      fastestAgents: agentP99.slice(-3),
      maxBacklog,
      perSecond: perSecondRows,
    },
    agentBatches: { changesPerBatch: distribution(batchSizes), batchesPerAgent: distribution(loadBatches) },
    connections: {
      byPhase: connections,
      perAgentPeakPool: distribution(Object.values(perAgentPeak)),
      perAgentMedianPoolDuringLoad: distribution(perAgentMedianLoad),
      attributionMidLoad: x.attributed
        ? {
            agentsSeen: Object.keys(x.attributed.perAgent).length,
            pool: distribution(Object.values(x.attributed.perAgent).map((v) => v.pool)),
            listener: distribution(Object.values(x.attributed.perAgent).map((v) => v.listener)),
            unattributed: x.attributed.unattributed,
          }
        : null,
      samples: x.conns.map((s) => ({ t: s.t, phase: s.phase, total: s.total, agentPool: s.agentPool, listener: s.listener, bench: s.bench, byState: s.byState, tps: s.tps, rowsPerSecond: s.rowsPerSecond })),
    },
    cpu: { note: 'percent of one core (machine max = cores x 100)', byPhase: cpu, samples: x.cpu.map((c) => ({ ...c, machine: round(c.machine, 0), agents: round(c.agents, 0), postgres: round(c.postgres, 0), bench: round(c.bench, 0) })) },
    agentLogs: { issues, issueSamples, nonJson, fullSyncs: x.agents.reduce((a, g) => a + g.log.fullSyncs, 0), lines: x.agents.reduce((a, g) => a + g.log.lines, 0) },
    agentStatusInStore: { lagging: x.agentRows.filter((r) => r.appliedSeq !== x.finalSeq || r.lastError), count: x.agentRows.length },
    verification: {
      method:
        '/status instance set vs instancesOnHost; virtfw_rules{table} and virtfw_applied_change_seq from /metrics vs a fresh render (IptablesFirewallDriver over the store, FakeKernel, agent options); exact ruleset from GET /ruleset if the agent serves it, else with --exact from the dump driver (model + in-memory kernel)',
      hostsOk: x.checks.filter((c) => c.ok).length,
      hosts: x.checks.length,
      exact: countBy(x.checks.map((c) => c.exact)),
      exactSource: countBy(x.checks.map((c) => c.exactSource ?? 'none')),
      kernel: countBy(x.checks.map((c) => c.kernel)),
      dispatchOrderOnly: countBy(x.checks.flatMap((c) => c.orderOnly)),
      totalRules: x.checks.reduce<Record<string, number>>((a, c) => {
        for (const [t, n] of Object.entries(c.freshCounts)) a[t] = (a[t] ?? 0) + n;
        return a;
      }, {}),
      agentDriverOptions: x.agentDriverOptions,
      applyErrors: x.checks.reduce((a, c) => a + (c.applyErrors ?? 0), 0),
      driftRepairs: x.checks.reduce((a, c) => a + (c.driftRepairs ?? 0), 0),
      failures: x.checks.filter((c) => !c.ok),
      perHost: x.checks.map((c) => ({ host: c.host, ok: c.ok, instances: c.instancesInStore, counts: c.freshCounts, exact: c.exact, kernel: c.kernel })),
    },
    shutdown: { ...x.stopped, exits: countBy(x.agentExits.map((e) => `${e.code ?? e.signal}`)) },
    agentLogsKeptIn: cfg.keepLogs ? x.workDir : null,
  };
}

function countBy(values: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of values) out[v] = (out[v] ?? 0) + 1;
  return out;
}

type Result = ReturnType<typeof analyse>;

// -------------------------------------------------------------------- report

function summaryRows(r: Result): [string, string][] {
  const c = r.connections.byPhase;
  const cpu = r.cpu.byPhase;
  const cores = Number(r.machine.cores);
  const pct = (v: number | undefined) => (v === undefined ? 'n/a' : `${v}%`);
  return [
    ['scenario', `${r.scenario.hosts} agents, ${cfg.instances} instances (${r.scenario.instancesPerHost.min}-${r.scenario.instancesPerHost.max}/host), ${cfg.groups} groups, ${cfg.rate} changes/s for ${cfg.seconds} s, agent pool ${cfg.agentPool}${cfg.agentNice ? `, agents at nice ${cfg.agentNice}` : ''}`],
    ['initial data (Store, this process)', `${r.phases.initialDataSeconds} s (${r.phases.initialDataInstancesPerSecond} instances/s)`],
    ['agents started -> all in sync', `${r.phases.agentsToAllInSyncSeconds} s (initial sync per agent ${fmtDist(r.phases.agentInitialSyncMs)})`],
    ['writes', `${r.writes.issued} of ${r.writes.planned} in ${r.phases.loadSeconds} s = ${r.writes.achievedPerSecond}/s (${r.writes.notStartedByDeadline} not started by the deadline), ${r.writes.failed} failed; write latency ${fmtDist(r.writes.latencyMs)}`],
    ['schedule lag of writes', fmtDist(r.writes.scheduleLagMs)],
    ['hosts concerned per change', fmtDist(r.changes.concernedHostsPerChange, 'hosts')],
    ['**propagation, concerned agents**', fmtDist(r.latencyMs.concerned)],
    ['propagation, every agent', fmtDist(r.latencyMs.everyAgent)],
    ['max backlog (seqs behind)', `${r.latencyMs.maxBacklog.seqs} (${r.latencyMs.maxBacklog.host} at +${r.latencyMs.maxBacklog.atS} s)`],
    ['changes per applied batch', fmtDist(r.agentBatches.changesPerBatch, '')],
    ['drain after last write', r.phases.drainSecondsAfterLastWrite === null ? 'never' : `${r.phases.drainSecondsAfterLastWrite} s`],
    ['DB connections, peak (all phases)', `${Math.max(...Object.values(c).map((p) => p?.peakTotal ?? 0))}`],
    ['DB connections, idle / load (median)', `${c.idle?.medianTotal ?? 'n/a'} / ${c.load?.medianTotal ?? 'n/a'} (load: agents' pools ${c.load?.medianAgentPool}, LISTEN ${c.load?.medianListener}, bench ${c.load?.medianBench}; active ${c.load?.medianActive}, peak active ${c.load?.peakActive})`],
    ['DB transactions/s, idle / load (median)', `${c.idle?.medianTps ?? 'n/a'} / ${c.load?.medianTps ?? 'n/a'} (rows read/s ${c.idle?.medianRowsPerSecond ?? 'n/a'} / ${c.load?.medianRowsPerSecond ?? 'n/a'})`],
    ['DB connections per agent', `pool peak ${fmtDist(r.connections.perAgentPeakPool, '')}; + 1 LISTEN`],
    [`CPU during load (of ${cores * 100}%)`, `machine ${pct(cpu.load?.machineAvg)} avg, ${pct(cpu.load?.machinePeak)} peak; agents ${pct(cpu.load?.agentsAvg)}, postgres ${pct(cpu.load?.postgresAvg)}, bench ${pct(cpu.load?.benchAvg)}, other processes ${pct(cpu.load?.otherAvg)}`],
    ['machine busy before the run (3 s)', `${r.backgroundBeforeRun.busyPercent}%${r.backgroundBeforeRun.top.length ? ` (${r.backgroundBeforeRun.top.map((p) => `${p.command.split(' ').slice(0, 3).join(' ')} ${p.cpu}%`).join(', ')})` : ''}`],
    [`CPU during agent start`, `machine ${pct(cpu['agents-start']?.machineAvg)}; agents ${pct(cpu['agents-start']?.agentsAvg)}, postgres ${pct(cpu['agents-start']?.postgresAvg)}`],
    [`CPU idle (${cfg.idleSeconds} s, agents in sync)`, `machine ${pct(cpu.idle?.machineAvg)}; agents ${pct(cpu.idle?.agentsAvg)}, postgres ${pct(cpu.idle?.postgresAvg)}`],
    ['RSS', `agents ${cpu.load?.agentsRssMb ?? 'n/a'} MB total (max ${cpu.load?.maxAgentRssMb ?? 'n/a'} MB each), postgres ${cpu.load?.postgresAnonMb ?? 'n/a'} MB private (shared buffers not counted)`],
    ['verification', `${r.verification.hostsOk}/${r.verification.hosts} hosts ok; exact: ${JSON.stringify(r.verification.exact)}; kernel: ${JSON.stringify(r.verification.kernel)}`],
    ['agent log warnings/errors', Object.keys(r.agentLogs.issues).length ? JSON.stringify(r.agentLogs.issues) : 'none'],
  ];
}

function markdown(r: Result): string {
  const m = r.machine;
  const lines: string[] = [];
  lines.push(`# bench:load — ${r.startedAt}`, '');
  lines.push(`Machine: ${m.cores} cores (${m.cpuModel}), ${m.memoryGiB} GiB, kernel ${m.kernel}, Debian ${m.debian}, Node ${m.node}, PostgreSQL ${m.postgres} (private cluster, fsync off).`, '');
  lines.push(
    `Code: commit ${r.source.commit}${r.source.uncommittedSrc.length ? ` plus uncommitted changes to ${r.source.uncommittedSrc.join(', ')}` : ''} (agents run dist/, built from the working tree). Agent driver options: ${JSON.stringify(r.verification.agentDriverOptions)}.`,
    '',
  );
  lines.push(`Command: \`npm run bench:load -- --agents ${cfg.agents} --instances ${cfg.instances} --groups ${cfg.groups} --rate ${cfg.rate} --seconds ${cfg.seconds} --agent-pool ${cfg.agentPool} --writers ${cfg.writers} --seed ${cfg.seed}${cfg.deadlineFactor !== 1.5 ? ` --deadline-factor ${cfg.deadlineFactor}` : ''}${cfg.agentNice ? ` --agent-nice ${cfg.agentNice}` : ''}${cfg.exact ? ' --exact' : ''}\``, '');
  lines.push(mdTable(['figure', 'value'], summaryRows(r)), '');
  lines.push('## Propagation latency by change kind (concerned agents, ms)', '');
  lines.push(
    mdTable(
      ['kind', 'changes', 'samples', 'p50', 'p90', 'p99', 'max'],
      Object.entries(r.latencyMs.byKind).map(([k, d]) => [k, r.changes.byKind[k] ?? 0, d?.n ?? 0, d?.p50 ?? '', d?.p90 ?? '', d?.p99 ?? '', d?.max ?? '']),
    ),
    '',
  );
  lines.push('Slowest agents (p99, concerned): ' + r.latencyMs.slowestAgents.map((a) => `${a.host} ${a.p99} ms`).join(', '), '');
  const ps = r.latencyMs.perSecond.filter((p) => p.second >= 0);
  const step = Math.max(1, Math.ceil(ps.length / 12));
  lines.push('## Over time (commits in that second; latency of their concerned samples, ms)', '');
  lines.push(
    mdTable(
      ['second', 'commits', 'p50', 'p99', 'max'],
      ps.filter((_, i) => i % step === 0).map((p) => [p.second, p.commits, 'p50' in p ? (p.p50 ?? '') : '', 'p99' in p ? (p.p99 ?? '') : '', 'max' in p ? (p.max ?? '') : '']),
    ),
    '',
  );
  lines.push('## Database connections by phase', '');
  lines.push(
    mdTable(
      ['phase', 'samples', 'peak', 'median', 'agents pool (median)', 'LISTEN (median)', 'bench', 'active (median / peak)', 'transactions/s (median)', 'rows read/s (median)'],
      Object.entries(r.connections.byPhase)
        .filter(([, s]) => s)
        .map(([p, s]) => [p, s?.samples ?? 0, s?.peakTotal ?? 0, s?.medianTotal ?? 0, s?.medianAgentPool ?? 0, s?.medianListener ?? 0, s?.medianBench ?? 0, `${s?.medianActive} / ${s?.peakActive}`, s?.medianTps ?? 0, s?.medianRowsPerSecond ?? 0]),
    ),
    '',
  );
  if (r.connections.attributionMidLoad) {
    const a = r.connections.attributionMidLoad;
    lines.push(`Mid-load attribution by socket (/proc): ${a.agentsSeen} agents; pool connections per agent ${fmtDist(a.pool, '')}; LISTEN per agent ${fmtDist(a.listener, '')}; unattributed ${a.unattributed}.`, '');
  }
  lines.push('## CPU by phase (percent of one core)', '');
  lines.push(
    mdTable(
      ['phase', 'seconds', 'machine avg', 'machine peak', 'agents', 'postgres', 'bench', 'other', 'agents RSS MB', 'postgres private MB'],
      Object.entries(r.cpu.byPhase)
        .filter(([, s]) => s)
        .map(([p, s]) => [p, s?.seconds ?? 0, s?.machineAvg ?? 0, s?.machinePeak ?? 0, s?.agentsAvg ?? 0, s?.postgresAvg ?? 0, s?.benchAvg ?? 0, s?.otherAvg ?? 0, s?.agentsRssMb ?? 0, s?.postgresAnonMb ?? 0]),
    ),
    '',
  );
  lines.push('## Verification', '');
  lines.push(r.verification.method, '');
  lines.push(`Total rules over all hosts (fresh render): ${JSON.stringify(r.verification.totalRules)}; apply errors ${r.verification.applyErrors}; drift repairs ${r.verification.driftRepairs}.`, '');
  for (const f of r.verification.failures.slice(0, 10)) lines.push(`- ${f.host}: ${f.problems.join('; ')}`);
  if (r.agentLogs.issueSamples.length) {
    lines.push('', '## Agent log warnings/errors (samples)', '');
    for (const i of r.agentLogs.issueSamples.slice(0, 10)) lines.push(`- ${i.host} level ${i.level} ${i.msg}: ${i.detail}`);
  }
  lines.push('', `Writes went through a Store in the bench process (not the HTTP API). Mix (percent): ${JSON.stringify(r.config.mix)}.`, '');
  return lines.join('\n');
}

function report(r: Result): void {
  process.stdout.write(`\n${textTable(['figure', 'value'], summaryRows(r).map(([k, v]) => [k.replace(/\*/g, ''), v]))}\n\n`);
  for (const f of r.verification.failures.slice(0, 10)) process.stdout.write(`verification failure ${f.host}: ${f.problems.join('; ')}\n`);
  if (!cfg.results) return;
  mkdirSync(cfg.resultsDir, { recursive: true });
  const stamp = r.startedAt.replace(/:/g, '-').slice(0, 19);
  const json = join(cfg.resultsDir, `load-${stamp}.json`);
  const md = join(cfg.resultsDir, `load-${stamp}.md`);
  writeFileSync(json, `${JSON.stringify(r, null, 2)}\n`);
  writeFileSync(md, `${markdown(r)}\n`);
  copyFileSync(md, join(cfg.resultsDir, 'load-latest.md'));
  log(`results: ${relative(ROOT, json)}, ${relative(ROOT, md)}, load-latest.md`);
}

try {
  await main();
} catch (err) {
  log(`failed: ${(err as Error).stack ?? String(err)}`);
  failedRun = true;
  await cleanup('error');
  if (workDir) log(`agents' logs kept in ${workDir}`);
  process.exit(1);
}
