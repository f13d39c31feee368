/**
 * A long-lived `nft -i` process for small transactions (member set element
 * changes): one process start and one ruleset cache fill fewer per change,
 * which is most of the cost of a one-line `nft -f`.
 *
 * Each transaction is ONE input line (`cmd; cmd; ...`), which nft commits as
 * one batch, all or nothing. After it a sync line is sent that nft always
 * rejects as a syntax error and echoes to stderr: everything nft printed on
 * stderr before that echo belongs to the transaction, so an empty prefix is
 * success. The process ends after an idle spell, on close(), on a timeout, or
 * with its parent (end of stdin); a broken session is reported as such so the
 * caller can fall back to `nft -f`.
 */
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import type { CommandRunner } from './exec.js';

export type SessionResult = { ok: true } | { ok: false; stderr: string };

/** The session itself failed (could not start, died, timed out): the transaction may or may not have run. */
export class SessionBrokenError extends Error {}

const IDLE_MS = 60_000;
const DEFAULT_TIMEOUT_MS = 10_000;
/** Longer lines go through `nft -f` (line editors have limits of their own). */
export const SESSION_MAX_LINE = 32 * 1024;

export class NftSession {
  readonly #runner: CommandRunner;
  readonly #argv: readonly string[];
  #child: ChildProcessWithoutNullStreams | undefined;
  #stderr = '';
  #waiter: (() => void) | undefined;
  #seq = 0;
  /** the running process has been given a transaction */
  #used = false;
  #idle: NodeJS.Timeout | undefined;
  readonly #timeoutMs: number;

  constructor(runner: CommandRunner, nft: string, timeoutMs = DEFAULT_TIMEOUT_MS) {
    this.#runner = runner;
    this.#argv = [nft, '-i'];
    this.#timeoutMs = timeoutMs;
  }

  /** Can this runner keep a process (real tools; not a fake kernel)? */
  static supported(runner: CommandRunner): boolean {
    return typeof runner.start === 'function';
  }

  /** Runs one transaction (a single line). Callers run one at a time. */
  async run(line: string): Promise<SessionResult> {
    if (line.includes('\n')) throw new Error('a session transaction is one line');
    const child = this.#ensure();
    this.#used = true;
    const marker = `virtfw-sync-${++this.#seq}`;
    // nft echoes the rejected line and a line of carets under it.
    const echo = new RegExp(`(^|\\n)${marker}\\n[ ^~]*\\n`);
    this.#stderr = '';
    const echoed = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.close();
        reject(new SessionBrokenError(`nft -i gave no answer within ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      this.#waiter = () => {
        if (echo.test(this.#stderr)) {
          clearTimeout(timer);
          resolve();
        } else if (!this.#child) {
          clearTimeout(timer);
          reject(new SessionBrokenError(`nft -i ended: ${this.#stderr.trim() || 'no output'}`));
        }
      };
    });
    child.stdin.write(`${line}\n${marker}\n`);
    try {
      await echoed;
    } finally {
      this.#waiter = undefined;
    }
    const before = this.#stderr.slice(0, this.#stderr.lastIndexOf(marker));
    // The sync line's own complaint is the last "Error:" line before its echo.
    const own = before.lastIndexOf('Error:');
    const prefix = (own === -1 ? before : before.slice(0, own)).trim();
    this.#armIdle();
    return prefix ? { ok: false, stderr: prefix } : { ok: true };
  }

  /** Starts the process ahead of its first transaction, so that one does not wait for it. */
  warm(): void {
    try {
      this.#ensure();
      this.#armIdle();
    } catch {
      // It is started again (or reported) when a transaction needs it.
    }
  }

  /** Is a process running that has not run a transaction yet? */
  get fresh(): boolean {
    return this.#child !== undefined && !this.#used;
  }

  /**
   * Runs `lines`, one transaction each, only if the process is running and
   * has not run anything yet (never starts one), and ignores their outcome: a
   * warm-up, so that the next transactions do not pay for the process's first
   * commands (nft's first command and its second each cost a few ms more
   * than the ones after them).
   */
  async prime(...lines: string[]): Promise<void> {
    if (!this.fresh) return;
    try {
      for (const line of lines) await this.run(line);
    } catch {
      // A broken session is found (and reported) by the transaction that needs it.
    }
  }

  /** Ends the process (it would end by itself when idle or with its parent). */
  close(): void {
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
