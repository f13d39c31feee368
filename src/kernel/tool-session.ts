/**
 * A long-lived tool process for small transactions (`nft -i`, `ipset -`):
 * one process start fewer per change, which is most of the cost of running
 * the tool for a one-line change (and, for nft, one ruleset cache fill).
 *
 * After each transaction a sync line is sent that the tool always rejects on
 * stderr, naming a marker of ours: everything the tool printed on stderr
 * before that rejection belongs to the transaction, so an empty prefix is
 * success. Each tool's dialect says how its rejection reads. The process
 * ends after an idle spell, on close(), on a timeout, or with its parent
 * (end of stdin); a broken session is reported as such so the caller can
 * fall back to running the tool once.
 */
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import type { Mutex } from '../util/mutex.js';
import type { CommandRunner } from './exec.js';

export type SessionResult = { ok: true } | { ok: false; stderr: string };

/** The session itself failed (could not start, died, timed out): the transaction may or may not have run. */
export class SessionBrokenError extends Error {}

/** How one tool is driven in a session. */
export interface SessionDialect {
  /** the tool in interactive mode (after the command name) */
  readonly args: readonly string[];
  /** one transaction must be one line (nft: a line is one batch) */
  readonly oneLine: boolean;
  /** a line the tool rejects on stderr, naming `marker` */
  syncLine(marker: string): string;
  /** The transaction's own stderr, once the rejection of the sync line is complete in `stderr`; undefined before. */
  ownOutput(stderr: string, marker: string): string | undefined;
}

const IDLE_MS = 60_000;
const DEFAULT_TIMEOUT_MS = 10_000;

export class ToolSession {
  readonly #runner: CommandRunner;
  readonly #argv: readonly string[];
  #child: ChildProcessWithoutNullStreams | undefined;
  #stderr = '';
  #waiter: (() => void) | undefined;
  #seq = 0;
  /** the running process has been given a transaction */
  #used = false;
  #idle: NodeJS.Timeout | undefined;
  /** a warm-up queued behind the caller's current work (see `warmLater`) */
  #warming: NodeJS.Immediate | undefined;
  readonly #timeoutMs: number;
  readonly #dialect: SessionDialect;

  constructor(runner: CommandRunner, command: string, dialect: SessionDialect, timeoutMs = DEFAULT_TIMEOUT_MS) {
    this.#runner = runner;
    this.#argv = [command, ...dialect.args];
    this.#dialect = dialect;
    this.#timeoutMs = timeoutMs;
  }

  /** Can this runner keep a process (real tools; not a fake kernel)? */
  static supported(runner: CommandRunner): boolean {
    return typeof runner.start === 'function';
  }

  /** Runs one transaction (one line where the dialect says so). Callers run one at a time. */
  async run(text: string): Promise<SessionResult> {
    if (this.#dialect.oneLine && text.includes('\n')) throw new Error('a session transaction is one line');
    const child = this.#ensure();
    this.#used = true;
    const marker = `virtfw-sync-${++this.#seq}`;
    this.#stderr = '';
    let own: string | undefined;
    const synced = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.close();
        reject(new SessionBrokenError(`${this.#argv.join(' ')} gave no answer within ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      this.#waiter = () => {
        own = this.#dialect.ownOutput(this.#stderr, marker);
        if (own !== undefined) {
          clearTimeout(timer);
          resolve();
        } else if (!this.#child) {
          clearTimeout(timer);
          reject(new SessionBrokenError(`${this.#argv.join(' ')} ended: ${this.#stderr.trim() || 'no output'}`));
        }
      };
    });
    child.stdin.write(`${text}\n${this.#dialect.syncLine(marker)}\n`);
    try {
      await synced;
    } finally {
      this.#waiter = undefined;
    }
    this.#armIdle();
    return own ? { ok: false, stderr: own } : { ok: true };
  }

  /** Starts the process ahead of its first transaction, so that one does not wait for it. */
  #warm(): void {
    try {
      this.#ensure();
      this.#armIdle();
    } catch {
      // It is started again (or reported) when a transaction needs it.
    }
  }

  /**
   * Once the caller's current work has returned (setImmediate: starting a
   * process blocks this thread for milliseconds), starts the process if none
   * runs and primes a new one with `lines()` (see `#prime`), queued on
   * `serial` like a transaction. Cancelled by close().
   */
  warmLater(serial: Mutex, lines: () => string[]): void {
    if (this.#warming) return;
    this.#warming = setImmediate(() => {
      this.#warming = undefined;
      this.#warm();
      if (this.#fresh) void serial.run(() => this.#prime(lines()));
    });
    this.#warming.unref();
  }

  /** Is a process running that has not run a transaction yet? */
  get #fresh(): boolean {
    return this.#child !== undefined && !this.#used;
  }

  /**
   * Runs `lines`, one transaction each, only if the process is running and
   * has not run anything yet (never starts one), and ignores their outcome: a
   * warm-up, so that the next transactions do not pay for the process's first
   * commands (nft's first command and its second each cost a few ms more
   * than the ones after them).
   */
  async #prime(lines: readonly string[]): Promise<void> {
    if (!this.#fresh) return;
    try {
      for (const line of lines) await this.run(line);
    } catch {
      // A broken session is found (and reported) by the transaction that needs it.
    }
  }

  /** Ends the process (it would end by itself when idle or with its parent). */
  close(): void {
    clearImmediate(this.#warming);
    this.#warming = undefined;
    clearTimeout(this.#idle);
    const child = this.#child;
    this.#child = undefined;
    if (child && child.exitCode === null) {
      child.stdin.end();
      child.kill('SIGTERM');
    }
  }

  #ensure(): ChildProcessWithoutNullStreams {
    clearTimeout(this.#idle);
    if (this.#child) return this.#child;
    const child = this.#runner.start?.(this.#argv);
    if (!child) throw new SessionBrokenError('this runner cannot keep a process');
    this.#child = child;
    this.#used = false;
    child.stdout.resume();
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => {
      this.#stderr += d;
      this.#waiter?.();
    });
    child.stdin.on('error', () => undefined);
    const gone = () => {
      if (this.#child === child) this.#child = undefined;
      this.#waiter?.();
    };
    child.on('error', gone);
    child.on('close', gone);
    // Never what keeps the process that owns it alive.
    child.unref();
    for (const s of [child.stdin, child.stdout, child.stderr] as unknown as { unref?: () => void }[]) s.unref?.();
    return child;
  }

  #armIdle(): void {
    clearTimeout(this.#idle);
    this.#idle = setTimeout(() => this.close(), IDLE_MS);
    this.#idle.unref();
  }
}
