/**
 * IptablesFirewallDriver, member sets through a kept `ipset -` process, with
 * the real ipset in a namespace of the test's own: a membership change is
 * member adds and deletes through that process (no `ipset restore`, no
 * iptables-restore) and takes effect for packets; its sync line creates
 * nothing; a change the kernel refuses (a set deleted by hand) is raised and
 * the next apply repairs it; a killed process is replaced; close() ends it.
 */
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { ApplyError } from '../../src/errors.js';
import { EGRESS_ALL, Lab, expectReach, tcp } from '../helpers/fixtures.js';
import { exited, recordingRunner } from '../helpers/recording-runner.js';

describe('IptablesFirewallDriver: member changes through a kept ipset process', () => {
  const labs: Lab[] = [];

  afterAll(async () => {
    for (const lab of labs) await lab.destroy();
  });

  it('adds and deletes members through it; a refused change is raised and repaired; a killed process is replaced', async () => {
    const lab = await Lab.create();
    labs.push(lab);
    lab.api.putGroup({ id: 'out' }, EGRESS_ALL);
    lab.api.putGroup({ id: 'db' }, []);
    lab.api.putGroup({ id: 'web' }, [{ direction: 'ingress', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22, remoteGroupId: 'db' }]);
    const a = await lab.vm('a', 10, ['out', 'db']);
    const b = await lab.vm('b', 11, ['out', 'web']);
    const o = await lab.vm('o', 20);
    await lab.serve(b);
    // Every tool the driver runs, and the processes it keeps.
    const runner = recordingRunner();
    const { ran, kept } = runner;
    const driver = lab.driver('iptables', { runner, memberMatch: 'ipset' });
    const set4 = driver.names.memberSet('db', 4);
    const members = async () => (await lab.hostMust(['ipset', 'list', set4])).split('Members:\n')[1]?.trim().split('\n').filter(Boolean).sort() ?? [];
    await lab.filter(driver, a, b);
    expect(await members()).toEqual([a.ip4]);
    await expectReach({ 'o (not in db)→b tcp/22': [tcp(o, b.ip4, 22), false] });

    // o joins db: a member add through the kept process, no tool run at all.
    lab.api.putInstance(o.instance, o.nwinfo, ['db']);
    ran.length = 0;
    await driver.refreshSecurityGroupMembers('db');
    expect(ran).toEqual([]);
    expect(kept).toHaveLength(1);
    expect(await members()).toEqual([a.ip4, o.ip4].sort());
    await expectReach({ 'o (db)→b tcp/22': [tcp(o, b.ip4, 22), true] });
    // The sync line after each change is refused while parsing: no set of that name, or any other, appeared.
    expect((await lab.hostMust(['ipset', 'list', '-n'])).split('\n').filter((n) => n && !n.startsWith('virtfw-'))).toEqual([]);

    // Someone destroys the set by hand (the rules naming it go first): a's
    // leaving db is refused by the kernel, raised with what was sent, and the
    // next apply (its picture of the kernel was stale) rewrites the set.
    const v4rules = await lab.hostMust(['iptables-save', '-t', 'filter']);
    const naming = v4rules.split('\n').filter((l) => l.startsWith('-A ') && l.includes(`--match-set ${set4} `));
    expect(naming.length).toBeGreaterThan(0);
    for (const rule of naming) await lab.hostMust(['iptables', '-D', ...rule.slice(3).match(/(?:"[^"]*"|\S)+/g)!.map((t) => t.replace(/^"|"$/g, ''))]);
    await lab.hostMust(['ipset', 'destroy', set4]);
    lab.api.putInstance(a.instance, a.nwinfo, ['out']);
    const err = await driver.refreshSecurityGroupMembers('db').then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ApplyError);
    expect((err as ApplyError).details.tool).toBe('ipset -');
    expect((err as ApplyError).message).toMatch(/does not exist/);
    expect(String((err as ApplyError).details.input)).toContain(`del ${set4} ${a.ip4} -exist`);
    expect(await driver.resync()).toBeGreaterThan(0);
    expect(await members()).toEqual([o.ip4]);
    await expectReach({ 'o (db)→b tcp/22 after repair': [tcp(o, b.ip4, 22), true], 'a (left db)→b tcp/22': [tcp(a, b.ip4, 22), false] });

    // The kept process dies: the next change starts a new one.
    const first = kept[0] as ChildProcessWithoutNullStreams;
    first.kill('SIGKILL');
    await exited(first);
    lab.api.putInstance(a.instance, a.nwinfo, ['out', 'db']);
    ran.length = 0;
    await driver.refreshSecurityGroupMembers('db');
    expect(ran).toEqual([]);
    expect(kept.length).toBeGreaterThanOrEqual(2);
    expect(await members()).toEqual([a.ip4, o.ip4].sort());
    await expectReach({ 'a (db again)→b tcp/22': [tcp(a, b.ip4, 22), true] });

    // close() ends the kept process.
    await driver.close();
    const last = kept.at(-1) as ChildProcessWithoutNullStreams;
    await exited(last);
    expect(last.exitCode !== null || last.signalCode !== null).toBe(true);
  });
});
