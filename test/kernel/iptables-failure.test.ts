/**
 * IptablesFirewallDriver against the real kernel: a failed apply.
 *
 * The failure is real, not simulated: another tool in the namespace adds a
 * rule that jumps into one of virtfw's chains. The kernel then refuses to
 * delete that chain (EBUSY), so the iptables-restore transaction that wants
 * to delete it fails as a whole. The ruleset in force must be the previous
 * one, and packets must keep following it.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { IptablesFirewallDriver } from '../../src/drivers/iptables-driver.js';
import { ApplyError } from '../../src/errors.js';
import { EGRESS_ALL, Lab, expectReach, kernelSnapshot, saveRules, tcp, type Vm } from '../helpers/fixtures.js';
import { capture, sendFrames } from '../helpers/probe.js';

describe('a failed restore', () => {
  let lab: Lab;
  let driver: IptablesFirewallDriver;
  let a: Vm;
  let b: Vm;
  let o: Vm;

  // A lab per test: a failure in one cannot leave its conflict behind for the other.
  beforeEach(async () => {
    lab = await Lab.create();
    lab.api.putGroup({ id: 'out' }, EGRESS_ALL);
    lab.api.putGroup({ id: 'web' }, [{ direction: 'ingress', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 }]);
    lab.api.putGroup({ id: 'admin' }, [{ direction: 'ingress', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22 }]);
    lab.api.putGroup({ id: 'ops' }, [{ direction: 'ingress', protocol: 'tcp', portRangeMin: 8000, portRangeMax: 8000 }]);
    lab.api.putGroup({ id: 'udp' }, [{ direction: 'ingress', protocol: 'udp' }]);
    a = await lab.vm('a', 10, ['out', 'web']);
    b = await lab.vm('b', 11, ['out', 'web', 'admin', 'udp']);
    o = await lab.vm('o', 20);
    await lab.serve(a, b);
    driver = lab.driver();
    await lab.filter(driver, a, b);
  });

  afterEach(async () => {
    await lab?.destroy();
  });

  it('keeps the previous ruleset in force, says what failed, and converges once the conflict is gone', async () => {
    const adminChain = driver.names.group('admin', 'ingress');
    await expectReach({
      'o→b tcp/22 (admin)': [tcp(o, b.ip4, 22), true],
      'o→b tcp/80 (web)': [tcp(o, b.ip4, 80), true],
      "o→b tcp/8000 (ops: not yet b's group)": [tcp(o, b.ip4, 8000), false],
    });

    // Another tool jumps into virtfw's chain of group 'admin'.
    await lab.hostMust(['iptables', '-N', 'FOREIGN']);
    await lab.hostMust(['iptables', '-A', 'FOREIGN', '-j', adminChain]);
    const before = await kernelSnapshot(lab.topo);

    // b leaves 'admin' (its chain must go) and joins 'ops': one transaction.
    lab.api.setInstanceGroups('b', ['out', 'web', 'ops', 'udp']);
    const err = await driver.refreshInstanceSecurityRules(b.instance).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ApplyError);
    const applyError = err as ApplyError;
    expect(applyError.code).toBe('VIRTFW_ERR_APPLY');
    expect(applyError.message).toContain('iptables-restore');
    expect(applyError.message).toContain(adminChain);
    // The kernel's reason (iptables-nft-restore: "CHAIN_DEL failed (Device or resource busy)").
    // Soft, so the checks of the ruleset and the packets below still run and report.
    expect.soft(applyError.message).toMatch(/busy|CHAIN_DEL|CHAIN_USER_DEL/i);

    expect(await kernelSnapshot(lab.topo)).toEqual(before);
    await expectReach({
      'o→b tcp/22 (old rule still in force)': [tcp(o, b.ip4, 22), true],
      'o→b tcp/80': [tcp(o, b.ip4, 80), true],
      'o→b tcp/8000 (new rule not in force)': [tcp(o, b.ip4, 8000), false],
    });
    const status = driver.status().find((s) => s.instanceId === 'b');
    expect(status?.lastError).toContain('iptables-restore');

    // The other tool goes away; the next apply writes what was wanted.
    await lab.hostMust(['iptables', '-F', 'FOREIGN']);
    await lab.hostMust(['iptables', '-X', 'FOREIGN']);
    await driver.resync();
    expect(await saveRules(lab.topo, 4)).not.toContain(adminChain);
    expect(driver.status().find((s) => s.instanceId === 'b')?.lastError ?? null).toBeNull();
    await expectReach({
      'o→b tcp/22 (admin left)': [tcp(o, b.ip4, 22), false],
      'o→b tcp/80': [tcp(o, b.ip4, 80), true],
      'o→b tcp/8000 (ops joined)': [tcp(o, b.ip4, 8000), true],
    });
  });

  it("a failed unfilterInstance keeps the instance's anti-spoofing in force", async () => {
    const ingressA = driver.names.instanceIngress('a');
    await lab.hostMust(['iptables', '-N', 'FOREIGN2']);
    await lab.hostMust(['iptables', '-A', 'FOREIGN2', '-j', ingressA]);
    const before = await kernelSnapshot(lab.topo);
    expect(before.bridge).toContain('"tap-a" . fa:16:3e:00:00:10');

    const err = await driver.unfilterInstance(a.instance, a.nwinfo).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ApplyError);
    expect((err as ApplyError).message).toContain(ingressA);

    const spoofed = await capture(b, 'eth0', 'udp dst port 9941', () =>
      sendFrames(a, { kind: 'udp', dstMac: b.mac, dstIp: b.ip4, srcIp: '10.0.0.99', dport: 9941, count: 2 }),
    );
    const genuine = await capture(b, 'eth0', 'udp dst port 9942', () =>
      sendFrames(a, { kind: 'udp', dstMac: b.mac, dstIp: b.ip4, dport: 9942, count: 2 }),
    );
    const after = await kernelSnapshot(lab.topo);
    expect({ spoofed, genuine, v4: after.v4, bridge: after.bridge }).toEqual({
      spoofed: 0,
      genuine: 2,
      v4: before.v4,
      bridge: before.bridge,
    });
    // Each family is its own atomic transaction, applied side by side: the
    // IPv6 one (which nothing blocked) holds either the whole old or the whole
    // new ruleset, never a mix.
    const v6Old = after.v6 === before.v6;
    const v6New = !after.v6.includes('tap-a') && !after.v6.includes(ingressA) && !after.v6.includes(driver.names.instanceEgress('a'));
    expect(v6Old || v6New).toBe(true);
  });
});
