/**
 * Conformance suite (both kernel drivers) against the real kernel: rules
 * naming a remote group follow its membership, provider drops win over group
 * rules, and IPv6 behaves as IPv4 does.
 *
 * Each driver gets a topology of its own; the two drivers' suites run side
 * by side (describe.concurrent), the tests of one driver in order.
 *
 * Each test starts from the same data (beforeEach puts it back and refreshes
 * the driver), so one failing test does not leak its changes into the next.
 */
import { afterAll, beforeAll, beforeEach, describe, it } from 'vitest';
import type { ProviderRule } from '../../src/model/types.js';
import { DRIVERS, EGRESS_ALL, Lab, expectReach, icmp, tcp, udp, type KernelDriver, type Vm } from '../helpers/fixtures.js';

describe('remote groups, provider rules, IPv6', () => {
  describe.concurrent.each(DRIVERS)('%s driver', (kind) => {
    let lab: Lab;
    let driver: KernelDriver;
    /** member of 'db' */
    let a: Vm;
    /** in 'web': ssh only from 'db' members, port 80 from anywhere */
    let b: Vm;
    /** not in 'db' (tests move it in and out) */
    let c: Vm;
    /** a second 'web' instance (provider rules apply to every instance) */
    let x: Vm;
    /** egress only to members of 'web' */
    let y: Vm;
    /** unfiltered outside host (the API may list it in 'web') */
    let o: Vm;
    const providerIds: string[] = [];

    const canonicalGroups: Record<string, string[]> = {
      a: ['out', 'db'],
      b: ['out', 'web'],
      c: ['out'],
      x: ['out', 'web'],
      y: ['egress-web'],
      o: [],
    };

    async function addProviderRule(rule: ProviderRule): Promise<void> {
      providerIds.push(lab.api.addProviderRule(rule).id as string);
      await driver.refreshProviderFwRules();
    }

    /** Puts the data back as beforeAll made it and brings the driver up to date. */
    async function reset(): Promise<void> {
      for (const id of providerIds.splice(0)) lab.api.removeProviderRule(id);
      lab.api.putInstance(c.instance, c.nwinfo, canonicalGroups.c as string[]);
      for (const vm of [a, b, c, x, y, o]) lab.api.setInstanceGroups(vm.name, canonicalGroups[vm.name] as string[]);
      await driver.refreshSecurityGroupMembers('db');
      await driver.refreshSecurityGroupMembers('web');
      for (const vm of [a, b, c, x, y]) await driver.refreshInstanceSecurityRules(vm.instance);
      await driver.refreshProviderFwRules();
    }

    beforeAll(async () => {
      lab = await Lab.create();
      const { api } = lab;
      api.putGroup({ id: 'out' }, EGRESS_ALL);
      api.putGroup({ id: 'db' }, []);
      api.putGroup({ id: 'web' }, [
        { direction: 'ingress', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 },
        { direction: 'ingress', protocol: 'udp', portRangeMin: 5353, portRangeMax: 5353 },
        { direction: 'ingress', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22, remoteGroupId: 'db' },
        { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 },
        { direction: 'ingress', ethertype: 'IPv6', protocol: 'udp', portRangeMin: 5353, portRangeMax: 5353 },
        { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22, remoteGroupId: 'db' },
        { direction: 'ingress', ethertype: 'IPv6', protocol: 'icmpv6', portRangeMin: 128, portRangeMax: 0 },
      ]);
      api.putGroup({ id: 'egress-web' }, [
        { direction: 'egress', protocol: 'tcp', remoteGroupId: 'web' },
        { direction: 'egress', ethertype: 'IPv6', protocol: 'tcp', remoteGroupId: 'web' },
      ]);
      a = await lab.vm('a', 10, canonicalGroups.a);
      b = await lab.vm('b', 11, canonicalGroups.b);
      c = await lab.vm('c', 12, canonicalGroups.c);
      x = await lab.vm('x', 13, canonicalGroups.x);
      y = await lab.vm('y', 14, canonicalGroups.y);
      o = await lab.vm('o', 20, canonicalGroups.o);
      await lab.serve(a, b, c, x, o);
      driver = lab.driver(kind);
      await lab.filter(driver, a, b, c, x, y);
    });

    beforeEach(async () => {
      await reset();
    });

    afterAll(async () => {
      await lab?.destroy();
    });

    describe.sequential('remote group (IPv4)', () => {
      it('admits the current members of the group after refreshSecurityGroupMembers', async () => {
        await expectReach({
          'a (member)→b tcp/22': [tcp(a, b.ip4, 22), true],
          'c (not a member)→b tcp/22': [tcp(c, b.ip4, 22), false],
          'c→b tcp/80 (open to all, control)': [tcp(c, b.ip4, 80), true],
        });

        lab.api.setInstanceGroups('c', ['out', 'db']);
        await driver.refreshSecurityGroupMembers('db');
        await driver.refreshInstanceSecurityRules(c.instance);
        await expectReach({
          'c (joined db)→b tcp/22': [tcp(c, b.ip4, 22), true],
          'a→b tcp/22': [tcp(a, b.ip4, 22), true],
          'c→b tcp/81 (no rule for the port)': [tcp(c, b.ip4, 81), false],
        });

        lab.api.setInstanceGroups('c', ['out']);
        await driver.refreshSecurityGroupMembers('db');
        await driver.refreshInstanceSecurityRules(c.instance);
        await expectReach({
          'c (left db)→b tcp/22': [tcp(c, b.ip4, 22), false],
          'a→b tcp/22': [tcp(a, b.ip4, 22), true],
        });
      });

      it('skips a member that is deleted', async () => {
        lab.api.setInstanceGroups('c', ['out', 'db']);
        await driver.refreshSecurityGroupMembers('db');
        await expectReach({ 'c (member)→b tcp/22': [tcp(c, b.ip4, 22), true] });

        lab.api.putInstance({ ...c.instance, deleted: true }, c.nwinfo, ['out', 'db']);
        await driver.refreshSecurityGroupMembers('db');
        await expectReach({
          'c (deleted member)→b tcp/22': [tcp(c, b.ip4, 22), false],
          'c (deleted member)→b tcp/22 v6': [tcp(c, b.ip6, 22), false],
          'a (member)→b tcp/22': [tcp(a, b.ip4, 22), true],
        });
      });
    });

    describe.sequential('remote group in an egress rule', () => {
      it("lets the instance reach the group's current members only", async () => {
        await expectReach({
          'y→b tcp/80 (b in web)': [tcp(y, b.ip4, 80), true],
          'y→x tcp/80 v6 (x in web)': [tcp(y, x.ip6, 80), true],
          'y→o tcp/80 (o not in web)': [tcp(y, o.ip4, 80), false],
          'y→o tcp/80 v6': [tcp(y, o.ip6, 80), false],
          'c→o tcp/80 (egress anywhere, control)': [tcp(c, o.ip4, 80), true],
        });

        lab.api.setInstanceGroups('o', ['web']);
        await driver.refreshSecurityGroupMembers('web');
        await expectReach({
          'y→o tcp/80 (o joined web)': [tcp(y, o.ip4, 80), true],
          'y→o tcp/80 v6': [tcp(y, o.ip6, 80), true],
        });
      });
    });

    describe.sequential('provider rules', () => {
      it("drop a sender's tcp for every instance, over group rules, until removed", async () => {
        await addProviderRule({ id: 'block-a', cidr: '10.0.0.10/32', protocol: 'tcp' });
        await expectReach({
          'a→b tcp/80 (group: anyone)': [tcp(a, b.ip4, 80), false],
          'a→b tcp/22 (group: db members)': [tcp(a, b.ip4, 22), false],
          'a→x tcp/80 (another instance)': [tcp(a, x.ip4, 80), false],
          'a→b udp/5353 (provider rule is tcp)': [udp(a, b.ip4, 5353), true],
          'o→b tcp/80 (another sender)': [tcp(o, b.ip4, 80), true],
          'a→b tcp/80 v6 (provider rule is IPv4)': [tcp(a, b.ip6, 80), true],
        });

        lab.api.removeProviderRule(providerIds.pop() as string);
        await driver.refreshProviderFwRules();
        await expectReach({
          'a→b tcp/80 (provider rule removed)': [tcp(a, b.ip4, 80), true],
          'a→x tcp/80': [tcp(a, x.ip4, 80), true],
          'a→b tcp/22': [tcp(a, b.ip4, 22), true],
        });
      });

      it('with a port range drop only those ports', async () => {
        await addProviderRule({ cidr: '10.0.0.0/24', protocol: 'tcp', fromPort: 80, toPort: 80 });
        await expectReach({
          'a→b tcp/80': [tcp(a, b.ip4, 80), false],
          'o→b tcp/80': [tcp(o, b.ip4, 80), false],
          'a→b tcp/22 (outside the provider range)': [tcp(a, b.ip4, 22), true],
        });
      });
    });

    describe.sequential('IPv6', () => {
      it('tcp, udp and icmpv6 rules allow and drop as for IPv4', async () => {
        await expectReach({
          'a→b tcp/80 v6': [tcp(a, b.ip6, 80), true],
          'a→b tcp/81 v6': [tcp(a, b.ip6, 81), false],
          'a→b udp/5353 v6': [udp(a, b.ip6, 5353), true],
          'a→b udp/5354 v6': [udp(a, b.ip6, 5354), false],
          'a→b ping6 (icmpv6 type 128 rule)': [icmp(a, b.ip6), true],
          'a→b ping6 link-local': [icmp(a, `${b.lla}%eth0`), true],
          'a→c ping6 (no icmpv6 rule)': [icmp(a, c.ip6), false],
          'a→c ping6 link-local (no icmpv6 rule)': [icmp(a, `${c.lla}%eth0`), false],
          'a→c tcp/80 v6': [tcp(a, c.ip6, 80), false],
          'o→b tcp/80 v6 (unfiltered sender)': [tcp(o, b.ip6, 80), true],
        });
      });

      it('a remote-group rule with ethertype IPv6 follows membership', async () => {
        await expectReach({
          'a (member)→b tcp/22 v6': [tcp(a, b.ip6, 22), true],
          'c→b tcp/22 v6': [tcp(c, b.ip6, 22), false],
          'c→b tcp/80 v6 (control)': [tcp(c, b.ip6, 80), true],
        });

        lab.api.setInstanceGroups('c', ['out', 'db']);
        await driver.refreshSecurityGroupMembers('db');
        await expectReach({ 'c (joined db)→b tcp/22 v6': [tcp(c, b.ip6, 22), true] });

        lab.api.setInstanceGroups('c', ['out']);
        await driver.refreshSecurityGroupMembers('db');
        await expectReach({
          'c (left db)→b tcp/22 v6': [tcp(c, b.ip6, 22), false],
          'a→b tcp/22 v6': [tcp(a, b.ip6, 22), true],
        });
      });

      it('a provider rule with an IPv6 cidr drops that sender only', async () => {
        await addProviderRule({ cidr: '2001:db8::10/128', protocol: 'tcp' });
        await expectReach({
          'a→b tcp/80 v6': [tcp(a, b.ip6, 80), false],
          'a→x tcp/22 v6 (member of db)': [tcp(a, x.ip6, 22), false],
          'o→b tcp/80 v6': [tcp(o, b.ip6, 80), true],
          'a→b tcp/80 v4 (provider rule is IPv6)': [tcp(a, b.ip4, 80), true],
          'a→b ping6 (provider rule is tcp)': [icmp(a, b.ip6), true],
        });
      });
    });
  });
});
