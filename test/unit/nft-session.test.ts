/**
 * NftSession and NftManager's use of it, with stand-in processes instead of
 * nft (no kernel is touched): how a transaction's outcome is read from what
 * the process prints, and that a session that breaks hands the transaction
 * to `nft -f`. The real `nft -i` is exercised in test/kernel/nftables-atomic.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import type { CommandResult, CommandRunner } from '../../src/kernel/exec.js';
import { NftManager } from '../../src/kernel/nft-manager.js';
import { NftSession, SessionBrokenError } from '../../src/kernel/nft-session.js';
import { ApplyError } from '../../src/errors.js';

/**
 * A stand-in for `nft -i` (a small node program): every input line is echoed
 * on stderr as nft does for a rejected line, under an "Error:" line, except
 * lines starting with "add" (accepted: silent) or naming "hang" (from then on it never answers).
 */
const FAKE_NFT = `
const rl = require('node:readline').createInterface({ input: process.stdin });
let hung = false;
rl.on('line', (line) => {
  if (hung) return;
  if (line.includes('hang')) { hung = true; return; }
  if (line.startsWith('add')) return;
  process.stderr.write('Error: Could not process rule: No such file or directory\\n' + line + '\\n' + ' '.repeat(3) + '^^^\\n');
});`;

const started: ChildProcessWithoutNullStreams[] = [];

/** Lets the manager's post-apply work run (it waits for the caller of the apply to go on first). */
const afterReturn = () => new Promise<void>((resolve) => setImmediate(resolve));

function runner(): CommandRunner & { ran: string[] } {
  const ran: string[] = [];
  return {
    ran,
    run: async (argv, opts): Promise<CommandResult> => {
      ran.push(`${argv.join(' ')} <<< ${opts?.input ?? ''}`);
      return { code: 0, signal: null, stdout: '', stderr: '' };
    },
    start: () => {
      const child = spawn(process.execPath, ['-e', FAKE_NFT], { stdio: ['pipe', 'pipe', 'pipe'] });
      started.push(child);
      return child;
    },
  };
}

afterEach(() => {
  for (const child of started.splice(0)) child.kill('SIGKILL');
});

describe('NftSession', () => {
  it('reads success, failure and the failing text from what the process prints before the sync line', async () => {
    const session = new NftSession(runner(), 'nft', 5000);
    expect(await session.run('add element inet t s { 10.0.0.1 }')).toEqual({ ok: true });
    const failed = await session.run('delete element inet t s { 10.0.0.9 }');
    expect(failed.ok).toBe(false);
    expect(failed.ok === false && failed.stderr).toMatch(/^Error: Could not process rule: No such file or directory\ndelete element inet t s \{ 10\.0\.0\.9 \}\n/);
    // The next one starts clean: nothing of the previous answer leaks into it.
    expect(await session.run('add element inet t s { 10.0.0.2 }')).toEqual({ ok: true });
    expect(started).toHaveLength(1);
    session.close();
  });

  it('reports a session that does not answer, or ends, as broken, and starts a new process next time', async () => {
    const session = new NftSession(runner(), 'nft', 300);
    await expect(session.run('hang')).rejects.toBeInstanceOf(SessionBrokenError);
    expect(await session.run('add element inet t s { 10.0.0.3 }')).toEqual({ ok: true });
    expect(started).toHaveLength(2);
    const child = started[1] as ChildProcessWithoutNullStreams;
    const answer = session.run('hang');
    child.kill('SIGKILL');
    await expect(answer).rejects.toThrow(/ended|no answer/);
    await expect(session.run('two\nlines')).rejects.toThrow(/one line/);
  });
});

describe('NftManager with a kept session', () => {
  const maps = { m: 'ipv4_addr : verdict' };

  it('sends element-only changes through the session as one line, everything else through nft -f', async () => {
    const r = runner();
    const nft = new NftManager({ table: 'virtfw', runner: r, maps });
    nft.setChain('c', ['accept']);
    nft.setSet('s', 'ipv4_addr', ['10.0.0.1']);
    await nft.apply();
    expect(r.ran).toHaveLength(1); // the first apply: the whole table
    // The session is started, ready for element changes, once the apply has returned.
    expect(started).toHaveLength(0);
    await afterReturn();
    expect(started).toHaveLength(1);
    nft.setSet('s', 'ipv4_addr', ['10.0.0.2']);
    // "delete" is refused by the stand-in: the manager raises what it said.
    const err = await nft.apply().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApplyError);
    expect((err as ApplyError).details).toMatchObject({ tool: 'nft -i', exitCode: null });
    expect((err as ApplyError).message).toMatch(/No such file or directory/);
    expect(String((err as ApplyError).details.input)).toBe('delete element inet virtfw s { 10.0.0.1 }\nadd element inet virtfw s { 10.0.0.2 }\n');
    // After a failure the picture is stale: the next apply is a whole table again, through nft -f.
    await nft.apply();
    expect(r.ran).toHaveLength(2);
    // Adds only: through the session, no nft -f.
    nft.setSet('s', 'ipv4_addr', ['10.0.0.2', '10.0.0.3']);
    await nft.apply();
    expect(r.ran).toHaveLength(2);
    // A chain change: nft -f.
    nft.setChain('c', ['drop']);
    await nft.apply();
    expect(r.ran).toHaveLength(3);
    nft.close();
  });

  it('hands the transaction to nft -f when the session breaks', async () => {
    const r = runner();
    const nft = new NftManager({ table: 'virtfw', runner: r, maps, sessionTimeoutMs: 2000 });
    // (s holds an element, so that the warm-up's no-op element add names s, not the set that hangs the stand-in.)
    nft.setSet('s', 'ipv4_addr', ['10.0.0.9']);
    nft.setSet('hang', 'ipv4_addr', []);
    await nft.apply();
    expect(r.ran).toHaveLength(1);
    // Elements of the set named "hang": the stand-in stops answering; nft -f gets the same transaction.
    nft.setSet('hang', 'ipv4_addr', ['10.0.0.1']);
    await nft.apply();
    expect(r.ran).toHaveLength(2);
    expect(r.ran[1]).toBe('nft -f - <<< add element inet virtfw hang { 10.0.0.1 }\n');
    // A new session is ready for the next element change (started once the fallback committed).
    await afterReturn();
    expect(started).toHaveLength(2);
    nft.setSet('s', 'ipv4_addr', ['10.0.0.9', '10.0.0.5']);
    await nft.apply();
    expect(started).toHaveLength(2);
    expect(r.ran).toHaveLength(2);
    nft.close();
  });

  it('warms a new session with two no-op transactions after an apply, queued before the next change', async () => {
    const r = runner();
    const written: string[] = [];
    const recording: CommandRunner = {
      run: r.run,
      start: (argv) => {
        const child = (r.start as NonNullable<CommandRunner['start']>)(argv);
        const write = child.stdin.write.bind(child.stdin) as (chunk: string) => boolean;
        (child.stdin as unknown as { write: (chunk: string) => boolean }).write = (chunk: string) => {
          written.push(...chunk.split('\n').filter((l) => l && !l.startsWith('virtfw-sync-')));
          return write(chunk);
        };
        return child;
      },
    };
    const nft = new NftManager({ table: 'virtfw', runner: recording, maps });
    nft.setSet('empty', 'ipv4_addr', []);
    nft.setSet('s', 'ipv4_addr', ['10.0.0.1']);
    await nft.apply();
    await afterReturn();
    nft.setSet('s', 'ipv4_addr', ['10.0.0.1', '10.0.0.2']);
    await nft.apply();
    nft.setSet('s', 'ipv4_addr', ['10.0.0.1', '10.0.0.2', '10.0.0.3']);
    await nft.apply();
    // The warm-up came first, once (the session was not new any more after
    // it): the table, then an element the kernel holds, added again.
    expect(written).toEqual([
      'add table inet virtfw',
      'add element inet virtfw s { 10.0.0.1 }',
      'add element inet virtfw s { 10.0.0.2 }',
      'add element inet virtfw s { 10.0.0.3 }',
    ]);
    expect(r.ran).toHaveLength(1);
    nft.close();
  });

  it('starts no session when closed before its warm-up, and a change right after an apply starts the session itself', async () => {
    const r = runner();
    const nft = new NftManager({ table: 'virtfw', runner: r, maps });
    nft.setSet('s', 'ipv4_addr', []);
    await nft.apply();
    nft.close();
    await afterReturn();
    expect(started).toHaveLength(0);
    // Not closed: an element change that comes before the warm-up starts the session and is its first line.
    const again = new NftManager({ table: 'virtfw', runner: r, maps });
    again.setSet('s', 'ipv4_addr', []);
    await again.apply();
    again.setSet('s', 'ipv4_addr', ['10.0.0.1']);
    await again.apply();
    expect(started).toHaveLength(1);
    await afterReturn();
    expect(started).toHaveLength(1);
    expect(r.ran).toHaveLength(2);
    again.close();
  });

  it('never starts a session on a runner that cannot keep one', async () => {
    const r = runner();
    const plain: CommandRunner = { run: r.run };
    const nft = new NftManager({ table: 'virtfw', runner: plain, maps });
    nft.setSet('s', 'ipv4_addr', []);
    await nft.apply();
    nft.setSet('s', 'ipv4_addr', ['10.0.0.1']);
    await nft.apply();
    expect(r.ran).toHaveLength(2);
    expect(started).toHaveLength(0);
  });
});
