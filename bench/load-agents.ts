/**
 * The agent fleet of the load benchmark: `node dist/cli/main.js agent` per
 * host, each logging (pino JSON, stdout and stderr) to a file of its own that
 * the bench tails. Files rather than pipes, so an agent never blocks on a
 * busy bench process and the logs outlive the run (`--keep-logs`).
 *
 * From each log the bench takes:
 *   "applied" lines   (appliedSeq, time): the agent's applied timeline
 *   "host in sync"    the initial sync's duration
 *   level >= 40       warnings and errors, counted and sampled
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { setPriority } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

/**
 * A free port for an agent's --listen, below the ephemeral range: the agent
 * binds it only after its initial sync (up to a minute later), and a port from
 * the ephemeral range (what binding port 0 gives) may meanwhile become the
 * local port of some outgoing connection (there are hundreds to PostgreSQL).
 */
export async function agentPort(taken: Set<number>): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 10000);
    if (taken.has(port)) continue;
    const free = await new Promise<boolean>((resolve) => {
      const server = createServer();
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
    });
    if (free) {
      taken.add(port);
      return port;
    }
  }
  throw new Error('no free port in 20000-29999');
}

export interface AgentSpec {
  host: string;
  port: number;
  dbUrl: string;
  logFile: string;
  /** `--driver` (module specifier), for the exact check */
  driver?: string;
  /** where that driver dumps its ruleset on SIGUSR2 */
  dumpFile?: string;
  /** node flags before the script (e.g. `--cpu-prof`, `--cpu-prof-dir=DIR`) */
  nodeArgs?: string[];
  /** scheduling niceness of the agent process (0: as the bench) */
  nice?: number;
}

export interface LogIssue {
  level: number;
  msg: string;
  time: number;
  detail: string;
}

/** Incremental reader of one agent's log file. */
export class AgentLog {
  readonly file: string;
  #offset = 0;
  #partial = '';
  /** applied timeline, appliedSeq non-decreasing */
  readonly seqs: number[] = [];
  readonly times: number[] = [];
  /** batch sizes (changes per applied batch, kind=changes) */
  readonly batchSizes: number[] = [];
  inSyncMs: number | null = null;
  inSyncAt: number | null = null;
  fullSyncs = 0;
  lines = 0;
  readonly issueCounts = new Map<string, number>();
  readonly issues: LogIssue[] = [];
  readonly nonJson: string[] = [];

  constructor(file: string) {
    this.file = file;
  }

  get appliedSeq(): number {
    return this.seqs.at(-1) ?? 0;
  }

  /** Reads what was appended since the last poll. */
  poll(): void {
    let fd: number;
    try {
      fd = openSync(this.file, 'r');
    } catch {
      return;
    }
    try {
      const buf = Buffer.alloc(1 << 20);
      for (;;) {
        const n = readSync(fd, buf, 0, buf.length, this.#offset);
        if (n <= 0) break;
        this.#offset += n;
        const text = this.#partial + buf.toString('utf8', 0, n);
        const lines = text.split('\n');
        this.#partial = lines.pop() ?? '';
        for (const line of lines) this.#line(line);
      }
    } finally {
      closeSync(fd);
    }
  }

  #line(line: string): void {
    if (line.trim() === '') return;
    this.lines++;
    let entry: Record<string, unknown>;
    try {
      entry = JSON.parse(line) as Record<string, unknown>;
    } catch {
      if (this.nonJson.length < 20) this.nonJson.push(line.slice(0, 500));
      return;
    }
    const time = Number(entry.time);
    const msg = String(entry.msg ?? '');
    if (msg === 'applied') {
      const seq = Number(entry.appliedSeq);
      if (Number.isFinite(seq) && seq >= (this.seqs.at(-1) ?? 0)) {
        this.seqs.push(seq);
        this.times.push(time);
      }
      if (entry.kind === 'full') this.fullSyncs++;
      else this.batchSizes.push(Number(entry.count));
    } else if (msg === 'host in sync') {
      this.inSyncMs = Number(entry.ms);
      this.inSyncAt = time;
    }
    const level = Number(entry.level);
    if (level >= 40) {
      this.issueCounts.set(msg, (this.issueCounts.get(msg) ?? 0) + 1);
      if (this.issues.length < 20) {
        const { level: _l, time: _t, msg: _m, pid: _p, hostname: _h, name: _n, ...rest } = entry;
        this.issues.push({ level, msg, time, detail: JSON.stringify(rest).slice(0, 400) });
      }
    }
  }

  /** When this agent first had applied seq >= `seq` (epoch ms), or null. */
  appliedAt(seq: number): number | null {
    let lo = 0;
    let hi = this.seqs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((this.seqs[mid] ?? 0) >= seq) hi = mid;
      else lo = mid + 1;
    }
    return lo < this.seqs.length ? (this.times[lo] ?? null) : null;
  }
}

export interface RunningAgent {
  spec: AgentSpec;
  child: ChildProcess;
  pid: number;
  log: AgentLog;
  startedAt: number;
  exited: { code: number | null; signal: NodeJS.Signals | null; at: number } | null;
}

export class AgentFleet {
  readonly agents: RunningAgent[] = [];
  readonly #mainJs: string;
  stopping = false;

  constructor(mainJs: string) {
    this.#mainJs = mainJs;
  }

  start(spec: AgentSpec): RunningAgent {
    const out = openSync(spec.logFile, 'a');
    const args = [
      ...(spec.nodeArgs ?? []),
      this.#mainJs,
      'agent',
      '--host',
      spec.host,
      '--db',
      spec.dbUrl,
      '--dry-run',
      '--resync-interval',
      '600',
      '--listen',
      `127.0.0.1:${spec.port}`,
      ...(spec.driver ? ['--driver', spec.driver] : []),
    ];
    const child = spawn(process.execPath, args, {
      stdio: ['ignore', out, out],
      env: {
        ...process.env,
        // pool connections carry the host in pg_stat_activity (the LISTEN connection sets its own name)
        PGAPPNAME: `virtfw-agent-${spec.host}`,
        VIRTFW_LOG_LEVEL: 'info',
        ...(spec.dumpFile ? { VIRTFW_BENCH_DUMP_FILE: spec.dumpFile } : {}),
      },
    });
    closeSync(out);
    if (child.pid === undefined) throw new Error(`could not start the agent of ${spec.host}`);
    if (spec.nice) setPriority(child.pid, spec.nice);
    const agent: RunningAgent = { spec, child, pid: child.pid, log: new AgentLog(spec.logFile), startedAt: Date.now(), exited: null };
    child.on('exit', (code, signal) => {
      agent.exited = { code, signal, at: Date.now() };
      if (!this.stopping) process.stderr.write(`[load] agent ${spec.host} (pid ${agent.pid}) exited early: code ${code} signal ${signal}\n`);
    });
    this.agents.push(agent);
    return agent;
  }

  pollLogs(): void {
    for (const a of this.agents) a.log.poll();
  }

  running(): RunningAgent[] {
    return this.agents.filter((a) => a.exited === null);
  }

  /** SIGTERM every agent (they finish their batch and close the store), SIGKILL what is left after `graceMs`. */
  async stopAll(graceMs = 10_000): Promise<{ graceful: number; killed: number }> {
    this.stopping = true;
    const live = this.running();
    for (const a of live) signal(a.pid, 'SIGTERM');
    const deadline = Date.now() + graceMs;
    while (this.running().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const left = this.running();
    for (const a of left) signal(a.pid, 'SIGKILL');
    const until = Date.now() + 5000;
    while (this.running().length > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    this.pollLogs();
    return { graceful: live.length - left.length, killed: left.length };
  }

  /** Last resort at process exit: SIGKILL whatever is still running (by PID, only ours). */
  killAllSync(): void {
    this.stopping = true;
    for (const a of this.running()) signal(a.pid, 'SIGKILL');
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

/**
 * The `--exact` driver: IptablesFirewallDriver from dist, unchanged, plus a
 * SIGUSR2 handler that writes what the agent holds to $VIRTFW_BENCH_DUMP_FILE:
 * its model rendered in full (`renderRuleset()`, the text a `/ruleset`
 * endpoint would serve), its rule counts, and the contents of its in-memory
 * kernel (`--dry-run`'s FakeKernel: what the agent's restores actually built).
 * Written as a plain ES module next to the logs, since the agents run dist
 * JavaScript.
 */
export function writeDumpDriver(dir: string, distDir: string): string {
  const file = join(dir, 'bench-dump-driver.mjs');
  const driverUrl = pathToFileURL(join(distDir, 'drivers', 'iptables-driver.js')).href;
  writeFileSync(
    file,
    `import { renameSync, writeFileSync } from 'node:fs';
import { IptablesFirewallDriver } from ${JSON.stringify(driverUrl)};

export class BenchDumpDriver extends IptablesFirewallDriver {
  constructor(...args) {
    super(...args);
    const file = process.env.VIRTFW_BENCH_DUMP_FILE;
    if (!file) return;
    process.on('SIGUSR2', () => {
      const kernel = typeof this.runner.save === 'function' ? { ipv4: this.runner.save('4'), ipv6: this.runner.save('6') } : null;
      const dump = { at: Date.now(), ruleset: this.renderRuleset(), counts: this.ruleCounts(), kernel, status: this.status() };
      writeFileSync(file + '.tmp', JSON.stringify(dump));
      renameSync(file + '.tmp', file);
    });
  }
}
`,
  );
  return `${file}#BenchDumpDriver`;
}
