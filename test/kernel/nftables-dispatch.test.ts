/**
 * NftablesFirewallDriver: evidence of constant-time dispatch, read from the
 * kernel's ruleset (a test of the rule structure, not a benchmark).
 *
 * A packet's path through our inet table is: a base chain (`hook-forward` or
 * `hook-input`), one verdict-map lookup per family to the sender's egress
 * chain, `to-vm`, one lookup to the receiver's ingress chain. So:
 * - the dispatch chains hold the same rules for 3 instances as for 50 (only
 *   map elements grow);
 * - instances with the same groups share one ingress and one egress chain
 *   (and one packet mark), so 47 more instances like the first three add no
 *   chain and no rule, in the inet table or the bridge table; and however
 *   many members a remote group has, no rule changes (members are set
 *   elements: 200 more change no rule).
 *
 * Three instances live in namespaces (packets prove the dispatch still works
 * with many map elements); the other 47 are only in the VirtAPI and the
 * driver: their tap devices need not exist for the rule structure.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NftablesFirewallDriver } from '../../src/drivers/nftables-driver.js';
import type { Instance, NetworkInfo } from '../../src/model/types.js';
import { NFT, nftNames } from '../../src/render/nftables.js';
import { EGRESS_ALL, Lab, SUBNET4, SUBNET6, expectReach, nftChains, nftElements, tcp, type Vm } from '../helpers/fixtures.js';

/** An instance that exists only in the VirtAPI: 10.0.0.(100+i), 2001:db8::1:i, tap-x<i>. */
function paperInstance(i: number): { instance: Instance; nwinfo: NetworkInfo } {
  const hex = i.toString(16).padStart(2, '0');
  return {
    instance: { id: `x${i}`, name: `instance-x${i}` },
    nwinfo: [
      {
        id: `vif-x${i}`,
        address: `fa:16:3e:00:01:${hex}`,
        devname: `tap-x${i}`,
        type: 'bridge',
        network: {
          id: 'net0',
          bridge: 'br0',
          subnets: [
            { cidr: SUBNET4, version: 4, ips: [{ address: `10.0.0.${100 + i}`, type: 'fixed', version: 4 }] },
            { cidr: SUBNET6, version: 6, ips: [{ address: `2001:db8::1:${hex}`, type: 'fixed', version: 6 }] },
          ],
        },
      },
    ],
  };
}

/** A member of a remote group on another host: 10.1.(i/250).(i%250+1), 2001:db8:1::<i>. */
function remoteMember(i: number): { instance: Instance; nwinfo: NetworkInfo } {
  return {
    instance: { id: `m${i}`, name: `member-${i}` },
    nwinfo: [
      {
        id: `vif-m${i}`,
        address: `fa:16:3e:02:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`,
        devname: `tap-m${i}`,
        type: 'bridge',
        network: {
          id: 'net1',
          bridge: 'br1',
          subnets: [
            { cidr: '10.1.0.0/16', version: 4, ips: [{ address: `10.1.${Math.floor(i / 250)}.${(i % 250) + 1}`, type: 'fixed', version: 4 }] },
            { cidr: '2001:db8:1::/64', version: 6, ips: [{ address: `2001:db8:1::${i.toString(16)}`, type: 'fixed', version: 6 }] },
          ],
        },
      },
    ],
  };
}

const DISPATCH = [NFT.forward, NFT.input, NFT.toVm] as const;

describe('NftablesFirewallDriver: dispatch does not grow with instances or members', () => {
  let lab: Lab;
  let driver: NftablesFirewallDriver;
  let a: Vm;
  let b: Vm;
  let c: Vm;
  let o: Vm;
  const paper = Array.from({ length: 47 }, (_, i) => paperInstance(i + 1));

  /** Rules per chain of our inet table, as the kernel lists them. */
  async function ruleCounts(): Promise<Map<string, number>> {
    const chains = await nftChains(lab.topo, 'inet', 'virtfw');
    return new Map([...chains].map(([name, rules]) => [name, rules.length]));
  }

  const dispatch = (counts: Map<string, number>) => Object.fromEntries(DISPATCH.map((name) => [name, counts.get(name)]));

  let at3: Map<string, number>;
  let at50: Map<string, number>;

  beforeAll(async () => {
    lab = await Lab.create();
    lab.api.putGroup({ id: 'out' }, EGRESS_ALL);
    lab.api.putGroup({ id: 'db' }, []);
    lab.api.putGroup({ id: 'web' }, [
      { direction: 'ingress', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 },
      { direction: 'ingress', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22, remoteGroupId: 'db' },
      { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22, remoteGroupId: 'db' },
    ]);
    a = await lab.vm('a', 10, ['out', 'db']);
    b = await lab.vm('b', 11, ['out', 'web']);
    c = await lab.vm('c', 12, ['out', 'web']);
    o = await lab.vm('o', 20);
    await lab.serve(b, c);
    driver = lab.driver('nftables');
    await lab.filter(driver, a, b, c);
    at3 = await ruleCounts();
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it('3 → 50 instances with the same groups: no chain or rule more, only map elements grow', async () => {
    // Odd-numbered ones are in 'web' (like b), even-numbered ones in 'db' (like a).
    const isWeb = (id: string) => Number(id.slice(1)) % 2 === 1;
    for (const p of paper) lab.api.putInstance(p.instance, p.nwinfo, isWeb(p.instance.id) ? ['out', 'web'] : ['out', 'db']);
    driver.filterDeferApplyOn();
    for (const p of paper) {
      await driver.setupBasicFiltering(p.instance, p.nwinfo);
      await driver.prepareInstanceFilter(p.instance, p.nwinfo);
    }
    await driver.filterDeferApplyOff();
    at50 = await ruleCounts();

    expect(dispatch(at50)).toEqual(dispatch(at3));
    // Each instance dispatches to the chains of the first instance with its groups.
    for (const p of paper) expect(driver.instanceChains(p.instance.id)).toEqual(driver.instanceChains(isWeb(p.instance.id) ? 'b' : 'a'));
    expect(driver.instanceChains('b')).toEqual(driver.instanceChains('c'));
    expect(driver.instanceChains('a')?.ingress).not.toBe(driver.instanceChains('b')?.ingress);
    // Nothing grew: the same chains, each with the same rules.
    expect(at50).toEqual(at3);
    const total = (m: Map<string, number>) => [...m.values()].reduce((x, y) => x + y, 0);
    expect(driver.ruleCounts().inet).toBe(total(at50));
    // The maps hold one element per address of each instance (and, to tell
    // who sent a packet, per link-local address); the mark map, one per
    // ingress chain.
    expect(await nftElements(lab.topo, 'inet', 'virtfw', NFT.maps.to4)).toHaveLength(50);
    expect(await nftElements(lab.topo, 'inet', 'virtfw', NFT.maps.from6)).toHaveLength(100);
    expect(await nftElements(lab.topo, 'inet', 'virtfw', NFT.maps.to6)).toHaveLength(50);
    expect(await nftElements(lab.topo, 'inet', 'virtfw', NFT.maps.toMark)).toHaveLength(2);
    // The bridge table: one mark chain per ingress chain, one vif_mark element per VIF.
    const bridgeChains = [...(await nftChains(lab.topo, 'bridge', 'virtfw')).keys()];
    expect(bridgeChains.filter((name) => name.startsWith('mark-'))).toHaveLength(2);
    expect(await nftElements(lab.topo, 'bridge', 'virtfw', 'vif_mark')).toHaveLength(50);
    // Dispatch through the bigger maps still reaches the right chains.
    await expectReach({
      'o→b tcp/80': [tcp(o, b.ip4, 80), true],
      'o→b tcp/81': [tcp(o, b.ip4, 81), false],
      'a (db)→c tcp/22 v6': [tcp(a, c.ip6, 22), true],
      'o→c tcp/22 v6': [tcp(o, c.ip6, 22), false],
    });
  });

  it('200 more members of a remote group change set elements only, no rule', async () => {
    const before4 = await nftElements(lab.topo, 'inet', 'virtfw', nftNames.memberSet('db', 4));
    const before6 = await nftElements(lab.topo, 'inet', 'virtfw', nftNames.memberSet('db', 6));
    for (let i = 0; i < 200; i++) {
      const m = remoteMember(i);
      lab.api.putInstance(m.instance, m.nwinfo, ['db']);
    }
    await driver.refreshSecurityGroupMembers('db');
    const stats = driver.lastApplyStats;
    expect(stats).toMatchObject({ transactions: 1, chainsWritten: 0, chainsDeleted: 0, elementChanges: 400 });

    expect(await ruleCounts()).toEqual(at50);
    expect(await nftElements(lab.topo, 'inet', 'virtfw', nftNames.memberSet('db', 4))).toHaveLength(before4.length + 200);
    expect(await nftElements(lab.topo, 'inet', 'virtfw', nftNames.memberSet('db', 6))).toHaveLength(before6.length + 200);
    await expectReach({
      'a (db)→b tcp/22': [tcp(a, b.ip4, 22), true],
      'o (not in db)→b tcp/22': [tcp(o, b.ip4, 22), false],
    });
  });
});
