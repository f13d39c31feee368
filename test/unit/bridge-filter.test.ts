/**
 * BridgeFilter over the fake kernel: after the first (whole-table) apply,
 * each apply writes the elements of the devices set or removed since, and
 * nothing of the others; removed VIFs stay in force until apply() writes the
 * removals; a failure makes the next apply write the whole table again.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { BridgeFilter } from '../../src/kernel/bridge-filter.js';
import { FakeKernel } from '../../src/kernel/fake-kernel.js';
import { Names } from '../../src/render/names.js';
import { BRIDGE_RULES, type BridgeVif } from '../../src/render/bridge.js';

const vif = (n: number, ip4 = `10.0.0.${n}`): BridgeVif => ({
  devname: `tap${n}`,
  mac: `fa:16:3e:00:00:${n.toString(16).padStart(2, '0')}`,
  ip4: [ip4],
  ip6: [`fe80::${n}`],
});

describe('BridgeFilter', () => {
  let kernel: FakeKernel;
  let bridge: BridgeFilter;
  const last = () => kernel.nftScripts.at(-1) ?? '';

  beforeEach(async () => {
    kernel = new FakeKernel();
    bridge = new BridgeFilter({ names: new Names('virtfw'), runner: kernel });
    for (let n = 1; n <= 50; n++) bridge.setVif(vif(n));
    expect(await bridge.apply()).toBe(1);
    expect(last()).toMatch(/add table bridge/);
  });

  it('writes only the devices changed since the last apply', async () => {
    const before = kernel.nftScripts.length;
    expect(await bridge.apply()).toBe(0); // nothing changed: no transaction
    bridge.setVif(vif(7, '10.0.0.77'));
    bridge.setVif(vif(51));
    expect(await bridge.apply()).toBe(1);
    expect(kernel.nftScripts.length).toBe(before + 1);
    const script = last();
    expect(script).toMatch(/"tap7" \. 10\.0\.0\.77/);
    expect(script).toMatch(/"tap7" \. 10\.0\.0\.7\b/); // the old address goes
    expect(script).toMatch(/"tap51"/);
    expect(script).not.toMatch(/"tap(?!7"|51")\d+"/);
    expect(bridge.isInSync('tap7')).toBe(true);
  });

  it('keeps a removed VIF in force through applyAdditions and removes it with apply', async () => {
    bridge.removeVif('tap3');
    bridge.setVif(vif(52));
    await bridge.applyAdditions();
    expect(last()).toMatch(/"tap52"/);
    expect(last()).not.toMatch(/"tap3"/);
    expect(await bridge.applyAdditions()).toBe(0);
    expect(await bridge.apply()).toBe(1);
    expect(last()).toMatch(/delete element[^\n]*"tap3"/);
    expect(await bridge.apply()).toBe(0);
  });

  it('a device changed while its apply was planned stays to be written', async () => {
    bridge.setVif(vif(9, '10.0.0.90'));
    const plan = bridge.plan(true);
    bridge.setVif(vif(9, '10.0.0.91'));
    plan.committed();
    expect(bridge.isInSync('tap9')).toBe(false);
    expect(await bridge.apply()).toBe(1);
    expect(last()).toMatch(/"tap9" \. 10\.0\.0\.91/);
    expect(bridge.isInSync('tap9')).toBe(true);
  });

  it('after a failed transaction the next apply writes the whole table', async () => {
    bridge.setVif(vif(60));
    const plan = bridge.plan(true);
    expect(plan.script).not.toMatch(/add table/);
    bridge.failed();
    await bridge.apply();
    expect(last()).toMatch(/add table bridge/);
    expect(last()).toMatch(/"tap60"/);
    expect(last()).toMatch(/"tap1"/);
  });

  it('writes one mark chain per number however many VIFs share it, and removes it with its last VIF', async () => {
    bridge.setMark('tap1', 5);
    bridge.setMark('tap2', 5);
    bridge.setMark('tap999', 6); // not filtered: nothing
    await bridge.apply();
    let script = last();
    expect(script.match(/add chain bridge virtfw mark-5\n/g)).toHaveLength(1);
    expect(script).toContain('add element bridge virtfw vif_mark { "tap1" : jump mark-5, "tap2" : jump mark-5 }');
    expect(script).not.toContain('mark-6');
    expect(bridge.ruleCount()).toBe(BRIDGE_RULES.length + 2);

    bridge.setMark('tap1', undefined);
    await bridge.apply();
    script = last();
    expect(script).toContain('delete element bridge virtfw vif_mark { "tap1" : jump mark-5 }');
    expect(script).not.toContain('chain bridge virtfw mark-5'); // tap2 still has it

    bridge.removeVif('tap2');
    bridge.setMark('tap3', 7);
    await bridge.apply();
    script = last();
    expect(script).toContain('delete chain bridge virtfw mark-5');
    expect(script).toContain('add chain bridge virtfw mark-7');
    expect(script.indexOf('delete element bridge virtfw vif_mark')).toBeLessThan(script.indexOf('delete chain bridge virtfw mark-5'));

    // A whole-table rewrite writes each number's chain once.
    bridge.setMark('tap4', 7);
    bridge.invalidate();
    await bridge.apply();
    expect(last().match(/add chain bridge virtfw mark-7\n/g)).toHaveLength(1);
    expect(last()).not.toContain('mark-5');
  });
});
