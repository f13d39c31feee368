/**
 * A PostgreSQL server of the test's own: a fresh cluster (initdb) in a temp
 * directory, on a free port of 127.0.0.1, with trust auth. Tests that must
 * restart or stop PostgreSQL use this one and never touch the machine's
 * shared server. `stop()` (also run at process exit) stops the postmaster
 * this helper started, by its data directory, and removes the directory.
 */
import { spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface PrivatePostgresOptions {
  maxConnections?: number;
  /** extra `-c name=value` settings */
  settings?: Record<string, string | number>;
}

const running = new Set<PrivatePostgres>();
let hookInstalled = false;

function binDir(): string {
  const base = '/usr/lib/postgresql';
  const versions = existsSync(base) ? readdirSync(base).sort((a, b) => Number(b) - Number(a)) : [];
  for (const v of versions) if (existsSync(join(base, v, 'bin', 'initdb'))) return join(base, v, 'bin');
  throw new Error('no PostgreSQL server binaries under /usr/lib/postgresql (run scripts/ensure-postgres.sh)');
}

function asPostgres(argv: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync('runuser', ['-u', 'postgres', '--', ...argv], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function must(what: string, r: { status: number | null; stdout: string; stderr: string }): void {
  if (r.status !== 0) throw new Error(`${what} failed (${r.status}): ${r.stderr || r.stdout}`);
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export class PrivatePostgres {
  readonly #bin: string;
  readonly dir: string;
  readonly port: number;
  readonly #options: string;

  private constructor(bin: string, dir: string, port: number, options: string) {
    this.#bin = bin;
    this.dir = dir;
    this.port = port;
    this.#options = options;
  }

  static async start(opts: PrivatePostgresOptions = {}): Promise<PrivatePostgres> {
    const bin = binDir();
    const dir = mkdtempSync(join(tmpdir(), 'virtfw-pg-'));
    chownSync(dir, uid('postgres'), gid('postgres'));
    const data = join(dir, 'data');
    must('initdb', asPostgres([join(bin, 'initdb'), '-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync']));
    const port = await freePort();
    const settings: Record<string, string | number> = {
      listen_addresses: '127.0.0.1',
      port,
      unix_socket_directories: dir,
      max_connections: opts.maxConnections ?? 100,
      fsync: 'off',
      synchronous_commit: 'off',
      full_page_writes: 'off',
      ...opts.settings,
    };
    const options = Object.entries(settings)
      .map(([k, v]) => `-c ${k}=${v}`)
      .join(' ');
    const pg = new PrivatePostgres(bin, dir, port, options);
    installHook();
    running.add(pg);
    pg.#pgctl('start');
    return pg;
  }

  /** Connection URL for a database of this server (default `postgres`). */
  url(database = 'postgres'): string {
    return `postgres://postgres@127.0.0.1:${this.port}/${database}`;
  }

  /** The postmaster's PID, or null when it is not running. */
  pid(): number | null {
    const file = join(this.dir, 'data', 'postmaster.pid');
    if (!existsSync(file)) return null;
    const pid = Number(readFileSync(file, 'utf8').split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  }

  /** Fast shutdown (clients are disconnected), then start again on the same port. */
  restart(): void {
    this.#pgctl('restart', ['-m', 'fast']);
  }

  /** Stops the server (fast) without removing its data: `startAgain()` brings it back. */
  stopServer(): void {
    this.#pgctl('stop', ['-m', 'fast']);
  }

  startAgain(): void {
    this.#pgctl('start');
  }

  /** Stops the server and removes its directory. Idempotent. */
  stop(): void {
    if (!running.has(this)) return;
    running.delete(this);
    if (this.pid() !== null) asPostgres([join(this.#bin, 'pg_ctl'), '-D', join(this.dir, 'data'), '-m', 'immediate', '-w', 'stop']);
    rmSync(this.dir, { recursive: true, force: true });
  }

  #pgctl(action: string, extra: string[] = []): void {
    const args = [join(this.#bin, 'pg_ctl'), '-D', join(this.dir, 'data'), '-w', '-t', '60', ...extra, action];
    if (action !== 'stop') args.push('-l', join(this.dir, 'server.log'), '-o', this.#options);
    must(`pg_ctl ${action}`, asPostgres(args));
  }
}

function uid(user: string): number {
  return Number(spawnSync('id', ['-u', user], { encoding: 'utf8' }).stdout.trim());
}

function gid(user: string): number {
  return Number(spawnSync('id', ['-g', user], { encoding: 'utf8' }).stdout.trim());
}

function installHook(): void {
  if (hookInstalled) return;
  hookInstalled = true;
  process.on('exit', () => {
    for (const pg of [...running]) pg.stop();
  });
}
