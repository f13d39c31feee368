/**
 * unfilterInstance forgets the instance's connections (so an address given to
 * a new instance starts clean), and only its own: real flows through the
 * bridge, read back with `conntrack -L` in the host namespace. Both drivers
 * side by side, the tests of one driver in order.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DRIVERS, EGRESS_ALL, Lab, expectReach, networkInfoFor, tcp, udp, type KernelDriver, type Vm } from '../helpers/fixtures.js';

describe('connection cleanup on unfilterInstance', () => {
  describe.concurrent.each(DRIVERS)('%s driver', (kind) => {
    let lab: Lab;
    let driver: KernelDriver;
    let a: Vm;
    let b: Vm;
    let c: Vm;
    let d: Vm;

    /** The host namespace's connection entries that name `address` (either direction). */
    const entriesOf = async (address: string, family: 'ipv4' | 'ipv6'): Promise<string[]> => {
      const listing = await lab.hostExec(['conntrack', '-L', '-f', family]);
      return listing.stdout.split('\n').filter((line) => line.split(/\s+/).some((f) => f === `src=${address}` || f === `dst=${address}`));
    };

    beforeAll(async () => {
      lab = await Lab.create();
      lab.api.putGroup({ id: 'out' }, EGRESS_ALL);
      lab.api.putGroup({ id: 'srv' }, [
        { direction: 'ingress', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 },
        { direction: 'ingress', protocol: 'udp', portRangeMin: 5353, portRangeMax: 5353 },
        { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 },
      ]);
      a = await lab.vm('a', 10, ['out']);
      b = await lab.vm('b', 11, ['out', 'srv']);
      c = await lab.vm('c', 12, ['out', 'srv']);
      d = await lab.vm('d', 13, ['out', 'srv']);
      await lab.serve(b, c, d);
      driver = lab.driver(kind);
      await lab.filter(driver, a, b, c, d);
    });

    afterAll(async () => {
      await driver?.teardown();
      await lab?.destroy();
    });

    it.sequential("removes the entries of the instance's addresses once its rules are gone, and no one else's", async () => {
      await expectReach({
        'a→b tcp/80': [tcp(a, b.ip4, 80), true],
        'a→b udp/5353': [udp(a, b.ip4, 5353), true],
        'a→b tcp/80 v6': [tcp(a, b.ip6, 80), true],
        'a→c tcp/80': [tcp(a, c.ip4, 80), true],
      });
      expect((await entriesOf(b.ip4, 'ipv4')).length).toBeGreaterThanOrEqual(2);
      expect(await entriesOf(b.ip6, 'ipv6')).not.toEqual([]);
      const others = await entriesOf(c.ip4, 'ipv4');
      expect(others).not.toEqual([]);

      await driver.unfilterInstance(b.instance, b.nwinfo);
      await driver.connectionCleanupDone();
      expect(await entriesOf(b.ip4, 'ipv4')).toEqual([]);
      expect(await entriesOf(b.ip6, 'ipv6')).toEqual([]);
      // a's connection to c is still tracked.
      expect((await entriesOf(c.ip4, 'ipv4')).length).toBe(others.length);
    });

    it.sequential('a batch removing many instances looks their addresses up in one listing, with the same outcome', async () => {
      // Instances without a namespace of their own make the batch big enough (more than 8 addresses per family).
      const paper = Array.from({ length: 10 }, (_, i) => ({ instance: { id: `p${i}` }, nwinfo: networkInfoFor(`p${i}`, 80 + i) }));
      for (const p of paper) {
        lab.api.putInstance(p.instance, p.nwinfo, ['out']);
        await driver.prepareInstanceFilter(p.instance, p.nwinfo);
      }
      await expectReach({ 'a→c tcp/80': [tcp(a, c.ip4, 80), true], 'a→d tcp/80': [tcp(a, d.ip4, 80), true] });
      expect(await entriesOf(c.ip4, 'ipv4')).not.toEqual([]);
      const kept = await entriesOf(d.ip4, 'ipv4');
      expect(kept).not.toEqual([]);

      driver.filterDeferApplyOn();
      for (const vm of [c, ...paper]) await driver.unfilterInstance(vm.instance, vm.nwinfo);
      await driver.filterDeferApplyOff();
      await driver.connectionCleanupDone();
      expect(await entriesOf(c.ip4, 'ipv4')).toEqual([]);
      expect((await entriesOf(d.ip4, 'ipv4')).length).toBe(kept.length);
    });
  });
});
