/**
 * Conformance suite (both kernel drivers) against the real kernel: basic
 * filtering (L2/L3 anti-spoofing in the nftables bridge table, which both
 * drivers share; with bridgeFilter off, in iptables chains or the inet
 * table's per-instance spoof chains), DHCP and router advertisements.
 * Crafted frames are sent from instance namespaces and counted with tcpdump
 * on the receivers; each "dropped" count is paired with a frame that differs
 * only in the spoofed field and does arrive.
 *
 * One topology per section; the drivers take turns on it (each torn down
 * before the next), so the captures and scapy senders of one run alone.
 */
import { ValidationError } from '../../src/errors.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DHCP_SERVER4, DRIVERS, EGRESS_ALL, Lab, linkLocalOf, saveRules, type KernelDriver, type Vm } from '../helpers/fixtures.js';
import { capture, sendFrames, type FrameSpec } from '../helpers/probe.js';
import type { Instance as NsInstance } from '../helpers/topology.js';

const SPOOF_MAC = 'fa:16:3e:66:66:66';
const DHCP_MAC = 'fa:16:3e:00:01:02';
const ROUTER_MAC = 'fa:16:3e:00:01:01';
/** The router's EUI-64 link-local address: where real router advertisements come from. */
const ROUTER_LLA = 'fe80::f816:3eff:fe00:101';

/** Frames matching `filter` that reach `on`'s eth0 while `from` sends `spec`. */
function arrivals(on: NsInstance, filter: string, from: NsInstance, spec: FrameSpec): Promise<number> {
  return capture(on, 'eth0', filter, () => sendFrames(from, { count: 2, ...spec }));
}

/** Runs every capture at once and returns the counts by name. */
async function countAll(table: Record<string, () => Promise<number>>): Promise<Record<string, number>> {
  const names = Object.keys(table);
  const counts = await Promise.all(names.map((n) => (table[n] as () => Promise<number>)()));
  return Object.fromEntries(names.map((n, i) => [n, counts[i] as number]));
}

describe('basic filtering (bridge table)', () => {
  let lab: Lab;
  /** the would-be spoofer */
  let a: Vm;
  /** accepts any udp and icmpv6, so only anti-spoofing decides what reaches it */
  let b: Vm;
  /** a third instance watching ARP */
  let c: Vm;
  /** no ingress rules: only DHCP replies from its server may reach it */
  let e: Vm;
  /** no rules at all: not even egress */
  let g: Vm;
  /** its v6 gateway (network info) is the router's link-local address */
  let k: Vm;
  /** unfiltered outside host */
  let o: Vm;
  let dhcp: NsInstance;
  let router: NsInstance;

  beforeAll(async () => {
    lab = await Lab.create();
    const { api } = lab;
    api.putGroup({ id: 'out' }, EGRESS_ALL);
    api.putGroup({ id: 'open' }, [
      { direction: 'ingress', protocol: 'udp' },
      { direction: 'ingress', ethertype: 'IPv6', protocol: 'udp' },
      { direction: 'ingress', ethertype: 'IPv6', protocol: 'icmpv6' },
    ]);
    api.putGroup({ id: 'none' }, []);
    a = await lab.vm('a', 10, ['out']);
    b = await lab.vm('b', 11, ['out', 'open']);
    c = await lab.vm('c', 12, ['out']);
    e = await lab.vm('e', 14, ['out']);
    g = await lab.vm('g', 15, ['none']);
    k = await lab.vm('k', 16, ['out'], { gateway6: ROUTER_LLA });
    o = await lab.vm('o', 20);
    dhcp = await lab.host('dhcp', 'tap-dhcp', DHCP_MAC, [`${DHCP_SERVER4}/24`]);
    router = await lab.host('r', 'tap-r', ROUTER_MAC, ['10.0.0.1/24'], ['2001:db8::1/64']);
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  describe.each(DRIVERS)('%s driver', (kind) => {
    let driver: KernelDriver;

    beforeAll(async () => {
      driver = lab.driver(kind);
      await lab.filter(driver, a, b, c, e, g, k);
    });

    afterAll(async () => {
      await driver?.teardown();
    });

    describe('IP and MAC spoofing', () => {
      it('frames with a spoofed source IP or MAC are dropped; the same frames with its own addresses arrive', async () => {
        const toB = { kind: 'udp', dstMac: b.mac } as const;
        const counts = await countAll({
          'own MAC and IPv4': () =>
            arrivals(b, 'udp dst port 9901', a, { ...toB, dstIp: b.ip4, dport: 9901 }),
          'IPv4 source 10.0.0.99': () =>
            arrivals(b, 'udp dst port 9902', a, { ...toB, dstIp: b.ip4, dport: 9902, srcIp: '10.0.0.99' }),
          "IPv4 source of instance c": () =>
            arrivals(b, 'udp dst port 9903', a, { ...toB, dstIp: b.ip4, dport: 9903, srcIp: c.ip4 }),
          'source MAC spoofed, own IPv4': () =>
            arrivals(b, 'udp dst port 9904', a, { ...toB, dstIp: b.ip4, dport: 9904, srcMac: SPOOF_MAC }),
          'own MAC and IPv6': () => arrivals(b, 'udp dst port 9905', a, { ...toB, dstIp: b.ip6, dport: 9905 }),
          'own link-local IPv6': () =>
            arrivals(b, 'udp dst port 9906', a, { ...toB, dstIp: b.lla, dport: 9906, srcIp: a.lla }),
          'IPv6 source 2001:db8::99': () =>
            arrivals(b, 'udp dst port 9907', a, { ...toB, dstIp: b.ip6, dport: 9907, srcIp: '2001:db8::99' }),
          "link-local source of another MAC": () =>
            arrivals(b, 'udp dst port 9908', a, { ...toB, dstIp: b.lla, dport: 9908, srcIp: linkLocalOf(66) }),
          'source MAC spoofed, own IPv6': () =>
            arrivals(b, 'udp dst port 9909', a, { ...toB, dstIp: b.ip6, dport: 9909, srcMac: SPOOF_MAC }),
        });
        expect(counts).toEqual({
          'own MAC and IPv4': 2,
          'IPv4 source 10.0.0.99': 0,
          'IPv4 source of instance c': 0,
          'source MAC spoofed, own IPv4': 0,
          'own MAC and IPv6': 2,
          'own link-local IPv6': 2,
          'IPv6 source 2001:db8::99': 0,
          'link-local source of another MAC': 0,
          'source MAC spoofed, own IPv6': 0,
        });
      });

      it("ARP claiming another instance's IP or MAC does not reach or poison others; its own ARP does", async () => {
        const senderHw = (mac: string) => {
          const [h1, h2, h3, h4, h5, h6] = mac.split(':');
          return `arp[8:2] = 0x${h1}${h2} and arp[10:4] = 0x${h3}${h4}${h5}${h6}`;
        };
        // What c learns here must come from this test's frames, not an earlier driver's.
        await c.exec(['ip', 'neigh', 'flush', 'dev', 'eth0']);
        const spoofed = await countAll({
          "request claiming b's IP": () =>
            arrivals(c, `arp and arp src host ${b.ip4}`, a, { kind: 'arp-request', arpPsrc: b.ip4, arpPdst: c.ip4 }),
          "gratuitous reply claiming b's IP": () =>
            arrivals(c, `arp and arp[6:2] = 2 and arp src host ${b.ip4}`, a, {
              kind: 'arp-reply',
              arpPsrc: b.ip4,
              arpPdst: b.ip4,
            }),
          'request with a spoofed sender MAC': () =>
            arrivals(c, `arp and ${senderHw(SPOOF_MAC)}`, a, { kind: 'arp-request', arpHwsrc: SPOOF_MAC, arpPdst: c.ip4 }),
          'request from a spoofed frame source': () =>
            arrivals(c, `arp and ether src ${SPOOF_MAC}`, a, { kind: 'arp-request', srcMac: SPOOF_MAC, arpPdst: c.ip4 }),
        });
        expect(spoofed).toEqual({
          "request claiming b's IP": 0,
          "gratuitous reply claiming b's IP": 0,
          'request with a spoofed sender MAC': 0,
          'request from a spoofed frame source': 0,
        });
        const neighbour = await c.exec(['ip', 'neigh', 'show', b.ip4, 'dev', 'eth0']);
        expect(neighbour.stdout).not.toContain(a.mac);

        const own = await arrivals(c, `arp and arp src host ${a.ip4} and ${senderHw(a.mac)}`, a, {
          kind: 'arp-request',
          arpPdst: c.ip4,
        });
        expect(own).toBe(2);
        const learned = await c.exec(['ip', 'neigh', 'show', a.ip4, 'dev', 'eth0']);
        expect(learned.stdout).toContain(a.mac);
        // An address conflict probe (RFC 5227: sender IP 0.0.0.0) passes, from its own MAC only.
        const probes = await countAll({
          'probe from its own MAC': () =>
            arrivals(c, `arp and arp src host 0.0.0.0 and ${senderHw(a.mac)}`, a, { kind: 'arp-request', arpPsrc: '0.0.0.0', arpPdst: c.ip4 }),
          'probe with a spoofed sender MAC': () =>
            arrivals(c, `arp and arp src host 0.0.0.0 and ${senderHw(SPOOF_MAC)}`, a, {
              kind: 'arp-request',
              arpPsrc: '0.0.0.0',
              arpHwsrc: SPOOF_MAC,
              arpPdst: c.ip4,
            }),
        });
        expect(probes).toEqual({ 'probe from its own MAC': 2, 'probe with a spoofed sender MAC': 0 });
      });

      it('802.1Q-tagged frames and non-IP ethertypes from an instance are dropped', async () => {
        const counts = await countAll({
          'a: untagged udp': () => arrivals(b, 'udp dst port 9911', a, { kind: 'udp', dstMac: b.mac, dstIp: b.ip4, dport: 9911 }),
          'a: tagged udp (vlan 42)': () =>
            arrivals(b, 'vlan 42 and udp dst port 9912', a, { kind: 'udp', dstMac: b.mac, dstIp: b.ip4, dport: 9912, vlan: 42 }),
          'o (unfiltered): tagged udp (vlan 42)': () =>
            arrivals(b, 'vlan 42 and udp dst port 9913', o, { kind: 'udp', dstMac: b.mac, dstIp: b.ip4, dport: 9913, vlan: 42 }),
          'a: ethertype 0x88b5': () => arrivals(b, 'ether proto 0x88b5', a, { kind: 'raw-ethertype', dstMac: b.mac }),
          'o (unfiltered): ethertype 0x88b6': () =>
            arrivals(b, 'ether proto 0x88b6', o, { kind: 'raw-ethertype', dstMac: b.mac, ethertype: 0x88b6 }),
        });
        expect(counts).toEqual({
          'a: untagged udp': 2,
          'a: tagged udp (vlan 42)': 0,
          'o (unfiltered): tagged udp (vlan 42)': 2,
          'a: ethertype 0x88b5': 0,
          'o (unfiltered): ethertype 0x88b6': 2,
        });
      });
    });

    describe('DHCP', () => {
      it('an instance cannot answer as a DHCP or DHCPv6 server', async () => {
        const counts = await countAll({
          'udp 67→68 broadcast': () =>
            arrivals(b, 'udp src port 67 and udp dst port 68', a, { kind: 'udp', dstIp: '255.255.255.255', sport: 67, dport: 68 }),
          'udp 67→68 unicast to b': () =>
            arrivals(b, 'udp src port 67 and udp dst port 68', a, { kind: 'udp', dstMac: b.mac, dstIp: b.ip4, sport: 67, dport: 68 }),
          'udp 12345→68 broadcast (control)': () =>
            arrivals(b, 'udp src port 12345 and udp dst port 68', a, {
              kind: 'udp',
              dstIp: '255.255.255.255',
              sport: 12345,
              dport: 68,
            }),
          'udp 547→546 v6 to b': () =>
            arrivals(b, 'udp src port 547 and udp dst port 546', a, {
              kind: 'udp',
              dstMac: b.mac,
              dstIp: b.lla,
              srcIp: a.lla,
              sport: 547,
              dport: 546,
            }),
          'udp 12346→546 v6 to b (control)': () =>
            arrivals(b, 'udp src port 12346 and udp dst port 546', a, {
              kind: 'udp',
              dstMac: b.mac,
              dstIp: b.lla,
              srcIp: a.lla,
              sport: 12346,
              dport: 546,
            }),
        });
        expect(counts).toEqual({
          'udp 67→68 broadcast': 0,
          'udp 67→68 unicast to b': 0,
          'udp 12345→68 broadcast (control)': 2,
          'udp 547→546 v6 to b': 0,
          'udp 12346→546 v6 to b (control)': 2,
        });
      });

      it("DHCP replies reach an instance with no ingress rules only from its subnet's DHCP server", async () => {
        const reply = { kind: 'udp', dstIp: '255.255.255.255', sport: 67, dport: 68 } as const;
        const counts = await countAll({
          'from the DHCP server 10.0.0.2': () => arrivals(e, 'udp src port 67 and src host 10.0.0.2', dhcp, reply),
          'from another host': () => arrivals(e, `udp src port 67 and src host ${o.ip4}`, o, reply),
        });
        expect(counts).toEqual({ 'from the DHCP server 10.0.0.2': 2, 'from another host': 0 });
      });

      it('DHCP client requests reach the DHCP server even from an instance with no egress rules', async () => {
        const counts = await countAll({
          'DHCPDISCOVER 0.0.0.0:68 → 255.255.255.255:67': () =>
            arrivals(dhcp, 'udp src port 68 and udp dst port 67 and src host 0.0.0.0', g, {
              kind: 'udp',
              srcIp: '0.0.0.0',
              dstIp: '255.255.255.255',
              sport: 68,
              dport: 67,
            }),
          'other udp broadcast to port 67 (control: no egress)': () =>
            arrivals(dhcp, `udp src port 12345 and udp dst port 67 and src host ${g.ip4}`, g, {
              kind: 'udp',
              dstIp: '255.255.255.255',
              sport: 12345,
              dport: 67,
            }),
        });
        expect(counts).toEqual({
          'DHCPDISCOVER 0.0.0.0:68 → 255.255.255.255:67': 2,
          'other udp broadcast to port 67 (control: no egress)': 0,
        });
      });
    });

    describe('router advertisements', () => {
      it('an RA sent by an instance is dropped; its other ICMPv6 to the same group arrives', async () => {
        const counts = await countAll({
          'RA from a': () =>
            arrivals(b, `icmp6 and ip6[40] = 134 and ether src ${a.mac}`, a, { kind: 'icmpv6-ra', raPrefix: '2001:db8:bad::/64' }),
          'echo request to ff02::1 from a (control)': () =>
            arrivals(b, `icmp6 and ip6[40] = 128 and ether src ${a.mac}`, a, { kind: 'icmp-echo', dstIp: 'ff02::1', srcIp: a.lla }),
          'RA from the unfiltered router (control)': () =>
            arrivals(b, `icmp6 and ip6[40] = 134 and ether src ${ROUTER_MAC}`, router, { kind: 'icmpv6-ra' }),
        });
        expect(counts).toEqual({
          'RA from a': 0,
          'echo request to ff02::1 from a (control)': 2,
          'RA from the unfiltered router (control)': 2,
        });
      });

      it("an RA from the subnet's gateway reaches an instance without icmpv6 rules; one from another host does not", async () => {
        const counts = await countAll({
          'RA from the gateway (router link-local)': () =>
            arrivals(k, `icmp6 and ip6[40] = 134 and ether src ${ROUTER_MAC}`, router, { kind: 'icmpv6-ra' }),
          'RA from o': () => arrivals(k, `icmp6 and ip6[40] = 134 and ether src ${o.mac}`, o, { kind: 'icmpv6-ra' }),
        });
        expect(counts).toEqual({ 'RA from the gateway (router link-local)': 2, 'RA from o': 0 });
      });
    });
  });
});

describe('anti-spoofing without the bridge table (bridgeFilter: false)', () => {
  let lab: Lab;
  /** egress anywhere, no ingress rules */
  let a: Vm;
  /** accepts any udp */
  let b: Vm;
  /** unfiltered outside host */
  let o: Vm;

  beforeAll(async () => {
    lab = await Lab.create();
    lab.api.putGroup({ id: 'out' }, EGRESS_ALL);
    lab.api.putGroup({ id: 'open' }, [
      { direction: 'ingress', protocol: 'udp' },
      { direction: 'ingress', ethertype: 'IPv6', protocol: 'udp' },
    ]);
    a = await lab.vm('a', 10, ['out']);
    b = await lab.vm('b', 11, ['out', 'open']);
    o = await lab.vm('o', 20);
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  // nftables cannot see a bridged packet's port in the IP hooks (no physdev):
  // without the bridge table it filters routed taps only, and says so.
  it('the nftables driver refuses a bridged VIF without the bridge filter, naming the field', async () => {
    const driver = lab.driver('nftables', { bridgeFilter: false });
    const err = await driver.prepareInstanceFilter(a.instance, a.nwinfo).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ValidationError);
    expect((err as ValidationError).field).toBe('networkInfo[0].type');
    expect(await lab.hostExec(['nft', 'list', 'table', 'inet', 'virtfw'])).toMatchObject({ code: 1 });
  });

  describe.each(['iptables'] as const)('%s driver', (kind) => {
    let driver: KernelDriver;

    beforeAll(async () => {
      driver = lab.driver(kind, { bridgeFilter: false });
      await lab.filter(driver, a, b);
    });

    afterAll(async () => {
      await driver?.teardown();
    });

    it('drops spoofed source IPs and MACs and DHCP server replies; passes its own addresses', async () => {
      expect(await lab.hostExec(['nft', 'list', 'table', 'bridge', 'virtfw'])).toMatchObject({ code: 1 });
      // The checks live in each instance's own spoof chain, entered from its egress chain.
      const v4 = await saveRules(lab.topo, 4);
      expect(v4).toContain(`:${driver.names.instanceSpoof('a')}`);
      const toB = { kind: 'udp', dstMac: b.mac } as const;
      const counts = await countAll({
        'own MAC and IPv4': () => arrivals(b, 'udp dst port 9921', a, { ...toB, dstIp: b.ip4, dport: 9921 }),
        'IPv4 source 10.0.0.99': () => arrivals(b, 'udp dst port 9922', a, { ...toB, dstIp: b.ip4, dport: 9922, srcIp: '10.0.0.99' }),
        'source MAC spoofed, own IPv4': () =>
          arrivals(b, 'udp dst port 9923', a, { ...toB, dstIp: b.ip4, dport: 9923, srcMac: SPOOF_MAC }),
        'own MAC and IPv6': () => arrivals(b, 'udp dst port 9924', a, { ...toB, dstIp: b.ip6, dport: 9924 }),
        'IPv6 source 2001:db8::99': () =>
          arrivals(b, 'udp dst port 9925', a, { ...toB, dstIp: b.ip6, dport: 9925, srcIp: '2001:db8::99' }),
        'udp 67→68 from a': () => arrivals(b, 'udp src port 67', a, { ...toB, dstIp: b.ip4, sport: 67, dport: 68 }),
      });
      expect(counts).toEqual({
        'own MAC and IPv4': 2,
        'IPv4 source 10.0.0.99': 0,
        'source MAC spoofed, own IPv4': 0,
        'own MAC and IPv6': 2,
        'IPv6 source 2001:db8::99': 0,
        'udp 67→68 from a': 0,
      });
    });

    it("broadcast and multicast frames obey each receiver's ingress rules", async () => {
      // Each frame from the unfiltered o reaches b (any udp allowed: it arrives) and a (no ingress rule: it must not).
      const toBoth = async (spec: FrameSpec, filter: string): Promise<{ b: number; a: number }> => {
        let atA = 0;
        const atB = await capture(b, 'eth0', filter, async () => {
          atA = await capture(a, 'eth0', filter, () => sendFrames(o, { count: 2, ...spec }));
        });
        return { b: atB, a: atA };
      };
      const counts = {
        'udp to 255.255.255.255': await toBoth({ kind: 'udp', dstIp: '255.255.255.255', dport: 9926 }, 'udp dst port 9926'),
        'udp to ff02::1': await toBoth({ kind: 'udp', dstIp: 'ff02::1', srcIp: o.lla, dport: 9927 }, 'udp dst port 9927'),
      };
      expect(counts).toEqual({
        'udp to 255.255.255.255': { b: 2, a: 0 },
        'udp to ff02::1': { b: 2, a: 0 },
      });
    });
  });
});
