/**
 * IpsetManager's kept `ipset -`, with a stand-in process instead of ipset
 * (no kernel is touched): member changes go through it, everything else
 * through `ipset restore`; a refused change is raised and makes the next
 * write a whole rewrite; a session that stops answering hands its change to
 * `ipset restore`. The real `ipset -` is exercised in test/kernel/ipset-session.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { ApplyError } from '../../src/errors.js';
import type { CommandResult, CommandRunner } from '../../src/kernel/exec.js';
import { IpsetManager } from '../../src/kernel/ipset-manager.js';
import { Names } from '../../src/render/names.js';

/**
 * A stand-in for `ipset -`: refuses the sync line as ipset does (naming its
 * family), says a set does not exist for a line naming "missing", and stops
 * answering after a line naming "hang".
 */
const FAKE_IPSET = `
const rl = require('node:readline').createInterface({ input: process.stdin });
let hung = false;
rl.on('line', (line) => {
  if (hung) return;
  if (line.includes('hang')) { hung = true; return; }
  if (line.includes('missing')) process.stderr.write('ipset v7.17: The set with the given name does not exist\\n');
  const sync = /family (virtfw-sync-\\d+)$/.exec(line);
  if (sync) process.stderr.write('ipset v7.17: Syntax error: unknown inet family ' + sync[1] + '\\n');
});`;

const names = new Names('virtfw');
const started: ChildProcessWithoutNullStreams[] = [];
/** Lets the manager's post-write work run (it waits for the caller to go on first). */
const afterReturn = () => new Promise<void>((resolve) => setImmediate(resolve));

function runner(): CommandRunner & { ran: string[]; lines: string[] } {
  const ran: string[] = [];
  const lines: string[] = [];
  return {
    ran,
    lines,
    run: async (argv, opts): Promise<CommandResult> => {
      ran.push(`${argv.join(' ')} <<< ${opts?.input ?? ''}`);
      return { code: 0, signal: null, stdout: argv[1] === 'list' ? 'virtfw-m4old\n' : '', stderr: '' };
    },
    start: () => {
      const child = spawn(process.execPath, ['-e', FAKE_IPSET], { stdio: ['pipe', 'pipe', 'pipe'] });
      const write = child.stdin.write.bind(child.stdin) as (chunk: string) => boolean;
      (child.stdin as unknown as { write: (chunk: string) => boolean }).write = (chunk: string) => {
        lines.push(...chunk.split('\n').filter((l) => l && !l.includes('virtfw-sync')));
        return write(chunk);
      };
      started.push(child);
      return child;
    },
  };
}

afterEach(() => {
  for (const child of started.splice(0)) child.kill('SIGKILL');
});

describe('IpsetManager with a kept ipset process', () => {
  it('sends member changes through it, set creation and removal through ipset restore, and warms it with a no-op add', async () => {
    const r = runner();
    const m = new IpsetManager({ names, runner: r });
    const s4 = names.memberSet('g', 4);
    m.setMembers(s4, 4, ['10.0.0.1']);
    await m.apply();
    // The first write: list, then every set whole, through ipset restore.
    expect(r.ran.map((c) => c.split(' <<< ')[0])).toEqual(['ipset list -n', 'ipset restore']);
    expect(r.ran[1]).toBe(`ipset restore <<< create ${s4} hash:ip family inet maxelem 262144 -exist\nadd ${s4} 10.0.0.1\ndestroy virtfw-m4old\n`);
    expect(started).toHaveLength(0); // started once the write has returned
    await afterReturn();
    expect(started).toHaveLength(1);
    m.setMembers(s4, 4, ['10.0.0.2', '10.0.0.3']);
    await m.applyAdditions();
    expect(r.ran).toHaveLength(2);
    // The warm-up came first: a member the set holds, added again.
    expect(r.lines).toEqual([`add ${s4} 10.0.0.1 -exist`, `del ${s4} 10.0.0.1 -exist`, `add ${s4} 10.0.0.2 -exist`, `add ${s4} 10.0.0.3 -exist`]);
    // A new set: ipset restore.
    m.setMembers(names.memberSet('h', 6), 6, ['2001:db8::1']);
    await m.applyAdditions();
    expect(r.ran).toHaveLength(3);
    expect(r.ran[2]).toContain(`create ${names.memberSet('h', 6)} hash:ip family inet6`);
    m.close();
  });

  it('starts no process while there are no member sets (memberMatch: expand)', async () => {
    const r = runner();
    const m = new IpsetManager({ names, runner: r });
    await m.applyAdditions();
    await m.apply();
    await afterReturn();
    expect(started).toHaveLength(0);
    m.close();
  });

  it("destroys an earlier run's set at start-up in the apply after the rules (applyAdditions, then apply)", async () => {
    const r = runner();
    const m = new IpsetManager({ names, runner: r, session: false });
    m.setMembers(names.memberSet('g', 4), 4, ['10.0.0.1']);
    await m.applyAdditions(); // the listing names virtfw-m4old, which nothing wants: kept for now (a rule may still use it)
    expect(r.ran.map((c) => c.split(' <<< ')[0])).toEqual(['ipset list -n', 'ipset restore']);
    expect(r.ran[1]).not.toContain('virtfw-m4old');
    await m.apply();
    expect(r.ran[2]).toBe('ipset restore <<< destroy virtfw-m4old\n');
  });

  it('raises a refused change with what was sent, and rewrites every set at the next write', async () => {
    const r = runner();
    const m = new IpsetManager({ names, runner: r });
    const missing = 'virtfw-m4missing';
    m.setMembers(missing, 4, ['10.0.0.1']);
    await m.apply();
    await afterReturn();
    m.setMembers(missing, 4, ['10.0.0.1', '10.0.0.2']);
    const err = await m.apply().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApplyError);
    expect((err as ApplyError).details).toMatchObject({ tool: 'ipset -', exitCode: null, input: `add ${missing} 10.0.0.2 -exist\n` });
    expect((err as ApplyError).message).toBe('ipset failed, its sets are rewritten at the next apply: ipset v7.17: The set with the given name does not exist');
    await m.apply();
    expect(r.ran.map((c) => c.split(' <<< ')[0])).toEqual(['ipset list -n', 'ipset restore', 'ipset list -n', 'ipset restore']);
    expect(r.ran[3]).toContain(`add ${missing} 10.0.0.2`);
    m.close();
  });

  it('hands the change to ipset restore when the session stops answering', async () => {
    const r = runner();
    const m = new IpsetManager({ names, runner: r, sessionTimeoutMs: 1000 });
    const hang = 'virtfw-m4hang';
    m.setMembers(hang, 4, []);
    await m.apply();
    m.setMembers(hang, 4, ['10.0.0.1']);
    await m.apply();
    expect(started).toHaveLength(1);
    expect(r.ran.at(-1)).toBe(`ipset restore <<< add ${hang} 10.0.0.1 -exist\n`);
    m.close();
  });
});
