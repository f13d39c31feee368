/**
 * Conformance suite (both kernel drivers) against the real kernel: what a
 * driver leaves in the host namespace over an instance's life. Unfiltering
 * restores the ruleset, other tools' rules survive every apply, deferred
 * apply writes nothing until it ends, teardown removes everything of ours.
 * Every kernel-state assertion is backed by packets.
 *
 * Each driver gets a topology of its own; the two drivers' suites run side
 * by side (describe.concurrent), the tests of one driver in order.
 *
 * Kernel state per driver: iptables → `iptables-save` / `ip6tables-save`
 * (chains named by `driver.names`) plus the bridge table; nftables → the
 * `inet virtfw` table (chains named by `nftNames`, dispatch maps, member
 * sets) plus the same bridge table, and the whole `nft list ruleset`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NFT, nftNames } from '../../src/render/nftables.js';
import {
  DRIVERS,
  EGRESS_ALL,
  Lab,
  chainNamesOf,
  expectReach,
  foreignLines,
  kernelSnapshot,
  nftChains,
  nftElements,
  nftList,
  nftRuleset,
  saveRules,
  tcp,
  withoutTables,
  type KernelDriver,
  type Vm,
} from '../helpers/fixtures.js';
import { capture, sendFrames } from '../helpers/probe.js';

const OUR_TABLES = ['inet virtfw', 'bridge virtfw'];

describe('unfilterInstance', () => {
  describe.concurrent.each(DRIVERS)('%s driver', (kind) => {
    let lab: Lab;
    let a: Vm;
    let b: Vm;
    let o: Vm;

    beforeAll(async () => {
      lab = await Lab.create();
      lab.api.putGroup({ id: 'out' }, EGRESS_ALL);
      lab.api.putGroup({ id: 'web' }, [{ direction: 'ingress', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 }]);
      // a's own group, with a remote-group rule, so unfiltering a must also drop a group chain and member tracking
      lab.api.putGroup({ id: 'a-only' }, [
        { direction: 'ingress', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22 },
        { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22, remoteGroupId: 'web' },
      ]);
      a = await lab.vm('a', 10, ['out', 'a-only']);
      b = await lab.vm('b', 11, ['out', 'web']);
      o = await lab.vm('o', 20);
      await lab.serve(a, b);
    });

    afterAll(async () => {
      await lab?.destroy();
    });

    it.sequential('leaves the kernel as it was before the instance was prepared, with another instance still filtered', async () => {
      const driver = lab.driver(kind);
      const names = chainNamesOf(driver);
      try {
        await lab.filter(driver, b);
        const before = await kernelSnapshot(lab.topo);
        const rulesetBefore = await nftRuleset(lab.topo);
        expect(before.bridge).toContain('"tap-b" . fa:16:3e:00:00:11');

        await lab.filter(driver, a);
        const during = await kernelSnapshot(lab.topo);
        if (kind === 'iptables') {
          expect(during.v4).toContain(names.instanceIngress('a'));
          expect(during.v6).toContain(names.instanceIngress('a'));
          expect(during.v4).toContain(names.group('a-only', 'ingress'));
        } else {
          const chains = await nftChains(lab.topo, 'inet', 'virtfw');
          expect(chains.get(names.instanceIngress('a'))).toContain(`jump ${names.group('a-only', 'ingress')}`);
          expect(await nftElements(lab.topo, 'inet', 'virtfw', NFT.maps.to4)).toContain(`${a.ip4} : jump ${names.instanceIngress('a')}`);
          expect(await nftElements(lab.topo, 'inet', 'virtfw', NFT.maps.to6)).toContain(`${a.ip6} : jump ${names.instanceIngress('a')}`);
          // The remote group's members (b's IPv6 addresses) are a set of the inet table.
          expect(await nftElements(lab.topo, 'inet', 'virtfw', nftNames.memberSet('web', 6))).toContain(b.ip6);
        }
        expect(during.bridge).toContain('"tap-a" . fa:16:3e:00:00:10');
        await expectReach({
          'o→a tcp/22 (a filtered)': [tcp(o, a.ip4, 22), true],
          'o→a tcp/81 (a filtered)': [tcp(o, a.ip4, 81), false],
        });

        await driver.unfilterInstance(a.instance, a.nwinfo);
        const after = await kernelSnapshot(lab.topo);
        expect(after.v4).toEqual(before.v4);
        expect(after.v6).toEqual(before.v6);
        expect(after.inet).toEqual(before.inet);
        expect(after.bridge).not.toContain('tap-a');
        expect(after.bridge).toEqual(before.bridge);
        // Counters and handles aside, the whole nftables ruleset is as before.
        expect(await nftRuleset(lab.topo)).toEqual(rulesetBefore);
        expect(await driver.instanceFilterExists(a.instance, a.nwinfo)).toBe(false);
        expect(await driver.instanceFilterExists(b.instance, b.nwinfo)).toBe(true);
        await expectReach({
          'o→a tcp/81 (a unfiltered)': [tcp(o, a.ip4, 81), true],
          'o→b tcp/80 (b still filtered)': [tcp(o, b.ip4, 80), true],
          'o→b tcp/81 (b still filtered)': [tcp(o, b.ip4, 81), false],
        });
      } finally {
        await driver.teardown();
      }
    });

    it.sequential('prepareInstanceFilter on a filtered instance replaces its rules instead of adding to them', async () => {
      const driver = lab.driver(kind);
      const names = chainNamesOf(driver);
      await lab.filter(driver, b);
      await expectReach({
        'o→b tcp/80 (web)': [tcp(o, b.ip4, 80), true],
        'o→b tcp/22': [tcp(o, b.ip4, 22), false],
      });
      lab.api.setInstanceGroups('b', ['out', 'a-only']);
      try {
        await driver.prepareInstanceFilter(b.instance, b.nwinfo);
        await expectReach({
          'o→b tcp/80 (web no longer its group)': [tcp(o, b.ip4, 80), false],
          'o→b tcp/22 (a-only)': [tcp(o, b.ip4, 22), true],
        });
        if (kind === 'iptables') {
          const v4 = await saveRules(lab.topo, 4);
          expect(v4).not.toContain(names.group('web', 'ingress'));
          expect(v4.split('\n').filter((l) => l.includes('--physdev-out tap-b'))).toHaveLength(1);
        } else {
          const chains = await nftChains(lab.topo, 'inet', 'virtfw');
          expect(chains.has(names.group('web', 'ingress'))).toBe(false);
          expect(chains.get(names.instanceIngress('b'))).toEqual([
            `jump ${NFT.ingressBase}`,
            `jump ${names.group('a-only', 'ingress')}`,
            `jump ${NFT.fallback}`,
          ]);
          expect(await nftElements(lab.topo, 'inet', 'virtfw', NFT.maps.to4)).toEqual([`${b.ip4} : jump ${names.instanceIngress('b')}`]);
        }
      } finally {
        lab.api.setInstanceGroups('b', ['out', 'web']);
        await driver.teardown();
      }
    });
  });
});

describe("other tools' rules in the same namespace", () => {
  describe.concurrent.each(DRIVERS)('%s driver', (kind) => {
    let lab: Lab;
    let driver: KernelDriver;
    let a: Vm;
    let b: Vm;
    let o: Vm;

    const FOREIGN_V4 = [
      ['iptables', '-N', 'DOCKER-USER'],
      ['iptables', '-A', 'DOCKER-USER', '-j', 'RETURN'],
      ['iptables', '-A', 'FORWARD', '-j', 'DOCKER-USER'],
      ['iptables', '-A', 'FORWARD', '-s', '198.51.100.0/24', '-j', 'DROP'],
      ['iptables', '-A', 'INPUT', '-s', '192.0.2.1', '-j', 'DROP'],
      ['iptables', '-A', 'INPUT', '-p', 'tcp', '--dport', '2222', '-j', 'ACCEPT'],
      ['iptables', '-t', 'nat', '-A', 'POSTROUTING', '-s', '10.9.0.0/16', '-j', 'MASQUERADE'],
      ['iptables', '-t', 'mangle', '-A', 'FORWARD', '-p', 'tcp', '--tcp-flags', 'SYN,RST', 'SYN', '-j', 'TCPMSS', '--clamp-mss-to-pmtu'],
    ];
    const FOREIGN_V6 = [
      ['ip6tables', '-N', 'FOREIGN6'],
      ['ip6tables', '-A', 'FOREIGN6', '-s', '2001:db8:dead::/48', '-j', 'DROP'],
      ['ip6tables', '-A', 'INPUT', '-j', 'FOREIGN6'],
      ['ip6tables', '-A', 'FORWARD', '-p', 'udp', '--dport', '4789', '-j', 'ACCEPT'],
    ];
    const FOREIGN_NFT = [
      ['nft', 'add', 'table', 'inet', 'other'],
      ['nft', 'add', 'chain', 'inet', 'other', 'input', '{ type filter hook input priority 10; policy accept; }'],
      ['nft', 'add', 'rule', 'inet', 'other', 'input', 'tcp', 'dport', '9999', 'counter', 'drop'],
      ['nft', 'add', 'chain', 'inet', 'other', 'helper'],
      ['nft', 'add', 'rule', 'inet', 'other', 'helper', 'ip', 'saddr', '203.0.113.0/24', 'accept'],
    ];

    let original: { v4: string; v6: string; other: string; ruleset: string };

    async function kernelState(): Promise<typeof original> {
      const [v4, v6, other, ruleset] = await Promise.all([
        saveRules(lab.topo, 4),
        saveRules(lab.topo, 6),
        nftList(lab.topo, 'table', 'inet', 'other'),
        nftRuleset(lab.topo),
      ]);
      return { v4, v6, other, ruleset };
    }

    beforeAll(async () => {
      lab = await Lab.create();
      for (const argv of [...FOREIGN_V4, ...FOREIGN_V6, ...FOREIGN_NFT]) await lab.hostMust(argv);
      original = await kernelState();
      lab.api.putGroup({ id: 'out' }, EGRESS_ALL);
      lab.api.putGroup({ id: 'web' }, [
        { direction: 'ingress', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 },
        { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22, remoteGroupId: 'web' },
      ]);
      a = await lab.vm('a', 10, ['out', 'web']);
      b = await lab.vm('b', 11, ['out', 'web']);
      o = await lab.vm('o', 20);
      await lab.serve(a, b);
      driver = lab.driver(kind);
    });

    afterAll(async () => {
      await lab?.destroy();
    });

    it.sequential('the foreign rules are really there (setup check)', () => {
      expect(original.v4).toContain('-A FORWARD -j DOCKER-USER');
      expect(original.v4).toContain('-A INPUT -s 192.0.2.1/32 -j DROP');
      expect(original.v4).toContain('MASQUERADE');
      expect(original.v6).toContain('-A FOREIGN6 -s 2001:db8:dead::/48 -j DROP');
      expect(original.other).toContain('tcp dport 9999');
      expect(original.v4).not.toContain('virtfw');
      expect(original.ruleset).not.toContain('virtfw');
    });

    async function expectForeignIntact(step: string): Promise<void> {
      const now = await kernelState();
      const theirs = (s: typeof original) => ({
        v4: foreignLines(s.v4),
        v6: foreignLines(s.v6),
        other: s.other,
        // The nftables driver adds tables of its own and nothing else: the rest of
        // the ruleset (iptables-nft's tables included) is exactly the original.
        ...(kind === 'nftables' ? { ruleset: withoutTables(s.ruleset, OUR_TABLES) } : {}),
      });
      expect({ step, ...theirs(now) }).toEqual({ step, ...theirs(original) });
    }

    it.sequential('survive prepare, unchanged and in order', async () => {
      await lab.filter(driver, a, b);
      const ingressB = chainNamesOf(driver).instanceIngress('b');
      expect(kind === 'iptables' ? await saveRules(lab.topo, 4) : await nftList(lab.topo, 'table', 'inet', 'virtfw')).toContain(ingressB);
      await expectReach({
        'o→b tcp/80': [tcp(o, b.ip4, 80), true],
        'o→b tcp/81': [tcp(o, b.ip4, 81), false],
      });
      await expectForeignIntact('after prepare');
    });

    it.sequential('survive every kind of refresh', async () => {
      lab.api.addRule('web', { direction: 'ingress', protocol: 'tcp', portRangeMin: 81, portRangeMax: 81 });
      await driver.refreshSecurityGroupRules('web');
      await expectForeignIntact('after refreshSecurityGroupRules');
      lab.api.setInstanceGroups('a', ['out']);
      await driver.refreshSecurityGroupMembers('web');
      await driver.refreshInstanceSecurityRules(a.instance);
      await expectForeignIntact('after refreshSecurityGroupMembers / refreshInstanceSecurityRules');
      lab.api.addProviderRule({ cidr: '10.0.0.20/32', protocol: 'tcp', fromPort: 22, toPort: 22 });
      lab.api.addProviderRule({ cidr: '2001:db8::20/128', protocol: 'udp' });
      await driver.refreshProviderFwRules();
      await expectForeignIntact('after refreshProviderFwRules');
      await driver.resync();
      await expectForeignIntact('after resync');
      await expectReach({ 'o→b tcp/81 (rule added)': [tcp(o, b.ip4, 81), true] });
    });

    it.sequential('survive unfilterInstance', async () => {
      await driver.unfilterInstance(a.instance, a.nwinfo);
      await expectForeignIntact('after unfilterInstance');
    });

    it.sequential('survive teardown, which leaves exactly the original ruleset', async () => {
      await driver.teardown();
      await expectForeignIntact('after teardown');
      expect(await kernelState()).toEqual(original);
    });
  });
});

describe('deferred apply', () => {
  describe.concurrent.each(DRIVERS)('%s driver', (kind) => {
    let lab: Lab;
    let vms: Vm[];
    let o: Vm;

    beforeAll(async () => {
      lab = await Lab.create();
      lab.api.putGroup({ id: 'out' }, EGRESS_ALL);
      lab.api.putGroup({ id: 'web' }, [{ direction: 'ingress', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 }]);
      vms = [await lab.vm('a', 10, ['out', 'web']), await lab.vm('b', 11, ['out', 'web']), await lab.vm('c', 12, ['out', 'web'])];
      o = await lab.vm('o', 20);
      await lab.serve(...vms);
    });

    afterAll(async () => {
      await lab?.destroy();
    });

    it('changes nothing in the kernel until filterDeferApplyOff, then filters all three instances', async () => {
      const driver = lab.driver(kind);
      const names = chainNamesOf(driver);
      const open = Object.fromEntries(vms.map((vm) => [`o→${vm.name} tcp/81`, [tcp(o, vm.ip4, 81), true] as const]));
      try {
        await expectReach({ ...open });
        const before = await kernelSnapshot(lab.topo);
        const rulesetBefore = await nftRuleset(lab.topo);

        driver.filterDeferApplyOn();
        await lab.filter(driver, ...vms);
        expect(await kernelSnapshot(lab.topo)).toEqual(before);
        expect(await nftRuleset(lab.topo)).toEqual(rulesetBefore);
        for (const vm of vms) expect(await driver.instanceFilterExists(vm.instance, vm.nwinfo)).toBe(false);
        await expectReach({ ...open });

        await driver.filterDeferApplyOff();
        const after = await kernelSnapshot(lab.topo);
        const to4 = kind === 'nftables' ? await nftElements(lab.topo, 'inet', 'virtfw', NFT.maps.to4) : [];
        const to6 = kind === 'nftables' ? await nftElements(lab.topo, 'inet', 'virtfw', NFT.maps.to6) : [];
        for (const vm of vms) {
          if (kind === 'iptables') {
            expect(after.v4).toContain(names.instanceIngress(vm.name));
            expect(after.v6).toContain(names.instanceIngress(vm.name));
          } else {
            expect(after.inet).toContain(`chain ${names.instanceIngress(vm.name)} {`);
            expect(to4).toContain(`${vm.ip4} : jump ${names.instanceIngress(vm.name)}`);
            expect(to6).toContain(`${vm.ip6} : jump ${names.instanceIngress(vm.name)}`);
          }
          expect(after.bridge).toContain(`"${vm.devname}" . ${vm.mac}`);
          expect(await driver.instanceFilterExists(vm.instance, vm.nwinfo)).toBe(true);
        }
        await expectReach(
          Object.fromEntries(
            vms.flatMap((vm) => [
              [`o→${vm.name} tcp/80`, [tcp(o, vm.ip4, 80), true]],
              [`o→${vm.name} tcp/81`, [tcp(o, vm.ip4, 81), false]],
            ]),
          ),
        );
      } finally {
        await driver.teardown();
      }
    });
  });
});

describe('teardown', () => {
  describe.concurrent.each(DRIVERS)('%s driver', (kind) => {
    let lab: Lab;
    let a: Vm;
    let b: Vm;
    let o: Vm;

    beforeAll(async () => {
      lab = await Lab.create();
      lab.api.putGroup({ id: 'out' }, EGRESS_ALL);
      lab.api.putGroup({ id: 'web' }, [
        { direction: 'ingress', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 },
        { direction: 'ingress', protocol: 'udp', remoteGroupId: 'web' },
        { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', remoteGroupId: 'web' },
      ]);
      lab.api.addProviderRule({ cidr: '10.0.0.99/32' });
      lab.api.addProviderRule({ cidr: '2001:db8::99/128', protocol: 'tcp', fromPort: 1, toPort: 1024 });
      a = await lab.vm('a', 10, ['out', 'web']);
      b = await lab.vm('b', 11, ['out', 'web']);
      o = await lab.vm('o', 20);
      await lab.serve(b);
    });

    afterAll(async () => {
      await lab?.destroy();
    });

    it('removes every chain, hook rule, set and table of ours', async () => {
      const driver = lab.driver(kind);
      const rulesetBefore = await nftRuleset(lab.topo);
      await lab.filter(driver, a, b);
      const during = await kernelSnapshot(lab.topo);
      if (kind === 'iptables') {
        expect(during.v4).toContain('virtfw');
        expect(during.v6).toContain('virtfw');
      } else {
        expect(during.inet).toContain(`map ${NFT.maps.to6} {`);
        expect(during.inet).toContain(`set ${nftNames.memberSet('web', 6)} {`);
        expect(await nftList(lab.topo, 'tables')).toContain('inet virtfw');
      }
      expect(await nftList(lab.topo, 'tables')).toContain('bridge virtfw');
      const spoofToB = () =>
        capture(b, 'eth0', 'udp dst port 9931', () =>
          sendFrames(a, { kind: 'udp', dstMac: b.mac, dstIp: b.ip4, srcIp: '10.0.0.99', dport: 9931, count: 2 }),
        );
      expect(await spoofToB()).toBe(0);
      await expectReach({
        'o→b tcp/80': [tcp(o, b.ip4, 80), true],
        'o→b tcp/81': [tcp(o, b.ip4, 81), false],
      });

      await driver.teardown();
      const after = await kernelSnapshot(lab.topo);
      expect(after.v4).not.toContain('virtfw');
      expect(after.v6).not.toContain('virtfw');
      expect(after.bridge).toBe('');
      expect(after.inet).toBe('');
      expect(await nftList(lab.topo, 'tables')).not.toMatch(/virtfw/);
      if (kind === 'nftables') expect(await nftRuleset(lab.topo)).toEqual(rulesetBefore);
      expect(await spoofToB()).toBe(2);
      await expectReach({
        'o→b tcp/80': [tcp(o, b.ip4, 80), true],
        'o→b tcp/81 (nothing filters b now)': [tcp(o, b.ip4, 81), true],
      });
    });
  });
});
