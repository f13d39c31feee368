/**
 * NftablesFirewallDriver: one failing transaction leaves the previous
 * ruleset whole. Every apply is ONE `nft -f` transaction covering IPv4 and
 * IPv6 rules, remote groups' member sets, the dispatch maps and the bridge
 * table; when the kernel refuses one statement, it refuses them all.
 *
 * The failures are real, not simulated:
 * - a chain the batch must delete is still referenced (EBUSY): another
 *   tool's (an operator's) chain in our table jumps into it, nft forbidding
 *   jumps across tables;
 * - a chain the batch must rewrite (flush) was deleted by hand (ENOENT).
 * After each failure the ruleset (`nft list ruleset`) is exactly as before,
 * packets of both families follow the old rules, the ApplyError says what
 * failed and carries the transaction, and a resync() converges.
 *
 * The two tests run side by side, each with a lab of its own (and the test's
 * own `expect`, for the soft assertions).
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { NftablesFirewallDriver } from '../../src/drivers/nftables-driver.js';
import { ApplyError } from '../../src/errors.js';
import { NFT, nftNames } from '../../src/render/nftables.js';
import { EGRESS_ALL, Lab, chainNamesOf, expectReach, nftElements, nftRuleset, tcp, type Vm } from '../helpers/fixtures.js';
import { capture, sendFrames } from '../helpers/probe.js';
import { exited, recordingRunner } from '../helpers/recording-runner.js';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';

async function applyError(work: Promise<unknown>): Promise<ApplyError> {
  const err = await work.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ApplyError);
  return err as ApplyError;
}

/** The same TCP probe over IPv4 and IPv6, for expectReach. */
function both(port: number, allowed: boolean, from: Vm, to: Vm, what: string) {
  return {
    [`${what} tcp/${port}`]: [tcp(from, to.ip4, port), allowed] as const,
    [`${what} tcp/${port} v6`]: [tcp(from, to.ip6, port), allowed] as const,
  };
}

interface Setup {
  lab: Lab;
  driver: NftablesFirewallDriver;
  /** member of 'db' */
  a: Vm;
  /** in 'web' and 'admin' */
  b: Vm;
  /** not filtered until the failing batch */
  c: Vm;
  /** unfiltered outside host */
  o: Vm;
}

/** A lab per test (they run side by side): a, b filtered by the nftables driver. */
async function setUp(): Promise<Setup> {
  const lab = await Lab.create();
  try {
    const { api } = lab;
    api.putGroup({ id: 'out' }, EGRESS_ALL);
    api.putGroup({ id: 'db' }, []);
    api.putGroup({ id: 'udp' }, [
      { direction: 'ingress', protocol: 'udp' },
      { direction: 'ingress', ethertype: 'IPv6', protocol: 'udp' },
    ]);
    api.putGroup({ id: 'web' }, [
      { direction: 'ingress', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 },
      { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 },
      { direction: 'ingress', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22, remoteGroupId: 'db' },
      { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22, remoteGroupId: 'db' },
    ]);
    api.putGroup({ id: 'admin' }, [
      { direction: 'ingress', protocol: 'tcp', portRangeMin: 9000, portRangeMax: 9000 },
      { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 9000, portRangeMax: 9000 },
    ]);
    api.putGroup({ id: 'ops' }, [
      { direction: 'ingress', protocol: 'tcp', portRangeMin: 9001, portRangeMax: 9001 },
      { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 9001, portRangeMax: 9001 },
    ]);
    const a = await lab.vm('a', 10, ['out', 'db']);
    const b = await lab.vm('b', 11, ['out', 'web', 'admin', 'udp']);
    const c = await lab.vm('c', 12, ['out']);
    const o = await lab.vm('o', 20);
    await lab.serve(a, b, c);
    const driver = lab.driver('nftables');
    await lab.filter(driver, a, b);
    return { lab, driver, a, b, c, o };
  } catch (err) {
    await lab.destroy();
    throw err;
  }
}

/** Spoofed and genuine frames from c to b (what the bridge table decides). */
async function fromC({ b, c }: Setup): Promise<{ spoofed: number; genuine: number }> {
  const [spoofed, genuine] = await Promise.all([
    capture(b, 'eth0', 'udp dst port 9961', () =>
      sendFrames(c, { kind: 'udp', dstMac: b.mac, dstIp: b.ip4, srcIp: '10.0.0.99', dport: 9961, count: 2 }),
    ),
    capture(b, 'eth0', 'udp dst port 9962', () => sendFrames(c, { kind: 'udp', dstMac: b.mac, dstIp: b.ip4, dport: 9962, count: 2 })),
  ]);
  return { spoofed, genuine };
}

describe.concurrent('NftablesFirewallDriver: a failed transaction', () => {
  const labs: Lab[] = [];

  afterAll(async () => {
    await Promise.all(labs.map((lab) => lab.destroy()));
  });

  it('refuses IPv4, IPv6, member sets, maps and the bridge table together when one statement fails (EBUSY)', async ({ expect }) => {
    const setup = await setUp();
    labs.push(setup.lab);
    const { lab, driver, a, b, c, o } = setup;
    const adminChain = nftNames.group('admin', 'ingress');
    // An operator's chain in our table jumps into the chain of group 'admin'.
    await lab.hostMust(['nft', 'add', 'chain', 'inet', 'virtfw', 'debug']);
    await lab.hostMust(['nft', 'add', 'rule', 'inet', 'virtfw', 'debug', 'jump', adminChain]);
    const before = await nftRuleset(lab.topo);
    const oldRules = {
      ...both(9000, true, o, b, 'o→b (admin)'),
      ...both(8000, false, o, b, 'o→b (web: not yet)'),
      ...both(9001, false, o, b, 'o→b (ops: not yet)'),
      ...both(22, true, a, b, 'a (db member)→b'),
      ...both(22, false, c, b, 'c (not yet in db)→b'),
      ...both(81, true, o, c, 'o→c (c not yet filtered)'),
    };
    await expectReach(oldRules);
    expect(await fromC(setup)).toEqual({ spoofed: 2, genuine: 2 });

    // One batch: web gets an IPv4 and an IPv6 rule, c joins 'db' (member
    // sets) and is filtered (chains, map elements, bridge elements), b leaves
    // 'admin' (its chain must go: refused) for 'ops'.
    lab.api.addRule('web', { direction: 'ingress', protocol: 'tcp', portRangeMin: 8000, portRangeMax: 8000 });
    lab.api.addRule('web', { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 8000, portRangeMax: 8000 });
    lab.api.setInstanceGroups('c', ['out', 'db']);
    lab.api.setInstanceGroups('b', ['out', 'web', 'ops', 'udp']);
    driver.filterDeferApplyOn();
    await driver.refreshSecurityGroupRules('web');
    await driver.refreshSecurityGroupMembers('db');
    await lab.filter(driver, c);
    await driver.refreshInstanceSecurityRules(b.instance);
    const err = await applyError(driver.filterDeferApplyOff());

    expect(err.code).toBe('VIRTFW_ERR_APPLY');
    expect(err.message).toContain('nft failed, previous ruleset kept');
    expect(err.message).toContain(`delete chain inet virtfw ${adminChain}`);
    expect(err.message).toMatch(/Device or resource busy/);
    const input = String(err.details.input);
    expect(input).toBe(driver.nft.lastInput);
    // The transaction held every part of the batch.
    expect(input).toContain(`delete chain inet virtfw ${adminChain}`);
    expect(input).toContain(`add chain inet virtfw ${nftNames.group('ops', 'ingress')}`);
    expect(input).toContain(`add rule inet virtfw ${nftNames.group('web', 'ingress')} meta nfproto ipv4 tcp dport 8000 accept`);
    expect(input).toContain(`add rule inet virtfw ${nftNames.group('web', 'ingress')} meta nfproto ipv6 tcp dport 8000 accept`);
    expect(input).toContain(`add element inet virtfw ${nftNames.memberSet('db', 4)} { ${c.ip4} }`);
    expect(input).toContain(`add element inet virtfw ${nftNames.memberSet('db', 6)} {`);
    const to4 = input.split('\n').filter((l) => l.startsWith(`add element inet virtfw ${NFT.maps.to4} {`));
    expect(to4.join('\n')).toContain(`${c.ip4} : jump ${chainNamesOf(driver).instanceIngress('c')}`);
    expect(input).toMatch(/add element bridge virtfw vif_mac \{ "tap-c" \. fa:16:3e:00:00:12 \}/);

    // Nothing changed: both families, the sets, the maps, the bridge table.
    expect(await nftRuleset(lab.topo)).toEqual(before);
    expect(await nftElements(lab.topo, 'inet', 'virtfw', nftNames.memberSet('db', 4))).toEqual([a.ip4]);
    await expectReach(oldRules);
    expect(await fromC(setup)).toEqual({ spoofed: 2, genuine: 2 });
    expect(driver.status().find((s) => s.instanceId === 'b')?.lastError).toContain('resource busy');
    expect(await driver.instanceFilterExists(c.instance, c.nwinfo)).toBe(false);

    // The operator's chain goes; a resync writes what was wanted, whole.
    await lab.hostMust(['nft', 'delete', 'chain', 'inet', 'virtfw', 'debug']);
    await driver.resync();
    expect(driver.status().every((s) => s.lastError === null)).toBe(true);
    expect(await driver.instanceFilterExists(c.instance, c.nwinfo)).toBe(true);
    await expectReach({
      ...both(9000, false, o, b, 'o→b (admin left)'),
      ...both(8000, true, o, b, 'o→b (web rule added)'),
      ...both(9001, true, o, b, 'o→b (ops joined)'),
      ...both(22, true, a, b, 'a (db member)→b'),
      ...both(22, true, c, b, 'c (joined db)→b'),
      ...both(81, false, o, c, 'o→c (c filtered)'),
    });
    expect(await fromC(setup)).toEqual({ spoofed: 0, genuine: 2 });
  });

  it('a chain deleted by hand makes the next rewrite of it fail as one transaction; resync repairs', async ({ expect }) => {
    const setup = await setUp();
    labs.push(setup.lab);
    const { lab, driver, a, b, o } = setup;
    const ingressB = chainNamesOf(driver).instanceIngress('b');
    const ingressA = chainNamesOf(driver).instanceIngress('a');
    // An operator takes b out of our filter by hand: every dispatch element
    // that jumps to its ingress chain, then the chain.
    let removed = 0;
    for (const map of Object.values(NFT.maps)) {
      const keys = (await nftElements(lab.topo, 'inet', 'virtfw', map))
        .filter((e) => e.endsWith(` : jump ${ingressB}`))
        .map((e) => e.slice(0, -` : jump ${ingressB}`.length))
        .map((k) => (map === NFT.maps.toDev ? `"${k}"` : k));
      if (keys.length === 0) continue;
      await lab.hostMust(['nft', 'delete', 'element', 'inet', 'virtfw', map, `{ ${keys.join(', ')} }`]);
      removed += keys.length;
    }
    expect(removed).toBeGreaterThanOrEqual(3); // b's IPv4, IPv6 and link-local addresses at least
    await lab.hostMust(['nft', 'delete', 'chain', 'inet', 'virtfw', ingressB]);
    const before = await nftRuleset(lab.topo);
    const handState = {
      ...both(81, true, o, b, 'o→b (b ingress unfiltered by hand)'),
      ...both(9001, true, o, b, 'o→b'),
      ...both(22, false, o, a, 'o→a (a untouched)'),
    };
    await expectReach(handState);

    // b leaves 'admin' for 'ops': its ingress rules change, so it moves to another
    // chain and its old one (gone by hand) is flushed and deleted; a new group chain.
    lab.api.setInstanceGroups('b', ['out', 'web', 'ops', 'udp']);
    lab.api.setInstanceGroups('a', ['out', 'db', 'web']);
    driver.filterDeferApplyOn();
    await driver.refreshInstanceSecurityRules(b.instance);
    await driver.refreshInstanceSecurityRules(a.instance);
    const err = await applyError(driver.filterDeferApplyOff());
    expect(err.message).toContain(`flush chain inet virtfw ${ingressB}`);
    expect(err.message).toMatch(/No such file or directory/);
    expect(String(err.details.input)).toContain(`add chain inet virtfw ${nftNames.group('ops', 'ingress')}`);
    expect(String(err.details.input)).toContain(`flush chain inet virtfw ${ingressA}`);

    // a's rewrite, in the same transaction, did not happen either.
    expect(await nftRuleset(lab.topo)).toEqual(before);
    await expectReach({
      ...handState,
      ...both(80, false, o, a, 'o→a (web not yet a group of a)'),
    });

    // resync() reports what it repaired (a chain and its dispatch elements were missing).
    // Soft, so the packet checks below still run and report.
    expect.soft(await driver.resync()).toBeGreaterThan(0);
    await expectReach({
      ...both(81, false, o, b, 'o→b (b filtered again)'),
      ...both(9001, true, o, b, 'o→b (ops)'),
      ...both(9000, false, o, b, 'o→b (admin left)'),
      ...both(80, true, o, a, 'o→a (web)'),
    });
  });

  it('member changes go through one kept nft -i: a refused change keeps the ruleset and says why; a killed session is replaced', async ({ expect }) => {
    const lab = await Lab.create();
    labs.push(lab);
    lab.api.putGroup({ id: 'out' }, EGRESS_ALL);
    lab.api.putGroup({ id: 'db' }, []);
    lab.api.putGroup({ id: 'web' }, [
      { direction: 'ingress', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22, remoteGroupId: 'db' },
      { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22, remoteGroupId: 'db' },
    ]);
    const a = await lab.vm('a', 10, ['out', 'db']);
    const b = await lab.vm('b', 11, ['out', 'web']);
    const o = await lab.vm('o', 20);
    await lab.serve(b);
    // Every tool the driver runs or starts, and the processes it keeps.
    const runner = recordingRunner();
    const { ran, kept } = runner;
    const driver = lab.driver('nftables', { runner });
    await lab.filter(driver, a, b);
    const set4 = nftNames.memberSet('db', 4);
    expect(await nftElements(lab.topo, 'inet', 'virtfw', set4)).toEqual([a.ip4]);

    // o joins db: set elements through the kept session, no nft -f.
    lab.api.putInstance(o.instance, o.nwinfo, ['db']);
    ran.length = 0;
    await driver.refreshSecurityGroupMembers('db');
    expect(ran).toEqual([]);
    expect(kept).toHaveLength(1);
    expect(driver.lastApplyStats).toMatchObject({ transactions: 1, chainsWritten: 0, elementChanges: 2 });
    expect((await nftElements(lab.topo, 'inet', 'virtfw', set4)).sort()).toEqual([a.ip4, o.ip4].sort());
    await expectReach({ 'o (db)→b tcp/22': [tcp(o, b.ip4, 22), true] });

    // Someone deletes o's address from the set by hand; o leaving db then
    // deletes an element that is not there: nft refuses the whole line.
    await lab.hostMust(['nft', 'delete', 'element', 'inet', 'virtfw', set4, `{ ${o.ip4} }`]);
    lab.api.putInstance(a.instance, a.nwinfo, ['out']);
    lab.api.putInstance(o.instance, o.nwinfo, []);
    const before = await nftRuleset(lab.topo);
    const err = await applyError(driver.refreshSecurityGroupMembers('db'));
    expect(err.details.tool).toBe('nft -i');
    expect(err.message).toMatch(/No such file or directory/);
    expect(String(err.details.input)).toContain(`delete element inet virtfw ${set4}`);
    expect(await nftRuleset(lab.topo)).toEqual(before); // a's address is still in the set: nothing of the line happened
    expect(await nftElements(lab.topo, 'inet', 'virtfw', set4)).toEqual([a.ip4]);
    // The next apply rewrites the table whole (its picture of the kernel was stale) and converges.
    expect.soft(await driver.resync()).toBeGreaterThan(0);
    expect(await nftElements(lab.topo, 'inet', 'virtfw', set4)).toEqual([]);

    // The kept process dies: the next change starts a new one (a session that breaks
    // in the middle of a change hands it to nft -f: test/unit/nft-session.test.ts).
    const first = kept[0] as ChildProcessWithoutNullStreams;
    first.kill('SIGKILL');
    await exited(first);
    lab.api.putInstance(o.instance, o.nwinfo, ['db']);
    ran.length = 0;
    await driver.refreshSecurityGroupMembers('db');
    expect(await nftElements(lab.topo, 'inet', 'virtfw', set4)).toEqual([o.ip4]);
    expect(kept).toHaveLength(2);
    expect(ran.filter((c) => c.startsWith('nft -f'))).toEqual([]);
    await expectReach({ 'o (db again)→b tcp/22': [tcp(o, b.ip4, 22), true], 'a (left db)→b tcp/22': [tcp(a, b.ip4, 22), false] });

    // close() ends the kept process.
    await driver.close();
    const last = kept.at(-1) as ChildProcessWithoutNullStreams;
    await exited(last);
    expect(last.exitCode !== null || last.signalCode !== null).toBe(true);
  });
});
