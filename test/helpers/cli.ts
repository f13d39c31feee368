/**
 * Running the real `virtfw` binary (the compiled CLI in dist/) for end-to-end
 * tests: building it when the sources are newer, starting `virtfw serve` as a
 * tracked process inside a namespace, and calling CLI commands there.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { nsExec, spawnTracked, stopChild, type ExecResult } from './topology.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const CLI = join(ROOT, 'dist/cli/main.js');

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(path) : statSync(path).mtimeMs);
  }
  return newest;
}

/** Compiles src/ into dist/ unless dist is already newer than every source file. */
export function ensureBuilt(): void {
  if (existsSync(CLI) && statSync(CLI).mtimeMs >= newestMtime(join(ROOT, 'src'))) return;
  const r = spawnSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`build failed: ${r.stdout}${r.stderr}`);
}

export interface Server {
  child: ChildProcess;
  url: string;
  log: () => string;
  /** SIGKILL: no clean-up of any kind, as a crash */
  kill9(): Promise<void>;
  stop(): Promise<void>;
}

/** Starts `virtfw <args>` (serve/api/agent) in `ns`; resolves once its API listens (or, for agent, once in sync). */
export async function startVirtfw(ns: string, args: string[], opts: { waitFor?: RegExp; timeoutMs?: number } = {}): Promise<Server> {
  const child = spawnTracked(ns, ['node', CLI, ...args]);
  let output = '';
  const waitFor = opts.waitFor ?? /"msg":"API listening"/;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`virtfw ${args[0]} did not start in time:\n${output}`)), opts.timeoutMs ?? 20_000);
    const onData = (d: Buffer) => {
      output += d.toString();
      if (waitFor.test(output)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`virtfw ${args[0]} exited with ${code}:\n${output}`));
    });
  });
  const url = /"url":"([^"]+)"/.exec(output)?.[1] ?? '';
  return {
    child,
    url,
    log: () => output,
    async kill9() {
      await stopChild(child, 'SIGKILL', 0);
    },
    async stop() {
      await stopChild(child, 'SIGTERM', 5000);
    },
  };
}

/** Runs a CLI command in `ns`; throws with its stderr if it fails (unless `allowFail`). */
export async function cli(ns: string, args: string[], opts: { allowFail?: boolean } = {}): Promise<ExecResult> {
  const r = await nsExec(ns, ['node', CLI, ...args], { timeoutMs: 30_000 });
  if (r.code !== 0 && !opts.allowFail) throw new Error(`virtfw ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r;
}

/** Polls `probe` until it returns `want`; resolves with the milliseconds it took, or rejects after `withinMs`. */
export async function within(withinMs: number, want: boolean, probe: () => Promise<boolean>, what: string): Promise<number> {
  const started = performance.now();
  for (;;) {
    if ((await probe()) === want) return performance.now() - started;
    if (performance.now() - started > withinMs) throw new Error(`${what}: still ${!want} after ${withinMs} ms`);
  }
}
