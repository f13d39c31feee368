/**
 * The nftables driver over the fake kernel: what each change writes (one
 * transaction, only what changed), and the golden transaction of a host.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { ApplyError } from '../../src/errors.js';
import { NftablesFirewallDriver } from '../../src/drivers/nftables-driver.js';
import type { CommandRunner } from '../../src/kernel/exec.js';
import { FakeKernel } from '../../src/kernel/fake-kernel.js';
import { readRulesets } from '../../src/drivers/conflicts.js';
import { nftNames } from '../../src/render/nftables.js';
import { gatedRunner } from '../helpers/gated-runner.js';
import { InMemoryVirtAPI } from '../../src/virtapi/memory.js';
import { exampleApi, vif } from '../helpers/scenarios.js';

const web = { id: 'w1' };
const webNet = [vif(10)];
const db = { id: 'd1' };
const dbNet = [vif(20)];

describe('NftablesFirewallDriver (fake kernel)', () => {
  let api: InMemoryVirtAPI;
  let kernel: FakeKernel;
  let driver: NftablesFirewallDriver;
  const last = () => kernel.nftScripts.at(-1) ?? '';

  beforeEach(async () => {
    api = new InMemoryVirtAPI();
    api.putGroup({ id: 'web' }, [{ protocol: 'tcp', portRangeMin: 80 }, { remoteGroupId: 'db' }, { direction: 'egress' }]);
    api.putGroup({ id: 'db' }, [{ protocol: 'tcp', portRangeMin: 5432, remoteGroupId: 'web' }, { direction: 'egress' }]);
    api.putInstance(web, webNet, ['web']);
    api.putInstance(db, dbNet, ['db']);
    kernel = new FakeKernel();
    driver = new NftablesFirewallDriver(api, { runner: kernel, allowSameNetTraffic: false });
    driver.filterDeferApplyOn();
    for (const [i, n] of [[web, webNet], [db, dbNet]] as const) {
      await driver.setupBasicFiltering(i, n);
      await driver.prepareInstanceFilter(i, n);
    }
    await driver.filterDeferApplyOff();
  });

  it('writes the first apply as one transaction replacing both tables of ours', () => {
    const nftRuns = kernel.nftScripts.length;
    expect(nftRuns).toBe(1);
    const script = last();
    expect(script).toMatch(/^add table inet virtfw\ndelete table inet virtfw\n/);
    expect(script).toContain('add table bridge virtfw');
    expect(script).toContain(`add set inet virtfw ${nftNames.memberSet('db', 4)} { type ipv4_addr; }`);
    expect(kernel.callCount('iptables-restore')).toBe(0);
    expect(driver.status().every((s) => s.filtered)).toBe(true);
  });

  it('a membership change is set elements only', async () => {
    api.putInstance({ id: 'd2' }, [vif(21)], ['db']);
    await driver.refreshSecurityGroupMembers('db');
    expect(last()).toBe(
      `add element inet virtfw ${nftNames.memberSet('db', 4)} { 10.0.0.21 }\nadd element inet virtfw ${nftNames.memberSet('db', 6)} { 2001:db8::15 }\n`,
    );
  });

  it("a rule change replaces only its group's chain", async () => {
    api.addRule('web', { protocol: 'tcp', portRangeMin: 443 });
    await driver.refreshSecurityGroupRules('web');
    const lines = last().trim().split('\n');
    expect(lines[0]).toBe(`flush chain inet virtfw ${nftNames.group('web', 'ingress')}`);
    expect(lines.every((l) => l.includes(nftNames.group('web', 'ingress')))).toBe(true);
    expect(last()).toContain('tcp dport 443 accept');
  });

  it('removing an instance deletes its map elements before its chains, in one transaction', async () => {
    const ingress = driver.instanceChains('w1')?.ingress;
    await driver.unfilterInstance(web, webNet);
    const script = last();
    const firstElementDelete = script.indexOf('delete element inet virtfw to-vm4');
    const chainDelete = script.indexOf(`delete chain inet virtfw ${ingress}`);
    expect(firstElementDelete).toBeGreaterThanOrEqual(0);
    expect(chainDelete).toBeGreaterThan(firstElementDelete);
    expect(script).toContain('delete element bridge virtfw vifs { "tap10" }');
    expect(kernel.nftScripts.length).toBe(2);
  });

  it('instances with the same rules share their chains and mark; the last one to leave removes them', async () => {
    const ingress = driver.instanceChains('w1')?.ingress as string;
    const mark = /"tap10" : jump (mark-\d+)/.exec(kernel.nftScripts[0] ?? '')?.[1] as string;
    expect(mark).toBeDefined();
    const w2 = { id: 'w2' };
    const w2Net = [vif(11)];
    api.putInstance(w2, w2Net, ['web']);
    await driver.setupBasicFiltering(w2, w2Net);
    await driver.prepareInstanceFilter(w2, w2Net);
    expect(driver.instanceChains('w2')).toEqual(driver.instanceChains('w1'));
    let script = last();
    expect(script).not.toContain('add chain');
    expect(script).toContain(`add element inet virtfw to-vm4 { 10.0.0.11 : jump ${ingress} }`);
    expect(script).toContain(`add element bridge virtfw vif_mark { "tap11" : jump ${mark} }`);

    // w1 leaves: w2 still uses the chains and the mark.
    await driver.unfilterInstance(web, webNet);
    script = last();
    expect(script).toContain('delete element inet virtfw to-vm4 { 10.0.0.10 }');
    expect(script).not.toContain('delete chain');
    expect(script).not.toContain('to-mark');

    // w2 leaves: the chains, their mark dispatch and the bridge's mark chain go.
    await driver.unfilterInstance(w2, w2Net);
    script = last();
    expect(script).toContain(`delete chain inet virtfw ${ingress}`);
    expect(script).toMatch(/delete element inet virtfw to-mark \{ 0x[0-9a-f]{8} \}/);
    expect(script).toContain(`delete chain bridge virtfw ${mark}`);
  });

  it('an instance whose rules change moves to the chains (and mark) of its new rules', async () => {
    const before = driver.instanceChains('w1');
    api.setInstanceGroups('w1', ['db']);
    await driver.refreshInstanceSecurityRules(web);
    expect(driver.instanceChains('w1')).toEqual(driver.instanceChains('d1'));
    const script = last();
    const dbMark = /"tap20" : jump (mark-\d+)/.exec(kernel.nftScripts[0] ?? '')?.[1] as string;
    expect(script).toContain(`add element inet virtfw to-vm4 { 10.0.0.10 : jump ${driver.instanceChains('d1')?.ingress} }`);
    expect(script).toContain(`add element bridge virtfw vif_mark { "tap10" : jump ${dbMark} }`);
    // w1 was the only user of its old chains.
    expect(script).toContain(`delete chain inet virtfw ${before?.ingress}`);
    expect(script).toContain(`delete chain inet virtfw ${before?.egress}`);
    expect(script).not.toContain('add chain');
  });

  it('only an instance with a routed tap has an anti-spoofing chain of its own, removed with it', async () => {
    expect(kernel.nftScripts[0]).not.toContain('vm-spoof-');
    const r1 = { id: 'r1' };
    const r1Net = [vif(30, { routed: true })];
    api.putInstance(r1, r1Net, ['web']);
    await driver.prepareInstanceFilter(r1, r1Net);
    const spoof = nftNames.instanceSpoof('r1');
    expect(last()).toContain(`add chain inet virtfw ${spoof}`);
    expect(last()).not.toContain(nftNames.instanceSpoof('w1'));
    await driver.unfilterInstance(r1, r1Net);
    expect(last()).toContain(`delete chain inet virtfw ${spoof}`);
    // Removing a bridged instance touches no anti-spoofing chain.
    await driver.unfilterInstance(web, webNet);
    expect(last()).not.toContain('vm-spoof-');
  });

  it('a change made while a transaction runs is written by the next one', async () => {
    const gated = gatedRunner(kernel, (argv) => argv[0] === 'nft' && argv.includes('-f'));
    const d = new NftablesFirewallDriver(api, { runner: gated, allowSameNetTraffic: false });
    for (const [i, n] of [[web, webNet], [db, dbNet]] as const) {
      await d.setupBasicFiltering(i, n);
      await d.prepareInstanceFilter(i, n);
    }
    gated.arm();
    api.addRule('web', { protocol: 'tcp', portRangeMin: 443 });
    const ruleChange = d.refreshSecurityGroupRules('web');
    await gated.held();
    // While that transaction runs, a member joins a group the rules name.
    api.putInstance({ id: 'd2' }, [vif(21)], ['db']);
    const memberChange = d.refreshSecurityGroupMembers('db');
    gated.release();
    await Promise.all([ruleChange, memberChange]);
    expect(last()).toContain(`add element inet virtfw ${nftNames.memberSet('db', 4)} { 10.0.0.21 }`);
    expect(kernel.nftScripts.at(-2)).toContain('tcp dport 443 accept');
    expect(kernel.nftScripts.at(-2)).not.toContain('10.0.0.21');
  });

  it('a refused transaction keeps everything, says so with its text, and the next apply rewrites whole', async () => {
    api.addRule('web', { protocol: 'tcp', portRangeMin: 8443 });
    kernel.failNext('nft', 'Error: Could not process rule: No such file or directory');
    const err = await driver.refreshSecurityGroupRules('web').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApplyError);
    expect((err as ApplyError).message).toMatch(/whole transaction was refused/);
    expect(driver.status().find((s) => s.instanceId === 'w1')?.lastError).toMatch(/nft failed/);
    api.addRule('web', { protocol: 'tcp', portRangeMin: 8444 });
    await driver.refreshSecurityGroupRules('web');
    expect(last()).toMatch(/^add table inet virtfw\ndelete table inet virtfw\n/);
    expect(last()).toContain('tcp dport 8444 accept');
  });

  it('rules per instance do not grow with group sizes', async () => {
    const before = driver.ruleCounts().inet;
    for (let i = 0; i < 200; i++) api.putInstance({ id: `m${i}` }, [vif(100 + (i % 150), { devname: `tapm${i}` })], ['db']);
    await driver.refreshSecurityGroupMembers('db');
    expect(driver.ruleCounts().inet).toBe(before);
  });
});

describe('nftables golden transaction', () => {
  it('Nova defaults host, as one nft -f script', async () => {
    const api = exampleApi();
    const kernel = new FakeKernel();
    const driver = new NftablesFirewallDriver(api, { runner: kernel });
    driver.filterDeferApplyOn();
    const records = [...(await api.getSecurityGroupMembers('web')), ...(await api.getSecurityGroupMembers('db'))].filter(
      (r) => r.instance.id !== '5',
    );
    for (const r of records) {
      await driver.setupBasicFiltering(r.instance, r.networkInfo);
      await driver.prepareInstanceFilter(r.instance, r.networkInfo);
    }
    await driver.filterDeferApplyOff();
    const text = driver.renderRuleset().nft;
    expect(kernel.nftScripts[0]).toBe(text);
    await expect(text).toMatchFileSnapshot('../golden/nova-defaults.nft');
  });
});

describe('the look for other firewalls', () => {
  /** A runner that answers `nft list ruleset` with `ruleset` (null: fails) and records what ran. */
  const runnerWith = (ruleset: string | null) => {
    const ran: string[] = [];
    const runner: CommandRunner = {
      run: async (argv) => {
        ran.push(argv.join(' '));
        if (argv[0] === 'nft') return ruleset === null ? { code: 1, signal: null, stdout: '', stderr: 'nft failed' } : { code: 0, signal: null, stdout: ruleset, stderr: '' };
        return { code: 0, signal: null, stdout: `# ${argv[0]}\n`, stderr: '' };
      },
    };
    return { runner, ran };
  };

  it('reads iptables-nft only for a family whose tables nftables shows', async () => {
    const none = runnerWith('table inet other {\n}\n');
    expect((await readRulesets(none.runner)).iptables).toEqual(['# iptables-legacy-save\n', '# ip6tables-legacy-save\n', null, null]);
    expect(none.ran).not.toContain('iptables-nft-save');

    const v4 = runnerWith('table ip filter {\n\tchain FORWARD {\n\t}\n}\n');
    expect((await readRulesets(v4.runner)).iptables).toEqual(['# iptables-legacy-save\n', '# ip6tables-legacy-save\n', '# iptables-nft-save\n', null]);
    expect(v4.ran).not.toContain('ip6tables-nft-save');

    // Without the nft listing there is no telling: both are read.
    const unknown = runnerWith(null);
    expect((await readRulesets(unknown.runner)).iptables).toEqual([
      '# iptables-legacy-save\n',
      '# ip6tables-legacy-save\n',
      '# iptables-nft-save\n',
      '# ip6tables-nft-save\n',
    ]);
  });
});
