/**
 * NftablesFirewallDriver beside other firewalls in the same namespace:
 * iptables-nft rules (Docker-style DOCKER-USER, INPUT, ip6tables), another
 * nft table with a base chain on the forward hook, a libvirt-style bridge
 * table and a firewalld-style inet table with sets. Every foreign object
 * must be unchanged and in order after every step of the driver's life
 * (prepare, refresh, unfilter, resync, teardown), and packets must still
 * follow the security groups.
 *
 * How nftables base chains differ from iptables (what the packet assertions
 * below pin down):
 *
 * - iptables: one FORWARD chain per family. virtfw hooks its chain at the
 *   top of it, so once our chain ACCEPTs, the rest of FORWARD (another
 *   tool's rules) never sees the packet; their drops after our accept do not
 *   apply, and their accepts before our hook would bypass us.
 * - nftables: every table registers base chains of its own on a hook, and the
 *   kernel runs ALL of them in priority order (ours at -5, iptables-nft's
 *   filter table at 0, `inet other` here at 10). `accept` only ends the
 *   current base chain: the packet goes on to the next base chain on the same
 *   hook. `drop` ends the packet at once, wherever it happens. So an accept
 *   in our chain does not stop another table's chain from dropping, another
 *   table's accept does not override our drop: a drop anywhere wins, and a
 *   packet passes only if every base chain on the hook lets it through.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NftablesFirewallDriver } from '../../src/drivers/nftables-driver.js';
import { EGRESS_ALL, Lab, chainNamesOf, expectReach, nftRuleset, nftState, saveRules, tcp, withoutTables, type Vm } from '../helpers/fixtures.js';

const OUR_TABLES = ['inet virtfw', 'bridge virtfw'];

/** iptables-nft (the `iptables` command on this host), both families. */
const FOREIGN_IPTABLES = [
  ['iptables', '-N', 'DOCKER-USER'],
  ['iptables', '-A', 'DOCKER-USER', '-d', '10.0.0.11', '-p', 'tcp', '--dport', '8000', '-j', 'DROP'],
  ['iptables', '-A', 'DOCKER-USER', '-j', 'RETURN'],
  ['iptables', '-A', 'FORWARD', '-j', 'DOCKER-USER'],
  ['iptables', '-A', 'FORWARD', '-p', 'tcp', '--dport', '81', '-j', 'ACCEPT'],
  ['iptables', '-A', 'INPUT', '-p', 'tcp', '--dport', '2222', '-j', 'ACCEPT'],
  ['iptables', '-t', 'nat', '-A', 'POSTROUTING', '-s', '10.9.0.0/16', '-j', 'MASQUERADE'],
  ['ip6tables', '-A', 'FORWARD', '-p', 'tcp', '--dport', '81', '-j', 'ACCEPT'],
  ['ip6tables', '-A', 'INPUT', '-s', '2001:db8:dead::/48', '-j', 'DROP'],
];

/** Native nft tables of other tools, one script each (the order of tables in the ruleset matters too). */
const FOREIGN_NFT: Record<string, string> = {
  'inet other': `
add table inet other
add chain inet other forward { type filter hook forward priority 10; policy accept; }
add rule inet other forward ip daddr 10.0.0.11 tcp dport 80 counter
add rule inet other forward ip daddr 10.0.0.11 tcp dport 80 meta mark & 0x4000 == 0x4000 counter
add rule inet other forward tcp dport 81 accept
add rule inet other forward tcp dport 8001 drop
add chain inet other helper
add rule inet other helper ip saddr 203.0.113.0/24 accept
`,
  'bridge libvirt-ish': `
add table bridge libvirt-ish
add chain bridge libvirt-ish nwfilter { type filter hook forward priority 10; policy accept; }
add rule bridge libvirt-ish nwfilter ether type arp counter
add chain bridge libvirt-ish tag { type filter hook prerouting priority 0; policy accept; }
add rule bridge libvirt-ish tag ip daddr 10.0.0.11 tcp dport 80 meta mark set meta mark | 0x4000
add chain bridge libvirt-ish vnet-in
add rule bridge libvirt-ish vnet-in ether saddr 52:54:00:00:00:01 accept
`,
  'inet firewalld': `
add table inet firewalld
add set inet firewalld trusted4 { type ipv4_addr; flags interval; }
add element inet firewalld trusted4 { 192.0.2.0/24, 198.51.100.7 }
add set inet firewalld trusted6 { type ipv6_addr; flags interval; }
add element inet firewalld trusted6 { 2001:db8:f00::/48 }
add chain inet firewalld filter_INPUT { type filter hook input priority 10; policy accept; }
add rule inet firewalld filter_INPUT ct state established,related accept
add rule inet firewalld filter_INPUT ip saddr @trusted4 counter accept
add rule inet firewalld filter_INPUT ip6 saddr @trusted6 counter accept
add chain inet firewalld filter_FORWARD { type filter hook forward priority 10; policy accept; }
add rule inet firewalld filter_FORWARD ip saddr @trusted4 accept
`,
};

describe('NftablesFirewallDriver beside iptables-nft, other nft tables and firewalld', () => {
  let lab: Lab;
  let driver: NftablesFirewallDriver;
  /** member of 'db' */
  let a: Vm;
  /** in 'web' */
  let b: Vm;
  /** joins 'db' during the test, then is unfiltered */
  let c: Vm;
  /** unfiltered outside host */
  let o: Vm;

  interface Foreign {
    v4: string;
    v6: string;
    tables: Record<string, string>;
    /** the whole ruleset without virtfw's tables: every foreign table, in order */
    rest: string;
  }
  let original: Foreign;

  async function foreignState(): Promise<Foreign> {
    const names = Object.keys(FOREIGN_NFT);
    const [v4, v6, ruleset, ...tables] = await Promise.all([
      saveRules(lab.topo, 4),
      saveRules(lab.topo, 6),
      nftRuleset(lab.topo),
      ...names.map((t) => nftState(lab.topo, 'table', ...t.split(' '))),
    ]);
    return { v4, v6, tables: Object.fromEntries(names.map((n, i) => [n, tables[i] as string])), rest: withoutTables(ruleset, OUR_TABLES) };
  }

  async function expectForeignIntact(step: string): Promise<void> {
    expect({ step, ...(await foreignState()) }).toEqual({ step, ...original });
  }

  /** Packets to b:80 that inet other's forward chain saw: all of them, and those carrying its mark bit. */
  async function otherCounters(): Promise<{ all: number; marked: number }> {
    const text = (await lab.hostExec(['nft', 'list', 'chain', 'inet', 'other', 'forward'])).stdout;
    const count = (re: RegExp) => Number(re.exec(text)?.[1] ?? -1);
    return { all: count(/tcp dport 80 counter packets (\d+)/), marked: count(/0x00004000 counter packets (\d+)/) };
  }

  /** How many packets of `probe` inet other saw, all and marked. */
  async function seenByOther(probe: () => Promise<void>): Promise<{ all: number; marked: number }> {
    const before = await otherCounters();
    await probe();
    const after = await otherCounters();
    return { all: after.all - before.all, marked: after.marked - before.marked };
  }

  beforeAll(async () => {
    lab = await Lab.create();
    for (const argv of FOREIGN_IPTABLES) await lab.hostMust(argv);
    for (const script of Object.values(FOREIGN_NFT)) {
      const r = await lab.topo.hostExec(['nft', '-f', '-'], { input: script });
      if (r.code !== 0) throw new Error(`nft -f: ${r.stderr}`);
    }
    original = await foreignState();
    const { api } = lab;
    api.putGroup({ id: 'out' }, EGRESS_ALL);
    api.putGroup({ id: 'db' }, []);
    api.putGroup({ id: 'web' }, [
      { direction: 'ingress', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 },
      { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 },
      { direction: 'ingress', protocol: 'tcp', portRangeMin: 8000, portRangeMax: 8002 },
      { direction: 'ingress', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22, remoteGroupId: 'db' },
      { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22, remoteGroupId: 'db' },
    ]);
    a = await lab.vm('a', 10, ['out', 'db']);
    b = await lab.vm('b', 11, ['out', 'web']);
    c = await lab.vm('c', 12, ['out']);
    o = await lab.vm('o', 20);
    await lab.serve(b, c);
    driver = lab.driver('nftables');
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  it('the foreign objects are really there (setup check)', () => {
    expect(original.v4).toContain('-A FORWARD -j DOCKER-USER');
    expect(original.v4).toContain('-A DOCKER-USER -d 10.0.0.11/32 -p tcp -m tcp --dport 8000 -j DROP');
    expect(original.v4).toContain('MASQUERADE');
    expect(original.v6).toContain('-A INPUT -s 2001:db8:dead::/48 -j DROP');
    expect(original.tables['inet other']).toContain('type filter hook forward priority filter + 10; policy accept;');
    expect(original.tables['bridge libvirt-ish']).toContain('chain vnet-in');
    expect(original.tables['bridge libvirt-ish']).toContain('meta mark set meta mark | 0x00004000');
    expect(original.tables['inet firewalld']).toContain('192.0.2.0/24');
    // iptables-nft's tables are in the ruleset too, before the native ones.
    expect(original.rest).toMatch(/table ip filter[\s\S]*table ip6 filter[\s\S]*table inet other[\s\S]*table bridge libvirt-ish[\s\S]*table inet firewalld/);
    expect(original.rest).not.toContain('virtfw');
  });

  it("the other tool's mark is on its packets (setup check, before virtfw)", async () => {
    const seen = await seenByOther(() => expectReach({ 'o→b tcp/80 (b not filtered yet)': [tcp(o, b.ip4, 80), true] }));
    expect(seen.all).toBeGreaterThan(0);
    expect(seen.marked).toBe(seen.all);
  });

  it('prepare: foreign objects unchanged; our drops apply, their drops apply, their accepts do not override ours', async () => {
    await lab.filter(driver, a, b, c);
    await driver.conflictsChecked();
    expect(driver.conflicts).toEqual([]);
    await expectForeignIntact('after prepare');
    const counted = (await otherCounters()).all;
    await expectReach({
      'o→b tcp/80 (group allows; nobody drops)': [tcp(o, b.ip4, 80), true],
      'o→b tcp/80 v6': [tcp(o, b.ip6, 80), true],
      'o→b tcp/8002 (group allows; nobody drops)': [tcp(o, b.ip4, 8002), true],
      'o→b tcp/81 (we drop; iptables-nft and inet other accept)': [tcp(o, b.ip4, 81), false],
      'o→b tcp/81 v6 (we drop; ip6tables-nft and inet other accept)': [tcp(o, b.ip6, 81), false],
      'o→b tcp/8000 (we accept; iptables-nft DOCKER-USER drops)': [tcp(o, b.ip4, 8000), false],
      'o→b tcp/8001 (we accept; inet other drops)': [tcp(o, b.ip4, 8001), false],
      'a (db member)→b tcp/22': [tcp(a, b.ip4, 22), true],
      'c (not in db)→b tcp/22': [tcp(c, b.ip4, 22), false],
    });
    // Our accept ended only our base chain: the packets to b:80 went on through inet other's.
    expect((await otherCounters()).all).toBeGreaterThan(counted);
  });

  it("leaves the other tool's packet mark bits alone on frames bridged to instances", async () => {
    // The tool marks packets to b:80 (bit 0x4000, as kube-proxy does) in its
    // bridge prerouting chain and matches the bit in its inet forward chain.
    const seen = await seenByOther(() => expectReach({ 'o→b tcp/80 (b filtered)': [tcp(o, b.ip4, 80), true] }));
    expect(seen.all).toBeGreaterThan(0);
    expect(seen).toEqual({ all: seen.all, marked: seen.all });
  });

  it('every kind of refresh leaves the foreign objects unchanged', async () => {
    lab.api.addRule('web', { direction: 'ingress', protocol: 'tcp', portRangeMin: 8003, portRangeMax: 8003 });
    await driver.refreshSecurityGroupRules('web');
    await expectForeignIntact('after refreshSecurityGroupRules');
    lab.api.setInstanceGroups('c', ['out', 'db']);
    await driver.refreshSecurityGroupMembers('db');
    await driver.refreshInstanceSecurityRules(c.instance);
    await expectForeignIntact('after refreshSecurityGroupMembers / refreshInstanceSecurityRules');
    lab.api.addProviderRule({ cidr: '10.0.0.20/32', protocol: 'tcp', fromPort: 8002, toPort: 8002 });
    await driver.refreshProviderFwRules();
    await expectForeignIntact('after refreshProviderFwRules');
    await expectReach({
      'o→b tcp/8003 (rule added)': [tcp(o, b.ip4, 8003), true],
      'c (joined db)→b tcp/22': [tcp(c, b.ip4, 22), true],
      'c (joined db)→b tcp/22 v6': [tcp(c, b.ip6, 22), true],
      'o→b tcp/8002 (provider drop)': [tcp(o, b.ip4, 8002), false],
      'o→b tcp/8000 (their drop still applies)': [tcp(o, b.ip4, 8000), false],
    });
  });

  it('unfilterInstance leaves the foreign objects unchanged', async () => {
    await driver.unfilterInstance(c.instance, c.nwinfo);
    await expectForeignIntact('after unfilterInstance');
    await expectReach({
      'o→c tcp/81 (c unfiltered)': [tcp(o, c.ip4, 81), true],
      'o→b tcp/81 (b still filtered)': [tcp(o, b.ip4, 81), false],
    });
  });

  it('resync after drift rewrites our table whole and leaves the foreign objects unchanged', async () => {
    // Someone empties one of our chains by hand: b's ingress now falls through to accept.
    await lab.hostMust(['nft', 'flush', 'chain', 'inet', 'virtfw', chainNamesOf(driver).instanceIngress('b')]);
    await expectReach({ 'o→b tcp/81 (our chain emptied by hand)': [tcp(o, b.ip4, 81), true] });
    expect(await driver.resync()).toBeGreaterThan(0);
    await expectForeignIntact('after resync');
    await expectReach({
      'o→b tcp/81 (repaired)': [tcp(o, b.ip4, 81), false],
      'o→b tcp/80': [tcp(o, b.ip4, 80), true],
      'o→b tcp/8001 (their drop)': [tcp(o, b.ip4, 8001), false],
    });
  });

  it('teardown leaves exactly the foreign ruleset', async () => {
    await driver.teardown();
    await expectForeignIntact('after teardown');
    expect(withoutTables(await nftRuleset(lab.topo), [])).toEqual(original.rest);
    await expectReach({
      'o→b tcp/81 (nothing of ours)': [tcp(o, b.ip4, 81), true],
      'o→b tcp/8000 (their drop)': [tcp(o, b.ip4, 8000), false],
      'o→b tcp/8001 (their drop)': [tcp(o, b.ip4, 8001), false],
    });
  });
});
