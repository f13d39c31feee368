/**
 * Running kernel tools. Every tool is run with an argument array and no
 * shell; input goes through stdin. Tests and embedders swap the runner.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';

export interface CommandResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  input?: string;
  timeoutMs?: number;
}

export interface CommandRunner {
  run(argv: readonly string[], options?: RunOptions): Promise<CommandResult>;
  /** Starts a long-lived tool with piped stdio (optional: fake kernels have none). */
  start?(argv: readonly string[]): ChildProcessWithoutNullStreams;
}

const DEFAULT_TIMEOUT_MS = 120_000;

/** Spawns the tool directly. Never rejects for a non-zero exit; rejects if it cannot start. */
export class ProcessRunner implements CommandRunner {
  start(argv: readonly string[]): ChildProcessWithoutNullStreams {
    const [command, ...args] = argv;
    if (!command) throw new Error('empty command');
    return spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  }

  run(argv: readonly string[], options: RunOptions = {}): Promise<CommandResult> {
    const [command, ...args] = argv;
    if (!command) return Promise.reject(new Error('empty command'));
    return new Promise((resolve, reject) => {
      const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
      const stdout: Buffer[] = [];
      const stderr: Buffer[] = [];
      const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
      child.stdout.on('data', (d: Buffer) => stdout.push(d));
      child.stderr.on('data', (d: Buffer) => stderr.push(d));
      child.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        resolve({
          code,
          signal,
          stdout: Buffer.concat(stdout).toString('utf8'),
          stderr: Buffer.concat(stderr).toString('utf8'),
        });
      });
      // A tool that exits before reading all its input is reported by its exit
      // status, not by the broken pipe.
      child.stdin.on('error', () => undefined);
      child.stdin.end(options.input ?? '');
    });
  }
}

/**
 * Runs every command inside a named network namespace (the one `ip netns add
 * NAME` made), entering only its network namespace (`nsenter --net=...`):
 * lighter than `ip netns exec`, which also remounts /sys for each command.
 */
export class NetnsRunner implements CommandRunner {
  constructor(
    readonly netns: string,
    private readonly inner: CommandRunner = new ProcessRunner(),
  ) {}

  run(argv: readonly string[], options?: RunOptions): Promise<CommandResult> {
    return this.inner.run(this.#wrap(argv), options);
  }

  get start(): ((argv: readonly string[]) => ChildProcessWithoutNullStreams) | undefined {
    const inner = this.inner;
    return inner.start ? (argv) => (inner.start as NonNullable<CommandRunner['start']>)(this.#wrap(argv)) : undefined;
  }

  #wrap(argv: readonly string[]): string[] {
    return ['nsenter', `--net=/run/netns/${this.netns}`, '--', ...argv];
  }
}
