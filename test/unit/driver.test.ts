/**
 * IptablesFirewallDriver over the fake kernel: what each seed method changes,
 * and that it changes only that. Packet behaviour is proven in test/kernel.
 */
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { ApplyError, NotFilteredError, ValidationError } from '../../src/errors.js';
import { IptablesFirewallDriver } from '../../src/drivers/iptables-driver.js';
import { connectionAddresses } from '../../src/drivers/model-driver.js';
import type { CommandRunner } from '../../src/kernel/exec.js';
import { FakeKernel } from '../../src/kernel/fake-kernel.js';
import { InMemoryVirtAPI } from '../../src/virtapi/memory.js';
import { gatedRunner } from '../helpers/gated-runner.js';
import { vif } from '../helpers/scenarios.js';

const web = { id: 'w1' };
const webNet = [vif(10)];
const db = { id: 'd1' };
const dbNet = [vif(20)];

function setup(memberMatch: 'ipset' | 'expand' = 'ipset') {
  const api = new InMemoryVirtAPI();
  api.putGroup({ id: 'web' }, [
    { protocol: 'tcp', portRangeMin: 80 },
    { remoteGroupId: 'db' },
    { direction: 'egress' },
  ]);
  api.putGroup({ id: 'db' }, [{ protocol: 'tcp', portRangeMin: 5432, remoteGroupId: 'web' }, { direction: 'egress' }]);
  api.putInstance(web, webNet, ['web']);
  api.putInstance(db, dbNet, ['db']);
  const kernel = new FakeKernel();
  const driver = new IptablesFirewallDriver(api, { runner: kernel, allowSameNetTraffic: false, memberMatch });
  return { api, kernel, driver };
}

const restores = (k: FakeKernel) => k.callCount('iptables-restore') + k.callCount('ip6tables-restore');

describe('IptablesFirewallDriver (fake kernel)', () => {
  let api: InMemoryVirtAPI;
  let kernel: FakeKernel;
  let driver: IptablesFirewallDriver;

  beforeEach(async () => {
    ({ api, kernel, driver } = setup());
    for (const [i, n] of [[web, webNet], [db, dbNet]] as const) {
      await driver.setupBasicFiltering(i, n);
      await driver.prepareInstanceFilter(i, n);
      await driver.applyInstanceFilter(i, n);
    }
  });

  it('filters prepared instances and reports them', async () => {
    expect(await driver.instanceFilterExists(web, webNet)).toBe(true);
    expect(driver.status().map((s) => [s.instanceId, s.filtered, s.lastError])).toEqual([
      ['d1', true, null],
      ['w1', true, null],
    ]);
    const webIngress = kernel.chain('4', driver.names.group('web', 'ingress'))?.join('\n') ?? '';
    expect(webIngress).toContain(`-m set --match-set ${driver.names.memberSet('db', 4)} src -j ACCEPT`);
    expect(kernel.ipsetScripts.join('\n')).toContain(`add ${driver.names.memberSet('db', 4)} 10.0.0.20`);
  });

  it('a member change made while an ipset restore runs is written by the next one', async () => {
    const gated = gatedRunner(kernel, (argv) => argv[0] === 'ipset' && argv[1] === 'restore');
    const d = new IptablesFirewallDriver(api, { runner: gated, allowSameNetTraffic: false, memberMatch: 'ipset' });
    for (const [i, n] of [[web, webNet], [db, dbNet]] as const) {
      await d.setupBasicFiltering(i, n);
      await d.prepareInstanceFilter(i, n);
    }
    gated.arm();
    api.putInstance({ id: 'd2' }, [vif(21)], ['db']);
    const first = d.refreshSecurityGroupMembers('db');
    await gated.held();
    api.putInstance({ id: 'd3' }, [vif(22)], ['db']);
    const second = d.refreshSecurityGroupMembers('db');
    gated.release();
    await Promise.all([first, second]);
    expect(kernel.ipsetScripts.join('\n')).toContain(`add ${d.names.memberSet('db', 4)} 10.0.0.22`);
  });

  it('a membership change is set elements only: no iptables-restore at all', async () => {
    api.putInstance({ id: 'd2' }, [vif(21)], ['db']);
    const before = restores(kernel);
    const ipsetBefore = kernel.ipsetScripts.length;
    await driver.refreshSecurityGroupMembers('db');
    expect(restores(kernel)).toBe(before);
    expect(kernel.ipsetScripts.slice(ipsetBefore)).toEqual([`add ${driver.names.memberSet('db', 4)} 10.0.0.21 -exist\nadd ${driver.names.memberSet('db', 6)} 2001:db8::15 -exist\n`]);
  });

  it('a membership change is the last apply of the instances whose rules name the group; a failed one is their error', async () => {
    const lastApply = (id: string) => driver.status().find((s) => s.instanceId === id)?.lastApply ?? '';
    const lastError = (id: string) => driver.status().find((s) => s.instanceId === id)?.lastError;
    const dbBefore = lastApply('d1');
    await new Promise((resolve) => setTimeout(resolve, 5));
    api.putInstance({ id: 'd2' }, [vif(21)], ['db']);
    await driver.refreshSecurityGroupMembers('db');
    expect(lastApply('w1') > dbBefore).toBe(true); // web's rules name db
    expect(lastApply('d1')).toBe(dbBefore); // db's name only web

    api.putInstance({ id: 'd3' }, [vif(22)], ['db']);
    kernel.failNext('ipset', 'ipset v7.17: Kernel error received: out of memory');
    await expect(driver.refreshSecurityGroupMembers('db')).rejects.toBeInstanceOf(ApplyError);
    expect(lastError('w1')).toMatch(/out of memory/);
    expect(lastError('d1')).toBeNull();
    await driver.refreshSecurityGroupMembers('db');
    expect(lastError('w1')).toBeNull();
    expect(kernel.ipsetScripts.join('\n')).toContain(`10.0.0.22`);
  });

  it('reads a group\'s members from their records when the store gives no ready-made addresses', async () => {
    const recordsOnly = {
      getInstanceSecurityGroups: (id: string) => api.getInstanceSecurityGroups(id),
      getSecurityGroupRules: (id: string) => api.getSecurityGroupRules(id),
      getSecurityGroupMembers: (id: string) => api.getSecurityGroupMembers(id),
      getProviderRules: () => api.getProviderRules(),
    };
    const other = new FakeKernel();
    const d = new IptablesFirewallDriver(recordsOnly, { runner: other, allowSameNetTraffic: false, memberMatch: 'ipset' });
    for (const [i, n] of [[web, webNet], [db, dbNet]] as const) {
      await d.setupBasicFiltering(i, n);
      await d.prepareInstanceFilter(i, n);
    }
    api.putInstance({ id: 'd2' }, [vif(21)], ['db']);
    await Promise.all([d.refreshSecurityGroupMembers('db'), driver.refreshSecurityGroupMembers('db')]);
    expect(d.renderRuleset()).toEqual(driver.renderRuleset());
    expect(d.renderRuleset().ipset).toContain(`add ${d.names.memberSet('db', 4)} 10.0.0.21`);
  });

  it('expand mode (Nova): a membership refresh rewrites only the chains of groups that name the group', async () => {
    const expand = setup('expand');
    for (const [i, n] of [[web, webNet], [db, dbNet]] as const) await expand.driver.prepareInstanceFilter(i, n);
    expand.api.putInstance({ id: 'd2' }, [vif(21)], ['db']);
    const before = expand.kernel.restoreInputs.length;
    await expand.driver.refreshSecurityGroupMembers('db');
    const written = expand.kernel.restoreInputs.slice(before).join('\n');
    const declared = [...written.matchAll(/^:(\S+)/gm)].map((m) => m[1]);
    expect(declared).toEqual([expand.driver.names.group('web', 'ingress')]);
    expect(written).toContain('-s 10.0.0.21/32 -j ACCEPT');
  });

  it('sets no rule matches any more are destroyed after the rules that used them', async () => {
    api.putGroup({ id: 'web' }, [{ protocol: 'tcp', portRangeMin: 80 }, { direction: 'egress' }]);
    await driver.refreshSecurityGroupRules('web');
    const last = kernel.ipsetScripts.at(-1) ?? '';
    expect(last).toContain(`destroy ${driver.names.memberSet('db', 4)}`);
    // The iptables transaction that dropped the rule ran before the destroy.
    expect(kernel.save('4')).not.toContain(driver.names.memberSet('db', 4));
  });

  it('a rule refresh rewrites only that group chain when the group keeps its kinds of rules', async () => {
    api.addRule('web', { protocol: 'tcp', portRangeMin: 443 });
    const ipsetBefore = kernel.ipsetScripts.length;
    const membersRead = vi.spyOn(api, 'getSecurityGroupMembers');
    const addressesRead = vi.spyOn(api, 'getSecurityGroupMemberAddresses');
    const before = kernel.restoreInputs.length;
    await driver.refreshSecurityGroupRules('web');
    const declared = [...kernel.restoreInputs.slice(before).join('\n').matchAll(/^:(\S+)/gm)].map((m) => m[1]);
    expect(declared).toEqual([driver.names.group('web', 'ingress')]);
    // The members of the group its rules name are kept, not read again nor rewritten.
    expect(membersRead).not.toHaveBeenCalled();
    expect(addressesRead).not.toHaveBeenCalled();
    expect(kernel.ipsetScripts.length).toBe(ipsetBefore);
  });

  it('a group gaining its first IPv6 rule adds the jump to it in its instances', async () => {
    api.addRule('web', { ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 443 });
    await driver.refreshSecurityGroupRules('web');
    expect(kernel.chain('6', driver.names.instanceIngress('w1'))?.join('\n')).toContain(driver.names.group('web', 'ingress'));
  });

  it('refreshes of groups and members this host does not use do nothing', async () => {
    const before = restores(kernel);
    await driver.refreshSecurityGroupRules('elsewhere');
    await driver.refreshSecurityGroupMembers('elsewhere');
    expect(restores(kernel)).toBe(before);
  });

  it('refreshInstanceSecurityRules follows a change of groups and drops unused group chains', async () => {
    api.setInstanceGroups('w1', ['db']);
    await driver.refreshInstanceSecurityRules(web);
    expect(kernel.chain('4', driver.names.group('web', 'ingress'))).toBeUndefined();
    expect(kernel.chain('4', driver.names.instanceIngress('w1'))?.join('\n')).toContain(driver.names.group('db', 'ingress'));
  });

  it('refreshInstanceSecurityRules of an instance it does not filter raises', async () => {
    await expect(driver.refreshInstanceSecurityRules({ id: 'nope' })).rejects.toBeInstanceOf(NotFilteredError);
  });

  it('provider rules are read on first prepare and on refresh', async () => {
    expect(kernel.chain('4', driver.names.provider)).toEqual([]);
    api.addProviderRule({ cidr: '192.0.2.0/24', protocol: 'udp', fromPort: 53, toPort: 53 });
    await driver.refreshProviderFwRules();
    expect(kernel.chain('4', driver.names.provider)?.[0]).toContain('-s 192.0.2.0/24 -p udp -m udp --dport 53 -j DROP');
  });

  it('unfiltering removes every chain and dispatch rule of the instance, and its bridge elements', async () => {
    await driver.unfilterInstance(web, webNet);
    const saved = kernel.save('4') + kernel.save('6');
    expect(saved).not.toContain(driver.names.instanceIngress('w1'));
    expect(saved).not.toContain('tap10');
    expect(saved).not.toContain(driver.names.group('web', 'ingress'));
    expect(kernel.nftScripts.at(-1)).toContain('delete element bridge virtfw vifs { "tap10" }');
    expect(await driver.instanceFilterExists(web, webNet)).toBe(false);
  });

  it('unfiltering an instance it does not filter is a no-op', async () => {
    const before = restores(kernel);
    await driver.unfilterInstance({ id: 'ghost' }, []);
    expect(restores(kernel)).toBe(before);
  });

  it('preparing again replaces the rules instead of adding to them', async () => {
    const moved = [vif(10, { devname: 'tap99' })];
    api.putInstance(web, moved, ['web']);
    await driver.prepareInstanceFilter(web, moved);
    const dispatch = kernel.save('4');
    expect(dispatch).toContain('tap99');
    expect(dispatch).not.toContain('--physdev-in tap10 ');
  });

  it('deferred apply batches any number of instances into one restore per family', async () => {
    const before = restores(kernel);
    driver.filterDeferApplyOn();
    for (let i = 0; i < 25; i++) {
      const inst = { id: `n${i}` };
      const net = [vif(100 + i)];
      api.putInstance(inst, net, ['web']);
      await driver.prepareInstanceFilter(inst, net);
    }
    expect(restores(kernel)).toBe(before);
    await driver.filterDeferApplyOff();
    expect(restores(kernel)).toBe(before + 2);
    expect(driver.filteredInstances()).toHaveLength(27);
  });

  it('a failed apply keeps the old rules, reports the error in status, and the next change retries', async () => {
    api.addRule('web', { protocol: 'tcp', portRangeMin: 8443 });
    kernel.failNext('iptables-restore', 'Error occurred at line: 2');
    await expect(driver.refreshSecurityGroupRules('web')).rejects.toBeInstanceOf(ApplyError);
    expect(kernel.save('4')).not.toContain('8443');
    expect(driver.status().find((s) => s.instanceId === 'w1')?.lastError).toMatch(/iptables-restore failed/);
    await driver.refreshSecurityGroupRules('web');
    expect(kernel.save('4')).toContain('--dport 8443');
    expect(driver.status().find((s) => s.instanceId === 'w1')?.lastError).toBeNull();
  });

  it('any write that succeeds writes what an earlier one failed to, and clears its error', async () => {
    api.addRule('web', { protocol: 'tcp', portRangeMin: 8443 });
    kernel.failNext('iptables-restore', 'Error occurred at line: 2');
    await expect(driver.refreshSecurityGroupRules('web')).rejects.toBeInstanceOf(ApplyError);
    expect(driver.status().find((s) => s.instanceId === 'w1')?.lastError).toMatch(/iptables-restore failed/);
    // A change that concerns only d1 (db's rules name web): the failed rule of web goes in with it.
    api.putInstance({ id: 'w2' }, [vif(11)], ['web']);
    await driver.refreshSecurityGroupMembers('web');
    expect(kernel.save('4')).toContain('--dport 8443');
    expect(driver.status().map((s) => s.lastError)).toEqual([null, null]);
  });

  it('when the anti-spoofing of a new VIF fails, no iptables rule is written for it, and the next apply writes both', async () => {
    const n2 = { id: 'n2' };
    const n2Net = [vif(30)];
    api.putInstance(n2, n2Net, ['web']);
    const before = restores(kernel);
    driver.filterDeferApplyOn();
    await driver.setupBasicFiltering(n2, n2Net);
    await driver.prepareInstanceFilter(n2, n2Net);
    kernel.failNext('nft', 'Error: Could not process rule: No such file or directory');
    await expect(driver.filterDeferApplyOff()).rejects.toBeInstanceOf(ApplyError);
    expect(restores(kernel)).toBe(before);
    expect(kernel.chain('4', driver.names.instanceIngress('n2'))).toBeUndefined();
    expect(await driver.instanceFilterExists(n2, n2Net)).toBe(false);
    // The next apply writes the bridge elements and the chains.
    await driver.refreshInstanceSecurityRules(n2);
    expect(kernel.chain('4', driver.names.instanceIngress('n2'))).toBeDefined();
    expect(await driver.instanceFilterExists(n2, n2Net)).toBe(true);
  });

  it('bad input at the entry points is refused before anything is applied', async () => {
    const before = restores(kernel) + kernel.callCount('nft');
    const bad = [
      () => driver.prepareInstanceFilter({ id: 'x y' }, []),
      () => driver.prepareInstanceFilter({ id: 'x' }, [{ ...vif(5), devname: 'tap;rm' }]),
      () => driver.setupBasicFiltering({ id: 'x' }, [{ ...vif(5), address: 'zz' }]),
      () => driver.refreshSecurityGroupRules('--flush'),
      () => driver.refreshSecurityGroupMembers('a\nb'),
      () => driver.prepareInstanceFilter({ id: 'x' }, [vif(5, { devname: 'tap10' })]),
    ];
    for (const call of bad) await expect(call()).rejects.toBeInstanceOf(ValidationError);
    expect(restores(kernel) + kernel.callCount('nft')).toBe(before);
  });

  it('a bad rule in the data store is refused with the field named, and nothing is applied', async () => {
    api.addRule('web', { protocol: 'tcp', portRangeMin: 70000 });
    const before = restores(kernel);
    const err = await driver.refreshSecurityGroupRules('web').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ValidationError);
    expect((err as ValidationError).field).toBe('securityGroup web rules[3].portRangeMin');
    expect(restores(kernel)).toBe(before);
  });

  it('chain names stay within 28 characters for UUID ids', async () => {
    const uuid = '3f2504e0-4f89-11d3-9a0c-0305e82c3301';
    api.putInstance({ id: uuid }, [vif(50)], ['web']);
    await driver.prepareInstanceFilter({ id: uuid }, [vif(50)]);
    for (const name of driver.manager.chainNames(4)) expect(name.length).toBeLessThanOrEqual(28);
  });

  it('teardown leaves nothing of ours', async () => {
    await driver.teardown();
    expect(kernel.save('4') + kernel.save('6')).not.toContain('virtfw');
    expect(kernel.nftScripts.at(-1)).toBe('add table bridge virtfw\ndelete table bridge virtfw\n');
  });
});

describe('constructor options', () => {
  it.each([
    [{ prefix: 'Bad-Prefix' }, 'options.prefix'],
    [{ prefix: 'waytoolongprefix' }, 'options.prefix'],
    [{ fallbackAction: 'ACCEPT' }, 'options.fallbackAction'],
    [{ memberMatch: 'both' }, 'options.memberMatch'],
    [{ netns: 'a b' }, 'options.netns'],
    [{ ipv6: 'yes' }, 'options.ipv6'],
    [{ lockWaitSeconds: -1 }, 'options.lockWaitSeconds'],
  ])('%j is refused', (options, field) => {
    let caught: unknown;
    try {
      new IptablesFirewallDriver(new InMemoryVirtAPI(), options as never);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ValidationError);
    expect((caught as ValidationError).field).toBe(field);
  });
});

describe('forgetting the connections of unfiltered instances', () => {
  /**
   * A fake kernel whose `conntrack -L` shows `listing` (null: fails, as without
   * permission), recording every conntrack command; a delete matches nothing.
   */
  function withConntrack(listing: Record<'ipv4' | 'ipv6', string> | null) {
    const kernel = new FakeKernel();
    const ran: string[] = [];
    const runner: CommandRunner = {
      run: async (argv, options) => {
        if (argv[0] !== 'conntrack') return kernel.run(argv, options);
        ran.push(argv.join(' '));
        if (argv[1] !== '-L') return { code: 1, signal: null, stdout: '', stderr: '' };
        if (listing === null) return { code: 2, signal: null, stdout: '', stderr: 'Operation not permitted' };
        const family = argv[argv.indexOf('-f') + 1] as 'ipv4' | 'ipv6';
        return { code: 0, signal: null, stdout: listing[family], stderr: '' };
      },
    };
    return { runner, ran };
  }

  async function unfilterBatch(runner: CommandRunner, count: number): Promise<void> {
    const api = new InMemoryVirtAPI();
    api.putGroup({ id: 'g' }, [{ direction: 'egress' }]);
    const vms = Array.from({ length: count }, (_, i) => ({ instance: { id: `i${i}` }, net: [vif(10 + i)] }));
    for (const { instance, net } of vms) api.putInstance(instance, net, ['g']);
    const driver = new IptablesFirewallDriver(api, { runner, allowSameNetTraffic: false });
    for (const { instance, net } of vms) await driver.prepareInstanceFilter(instance, net);
    driver.filterDeferApplyOn();
    for (const { instance, net } of vms) await driver.unfilterInstance(instance, net);
    await driver.filterDeferApplyOff();
    await driver.connectionCleanupDone();
  }

  it('reads every address of both directions of a conntrack listing', () => {
    const listing = [
      'tcp      6 117 TIME_WAIT src=10.0.0.10 dst=10.0.0.11 sport=40000 dport=80 src=10.0.0.11 dst=10.0.0.10 sport=80 dport=40000 [ASSURED] mark=0 use=1',
      'udp      17 29 src=2001:db8:0:0::a dst=2001:db8::b sport=5000 dport=5353 [UNREPLIED] src=2001:db8::b dst=2001:db8::a sport=5353 dport=5000 mark=0 use=1',
    ].join('\n');
    expect([...connectionAddresses(listing)].sort()).toEqual(['10.0.0.10', '10.0.0.11', '2001:db8::a', '2001:db8::b']);
  });

  it('a few instances: their addresses are deleted directly', async () => {
    const { runner, ran } = withConntrack({ ipv4: '', ipv6: '' });
    await unfilterBatch(runner, 2);
    expect(ran.filter((c) => c.startsWith('conntrack -L'))).toEqual([]);
    expect(ran).toContain('conntrack -D -f ipv4 -s 10.0.0.10');
    expect(ran).toContain('conntrack -D -f ipv6 -d 2001:db8::b');
    expect(ran).toHaveLength(8);
  });

  it('many instances: one listing per family, then deletes only for the addresses it shows', async () => {
    const listing = 'tcp      6 117 TIME_WAIT src=10.0.0.13 dst=10.0.0.200 sport=1 dport=2 src=10.0.0.200 dst=10.0.0.13 sport=2 dport=1 mark=0 use=1\n';
    const { runner, ran } = withConntrack({ ipv4: listing, ipv6: '' });
    await unfilterBatch(runner, 20);
    expect(ran).toEqual(['conntrack -L -f ipv4', 'conntrack -L -f ipv6', 'conntrack -D -f ipv4 -s 10.0.0.13', 'conntrack -D -f ipv4 -d 10.0.0.13']);
  });

  it('many instances and an unreadable listing: every address is deleted', async () => {
    const { runner, ran } = withConntrack(null);
    await unfilterBatch(runner, 20);
    expect(ran.filter((c) => c.startsWith('conntrack -D'))).toHaveLength(20 * 2 * 2);
  });
});
