/**
 * The real tools, recorded: every command a driver runs (without the
 * namespace wrapper) and every process it keeps (the kept `nft -i` and
 * `ipset -` sessions), so a test can say which tools a change used.
 */
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { ProcessRunner, type CommandRunner } from '../../src/kernel/exec.js';

export interface RecordingRunner extends CommandRunner {
  /** the commands run, as `tool args…` (after `nsenter … --`) */
  readonly ran: string[];
  /** the processes started and kept */
  readonly kept: ChildProcessWithoutNullStreams[];
}

export function recordingRunner(): RecordingRunner {
  const real = new ProcessRunner();
  const ran: string[] = [];
  const kept: ChildProcessWithoutNullStreams[] = [];
  return {
    ran,
    kept,
    run: (argv, opts) => {
      ran.push(argv.slice(argv.indexOf('--') + 1).join(' '));
      return real.run(argv, opts);
    },
    start: (argv) => {
      const child = real.start(argv);
      kept.push(child);
      return child;
    },
  };
}

/** Resolves once the process has ended (at once if it has). */
export function exited(child: ChildProcessWithoutNullStreams): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise<void>((resolve) => child.once('close', () => resolve()));
}
