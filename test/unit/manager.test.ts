import { beforeEach, describe, expect, it } from 'vitest';
import { ApplyError } from '../../src/errors.js';
import { FakeKernel } from '../../src/kernel/fake-kernel.js';
import { IptablesManager } from '../../src/kernel/iptables-manager.js';
import { Names } from '../../src/render/names.js';

const names = new Names('virtfw');
const hooks = [{ builtin: 'FORWARD', target: 'virtfw-FORWARD' }];

function manager(kernel: FakeKernel): IptablesManager {
  return new IptablesManager({ names, runner: kernel, versions: [4], hooks });
}

const rulesOf = (kernel: FakeKernel, chain: string) =>
  kernel.chain('4', chain)?.map((r) => r.replace(/-m comment --comment "virtfw:[^"]+" /, ''));

describe('IptablesManager', () => {
  let kernel: FakeKernel;
  let m: IptablesManager;

  beforeEach(async () => {
    kernel = new FakeKernel();
    // Another tool's state, which must survive every apply.
    await kernel.run(['iptables-restore', '--noflush'], {
      input: '*filter\n:DOCKER-USER - [0:0]\n-A DOCKER-USER -j RETURN\n-A FORWARD -j DOCKER-USER\n-A INPUT -s 192.0.2.1/32 -j DROP\nCOMMIT\n',
    });
    m = manager(kernel);
    m.setChain(4, 'virtfw-FORWARD', ['-j virtfw-a']);
    m.setChain(4, 'virtfw-a', ['-p tcp -m tcp --dport 22 -j ACCEPT', '-j DROP']);
    await m.apply();
  });

  it('creates its chains and hooks once, leaving foreign rules as they were', () => {
    expect(kernel.chain('4', 'FORWARD')).toEqual([
      '-m comment --comment "virtfw:hook" -j virtfw-FORWARD',
      '-j DOCKER-USER',
    ]);
    expect(kernel.chain('4', 'DOCKER-USER')).toEqual(['-j RETURN']);
    expect(kernel.chain('4', 'INPUT')).toEqual(['-s 192.0.2.1/32 -j DROP']);
    expect(rulesOf(kernel, 'virtfw-a')).toEqual(['-p tcp -m tcp --dport 22 -j ACCEPT', '-j DROP']);
  });

  it('writes only the chains that changed', async () => {
    m.setChain(4, 'virtfw-b', ['-j ACCEPT']);
    m.setChain(4, 'virtfw-FORWARD', ['-j virtfw-a', '-j virtfw-b']);
    const stats = await m.apply();
    expect(stats.chainsWritten).toBe(2);
    const input = kernel.restoreInputs.at(-1) ?? '';
    expect(input).toContain(':virtfw-b - [0:0]');
    expect(input).not.toContain('virtfw-a -');
    expect(input).not.toContain('hook');
  });

  it('does nothing when nothing changed, and does not re-read the kernel', async () => {
    const saves = kernel.callCount('iptables-save');
    const restores = kernel.callCount('iptables-restore');
    m.setChain(4, 'virtfw-a', ['-p tcp -m tcp --dport 22 -j ACCEPT', '-j DROP']);
    const stats = await m.apply();
    expect(stats.restores).toBe(0);
    expect(kernel.callCount('iptables-save')).toBe(saves);
    expect(kernel.callCount('iptables-restore')).toBe(restores);
  });

  it('removes a chain and the reference to it in one transaction', async () => {
    m.setChain(4, 'virtfw-FORWARD', []);
    m.removeChain(4, 'virtfw-a');
    await m.apply();
    expect(kernel.chain('4', 'virtfw-a')).toBeUndefined();
    expect(kernel.chain('4', 'virtfw-FORWARD')).toEqual([]);
  });

  it('keeps the previous ruleset and the pending change when a restore fails', async () => {
    m.setChain(4, 'virtfw-a', ['-j ACCEPT']);
    kernel.failNext('iptables-restore', 'line 3 failed');
    await expect(m.apply()).rejects.toBeInstanceOf(ApplyError);
    expect(rulesOf(kernel, 'virtfw-a')).toEqual(['-p tcp -m tcp --dport 22 -j ACCEPT', '-j DROP']);
    expect(m.isInSync(4, 'virtfw-a')).toBe(false);
    // The next apply re-reads the kernel and retries.
    const saves = kernel.callCount('iptables-save');
    await m.apply();
    expect(kernel.callCount('iptables-save')).toBe(saves + 1);
    expect(rulesOf(kernel, 'virtfw-a')).toEqual(['-j ACCEPT']);
    expect(m.isInSync(4, 'virtfw-a')).toBe(true);
  });

  it('names the failing input line of a rejected restore', async () => {
    m.setChain(4, 'virtfw-a', ['-j virtfw-missing']);
    const err = await m.apply().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApplyError);
    expect((err as ApplyError).message).toMatch(/previous ruleset kept.*virtfw-missing/);
    expect((err as ApplyError).details.failedLine).toContain('-A virtfw-a');
  });

  it('batches deferred changes into one restore', async () => {
    m.deferApplyOn();
    const before = kernel.callCount('iptables-restore');
    for (let i = 0; i < 20; i++) {
      m.setChain(4, `virtfw-c${i}`, ['-j ACCEPT']);
      await m.apply();
    }
    expect(kernel.callCount('iptables-restore')).toBe(before);
    await m.deferApplyOff();
    expect(kernel.callCount('iptables-restore')).toBe(before + 1);
    expect(kernel.chain('4', 'virtfw-c19')).toBeDefined();
  });

  it('repairs drift after invalidate: a flushed chain, a deleted hook, a stale chain', async () => {
    await kernel.run(['iptables-restore', '--noflush'], {
      input:
        '*filter\n:virtfw-a - [0:0]\n:virtfw-stale - [0:0]\n-A virtfw-stale -j DROP\n-D FORWARD -m comment --comment "virtfw:hook" -j virtfw-FORWARD\nCOMMIT\n',
    });
    m.invalidate();
    await m.apply();
    expect(rulesOf(kernel, 'virtfw-a')).toEqual(['-p tcp -m tcp --dport 22 -j ACCEPT', '-j DROP']);
    expect(kernel.chain('4', 'virtfw-stale')).toBeUndefined();
    expect(kernel.chain('4', 'FORWARD')?.[0]).toBe('-m comment --comment "virtfw:hook" -j virtfw-FORWARD');
  });

  it('adopts an identical ruleset left by an earlier run without rewriting it', async () => {
    const again = manager(kernel);
    again.setChain(4, 'virtfw-FORWARD', ['-j virtfw-a']);
    again.setChain(4, 'virtfw-a', ['-p tcp -m tcp --dport 22 -j ACCEPT', '-j DROP']);
    const stats = await again.apply();
    expect(stats.restores).toBe(0);
  });

  it('removes duplicate hook rules', async () => {
    await kernel.run(['iptables-restore', '--noflush'], {
      input: '*filter\n-A FORWARD -m comment --comment "virtfw:hook" -j virtfw-FORWARD\nCOMMIT\n',
    });
    m.invalidate();
    await m.apply();
    expect(kernel.chain('4', 'FORWARD')?.filter((r) => r.includes('virtfw-FORWARD'))).toHaveLength(1);
  });

  it('teardown removes every chain and hook of ours and nothing else', async () => {
    await m.teardown();
    const saved = kernel.save('4');
    expect(saved).not.toContain('virtfw');
    expect(kernel.chain('4', 'FORWARD')).toEqual(['-j DOCKER-USER']);
    expect(kernel.chain('4', 'DOCKER-USER')).toEqual(['-j RETURN']);
  });

  it('refuses chains outside its prefix', () => {
    expect(() => m.setChain(4, 'FORWARD', [])).toThrow(/not ours/);
  });
});
