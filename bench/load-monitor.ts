/**
 * Once a second: the database's connections (pg_stat_activity of the bench
 * database, by application and state; agents' pool connections carry
 * `virtfw-agent-<host>` through PGAPPNAME, their LISTEN connection
 * `virtfw-listener`), and CPU and memory from /proc: the whole machine
 * (/proc/stat), the agents, PostgreSQL (the postmaster, its live children, and
 * its reaped children's time), and the bench process itself.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import pg from 'pg';

export interface ConnSample {
  t: number;
  phase: string;
  total: number;
  agentPool: number;
  listener: number;
  bench: number;
  other: number;
  byState: Record<string, number>;
  /** host -> pool connections of its agent */
  perAgent: Record<string, number>;
  /** transactions committed or rolled back per second in the bench database (every autocommit query is one) */
  tps: number;
  /** rows read per second (pg_stat_database tup_returned + tup_fetched) */
  rowsPerSecond: number;
}

export interface CpuSample {
  t: number;
  phase: string;
  /** percent of one core: 200 = both cores of a 2-core machine busy */
  machine: number;
  agents: number;
  postgres: number;
  bench: number;
  agentsRssMb: number;
  /** private (anonymous) memory of the postmaster and its children; shared buffers are not counted */
  postgresAnonMb: number;
  maxAgentRssMb: number;
}

const TICK = 100; // USER_HZ on Linux
const PAGE = 4096;

interface ProcTimes {
  ticks: number;
  childTicks: number;
  ppid: number;
  rssPages: number;
}

function readProc(pid: number): ProcTimes | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    const n = (i: number) => Number(rest[i] ?? 0);
    return { ppid: n(1), ticks: n(11) + n(12), childTicks: n(13) + n(14), rssPages: n(21) };
  } catch {
    return null;
  }
}

/** CPU ticks (user + system) of every process now. */
export function allProcessTicks(): Map<number, number> {
  const out = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const p = readProc(Number(name));
    if (p) out.set(Number(name), p.ticks);
  }
  return out;
}

export function commandOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
  } catch {
    return '?';
  }
}

/** RssAnon of a process, kB. */
function anonKb(pid: number): number {
  try {
    const m = /^RssAnon:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

export function machineTicks(): { busy: number; total: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  return { busy: total - idle, total };
}

export class Monitor {
  readonly conns: ConnSample[] = [];
  readonly cpu: CpuSample[] = [];
  phase = 'setup';
  readonly #client: pg.Client;
  readonly #database: string;
  readonly #agentPids: () => number[];
  readonly #postmasterPid: () => number | null;
  #timer: NodeJS.Timeout | null = null;
  #busy = false;
  #lastDb: { at: number; x: number; rows: number } | null = null;
  #last: { at: number; machine: { busy: number; total: number }; agents: Map<number, number>; pg: number; bench: number } | null = null;
  readonly #cores: number;
  errors = 0;

  constructor(url: string, database: string, cores: number, agentPids: () => number[], postmasterPid: () => number | null) {
    this.#client = new pg.Client({ connectionString: url, application_name: 'virtfw-bench-monitor' });
    this.#database = database;
    this.#agentPids = agentPids;
    this.#postmasterPid = postmasterPid;
    this.#cores = cores;
  }

  async start(): Promise<void> {
    await this.#client.connect();
    this.#timer = setInterval(() => void this.sample(), 1000);
  }

  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    await this.#client.end().catch(() => undefined);
  }

  async sample(): Promise<void> {
    if (this.#busy) return;
    this.#busy = true;
    try {
      this.#sampleCpu();
      await this.#sampleConnections();
    } catch (err) {
      if (this.errors++ < 3) process.stderr.write(`[load] monitor: ${(err as Error).message}\n`);
    } finally {
      this.#busy = false;
    }
  }

  /** The bench database's client connections right now: application name, client port, state. */
  async activity(): Promise<{ app: string; port: number; state: string }[]> {
    const { rows } = await this.#client.query<{ app: string; port: number | null; state: string }>(
      `select coalesce(application_name, '') as app, client_port as port, coalesce(state, '') as state
         from pg_stat_activity where datname = $1 and application_name <> 'virtfw-bench-monitor'`,
      [this.#database],
    );
    return rows.map((r) => ({ app: r.app, port: Number(r.port ?? 0), state: r.state }));
  }

  async #sampleConnections(): Promise<void> {
    const { rows } = await this.#client.query<{ app: string; state: string; n: string }>(
      `select coalesce(application_name, '') as app, coalesce(state, '') as state, count(*) as n
         from pg_stat_activity where datname = $1 group by 1, 2`,
      [this.#database],
    );
    const db = await this.#client.query<{ x: string; rows: string }>(
      'select xact_commit + xact_rollback as x, tup_returned + tup_fetched as rows from pg_stat_database where datname = $1',
      [this.#database],
    );
    const now = performance.now();
    const x = Number(db.rows[0]?.x ?? 0);
    const read = Number(db.rows[0]?.rows ?? 0);
    const prev = this.#lastDb;
    this.#lastDb = { at: now, x, rows: read };
    const dt = prev ? (now - prev.at) / 1000 : 0;
    const s: ConnSample = {
      t: Date.now(),
      phase: this.phase,
      total: 0,
      agentPool: 0,
      listener: 0,
      bench: 0,
      other: 0,
      byState: {},
      perAgent: {},
      tps: prev && dt > 0 ? Math.round((x - prev.x) / dt) : 0,
      rowsPerSecond: prev && dt > 0 ? Math.round((read - prev.rows) / dt) : 0,
    };
    for (const r of rows) {
      const n = Number(r.n);
      if (r.app === 'virtfw-bench-monitor') continue;
      s.total += n;
      s.byState[r.state || 'none'] = (s.byState[r.state || 'none'] ?? 0) + n;
      if (r.app.startsWith('virtfw-agent-')) {
        s.agentPool += n;
        const host = r.app.slice('virtfw-agent-'.length);
        s.perAgent[host] = (s.perAgent[host] ?? 0) + n;
      } else if (r.app === 'virtfw-listener') s.listener += n;
      else if (r.app.startsWith('virtfw-bench')) s.bench += n;
      else s.other += n;
    }
    this.conns.push(s);
  }

  #sampleCpu(): void {
    const now = performance.now();
    const machine = machineTicks();
    const agents = new Map<number, number>();
    let agentsRss = 0;
    let maxAgentRss = 0;
    for (const pid of this.#agentPids()) {
      const p = readProc(pid);
      if (!p) continue;
      agents.set(pid, p.ticks);
      agentsRss += p.rssPages;
      maxAgentRss = Math.max(maxAgentRss, p.rssPages);
    }
    const postmaster = this.#postmasterPid();
    let pgTicks = 0;
    let pgRss = 0;
    if (postmaster !== null) {
      const pm = readProc(postmaster);
      if (pm) {
        pgTicks += pm.ticks + pm.childTicks;
        pgRss += anonKb(postmaster);
      }
      for (const name of readdirSync('/proc')) {
        if (!/^\d+$/.test(name)) continue;
        const p = readProc(Number(name));
        if (p && p.ppid === postmaster) {
          pgTicks += p.ticks;
          pgRss += anonKb(Number(name));
        }
      }
    }
    const usage = process.cpuUsage();
    const bench = (usage.user + usage.system) / 1e6; // seconds
    const last = this.#last;
    this.#last = { at: now, machine, agents, pg: pgTicks, bench };
    if (!last) return;
    const dt = (now - last.at) / 1000;
    let agentTicks = 0;
    for (const [pid, ticks] of agents) agentTicks += ticks - (last.agents.get(pid) ?? ticks);
    const totalTicks = machine.total - last.machine.total;
    this.cpu.push({
      t: Date.now(),
      phase: this.phase,
      machine: totalTicks > 0 ? ((machine.busy - last.machine.busy) / totalTicks) * 100 * this.#cores : 0,
      agents: (agentTicks / TICK / dt) * 100,
      postgres: (Math.max(0, pgTicks - last.pg) / TICK / dt) * 100,
      bench: ((bench - last.bench) / dt) * 100,
      agentsRssMb: (agentsRss * PAGE) / 2 ** 20,
      postgresAnonMb: pgRss / 1024,
      maxAgentRssMb: (maxAgentRss * PAGE) / 2 ** 20,
    });
  }
}

/**
 * Which process owns each local TCP port (127.0.0.1 client side), for the
 * given PIDs: socket inodes from /proc/PID/fd, ports from /proc/net/tcp.
 * Used once, to attribute the LISTEN connections (all named
 * `virtfw-listener`) to agents.
 */
export function portsByPid(pids: readonly number[]): Map<number, number> {
  const inodeToPort = new Map<string, number>();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      const local = f[1];
      const inode = f[9];
      if (!local || !inode) continue;
      inodeToPort.set(inode, parseInt(local.split(':')[1] ?? '0', 16));
    }
  }
  const owner = new Map<number, number>();
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        const port = m ? inodeToPort.get(m[1] ?? '') : undefined;
        if (port !== undefined) owner.set(port, pid);
      } catch {
        // fd closed meanwhile
      }
    }
  }
  return owner;
}
