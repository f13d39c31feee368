/**
 * IpsetManager's member changes over the fake kernel (no session: every
 * write is one `ipset restore`): the lines it writes for a set's new members.
 */
import { describe, expect, it } from 'vitest';
import { FakeKernel } from '../../src/kernel/fake-kernel.js';
import { IpsetManager } from '../../src/kernel/ipset-manager.js';
import { Names } from '../../src/render/names.js';

const names = new Names('virtfw');
const set = names.memberSet('g', 4);

async function started() {
  const kernel = new FakeKernel();
  const m = new IpsetManager({ names, runner: kernel });
  m.setMembers(set, 4, ['10.0.0.9', '10.0.0.3', '10.0.0.9', '10.0.0.10']);
  await m.apply();
  return { kernel, m };
}

describe('IpsetManager member changes', () => {
  it('creates a set with its members sorted, each once', async () => {
    const { kernel, m } = await started();
    expect(kernel.ipsetScripts.at(-1)).toBe(
      `create ${set} hash:ip family inet maxelem 262144 -exist\nadd ${set} 10.0.0.10\nadd ${set} 10.0.0.3\nadd ${set} 10.0.0.9\n`,
    );
    expect(m.memberCount()).toBe(3);
  });

  it('writes only the members that left (first) and joined, whatever the order it is given them in', async () => {
    const { kernel, m } = await started();
    m.setMembers(set, 4, ['10.0.0.9', '10.0.0.4', '10.0.0.10', '10.0.0.2']);
    await m.apply();
    expect(kernel.ipsetScripts.at(-1)).toBe(`del ${set} 10.0.0.3 -exist\nadd ${set} 10.0.0.2 -exist\nadd ${set} 10.0.0.4 -exist\n`);
    m.setMembers(set, 4, []);
    await m.apply();
    expect(kernel.ipsetScripts.at(-1)).toBe(
      ['10.0.0.10', '10.0.0.2', '10.0.0.4', '10.0.0.9'].map((a) => `del ${set} ${a} -exist\n`).join(''),
    );
  });

  it('writes nothing for the members it last wrote, and all of them once it no longer knows what the kernel holds', async () => {
    const { kernel, m } = await started();
    const calls = kernel.ipsetScripts.length;
    m.setMembers(set, 4, ['10.0.0.10', '10.0.0.3', '10.0.0.9']);
    await m.apply();
    expect(kernel.ipsetScripts.length).toBe(calls);
    m.invalidate();
    m.setMembers(set, 4, ['10.0.0.3']);
    await m.apply();
    // (the fake kernel lists no set, so it is created again with its members)
    expect(kernel.ipsetScripts.at(-1)).toBe(`create ${set} hash:ip family inet maxelem 262144 -exist\nadd ${set} 10.0.0.3\n`);
  });
});

describe('IpsetManager keeps its own members', () => {
  it('a caller changing its list after setMembers changes nothing the manager writes', async () => {
    const kernel = new FakeKernel();
    const m = new IpsetManager({ names, runner: kernel });
    const list = ['10.0.0.1', '10.0.0.2'];
    m.setMembers(set, 4, list);
    list.push('10.0.0.3');
    await m.apply();
    expect(kernel.ipsetScripts.at(-1)).not.toContain('10.0.0.3');
    expect(m.memberCount()).toBe(2);
  });
});
