/**
 * Conformance suite (both kernel drivers, fixtures.DRIVERS) against the real
 * kernel: allow rules, return traffic and egress rules, proven with packets
 * between namespaces; the packet assertions are the same for both drivers.
 *
 * Each driver gets a topology of its own; the two drivers' suites run side
 * by side (describe.concurrent), the tests of one driver in order.
 *
 * Every VM runs echo servers on all test ports (fixtures.TCP_PORTS /
 * UDP_PORTS), so a failed probe means the firewall dropped it, never that
 * nothing listened. Every "blocked" probe sits in a table next to an
 * "allowed" one over the same path.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DRIVERS, EGRESS_ALL, Lab, expectReach, icmp, tcp, tcpFrom, udp, type KernelDriver, type Vm } from '../helpers/fixtures.js';
import { capture, sendFrames, type FrameSpec } from '../helpers/probe.js';

describe('ingress rules, return traffic, egress rules', () => {
  describe.concurrent.each(DRIVERS)('%s driver', (kind) => {
    let lab: Lab;
    let driver: KernelDriver;
    /** sender, egress anywhere, no ingress rules of interest */
    let a: Vm;
    /** the service host: tcp/udp/number/cidr/icmp rules */
    let b: Vm;
    /** icmp type/code experiments */
    let c: Vm;
    /** "all protocols" rule */
    let d: Vm;
    /** no ingress rules at all, egress anywhere */
    let e: Vm;
    /** egress restricted to tcp 80 (and tcp 81 to p only) */
    let f: Vm;
    /** unfiltered outside hosts */
    let o: Vm;
    let p: Vm;

    beforeAll(async () => {
      lab = await Lab.create();
      const { api } = lab;
      api.putGroup({ id: 'out' }, EGRESS_ALL);
      api.putGroup({ id: 'svc' }, [
        { direction: 'ingress', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 },
        { direction: 'ingress', protocol: 'tcp', portRangeMin: 8000, portRangeMax: 8002 },
        { direction: 'ingress', protocol: 'udp', portRangeMin: 5353, portRangeMax: 5353 },
        { direction: 'ingress', protocol: 6, portRangeMin: 9000, portRangeMax: 9000 },
        { direction: 'ingress', protocol: '17', portRangeMin: 9001, portRangeMax: 9001 },
        { direction: 'ingress', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22, remoteIpPrefix: '10.0.0.10/32' },
        { direction: 'ingress', protocol: 'icmp', portRangeMin: 8, portRangeMax: -1 },
      ]);
      api.putGroup({ id: 'icmp-c' }, [
        { direction: 'ingress', protocol: 'icmp', portRangeMin: 8, portRangeMax: 1 }, // echo-request, wrong code
        { direction: 'ingress', protocol: 'icmp', portRangeMin: 0 }, // echo-reply only
      ]);
      api.putGroup({ id: 'all' }, [{ direction: 'ingress' }, { direction: 'ingress', ethertype: 'IPv6', protocol: 'any' }]);
      api.putGroup({ id: 'egress80' }, [
        { direction: 'egress', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 },
        { direction: 'egress', protocol: 'tcp', portRangeMin: 81, portRangeMax: 81, remoteIpPrefix: '10.0.0.21/32' },
      ]);

      a = await lab.vm('a', 10, ['out']);
      b = await lab.vm('b', 11, ['out', 'svc']);
      c = await lab.vm('c', 12, ['out', 'icmp-c']);
      d = await lab.vm('d', 13, ['out', 'all']);
      e = await lab.vm('e', 14, ['out']);
      f = await lab.vm('f', 15, ['egress80']);
      o = await lab.vm('o', 20);
      p = await lab.vm('p', 21);
      await lab.serve(b, c, d, e, o, p);
      driver = lab.driver(kind);
      await lab.filter(driver, a, b, c, d, e, f);
    });

    afterAll(async () => {
      await lab?.destroy();
    });

    describe.sequential('ingress rules', () => {
      it('tcp: a single port, and a port range from its first to its last port', async () => {
        await expectReach({
          'a→b tcp/80': [tcp(a, b.ip4, 80), true],
          'a→b tcp/81': [tcp(a, b.ip4, 81), false],
          'a→b tcp/7999 (one below the range)': [tcp(a, b.ip4, 7999), false],
          'a→b tcp/8000 (first of the range)': [tcp(a, b.ip4, 8000), true],
          'a→b tcp/8001': [tcp(a, b.ip4, 8001), true],
          'a→b tcp/8002 (last of the range)': [tcp(a, b.ip4, 8002), true],
          'a→b tcp/8003 (one past the range)': [tcp(a, b.ip4, 8003), false],
          'o→b tcp/80 (unfiltered sender)': [tcp(o, b.ip4, 80), true],
        });
      });

      it('udp: the allowed port echoes, the next port is dropped', async () => {
        await expectReach({
          'a→b udp/5353': [udp(a, b.ip4, 5353), true],
          'a→b udp/5354': [udp(a, b.ip4, 5354), false],
          'o→b udp/5353': [udp(o, b.ip4, 5353), true],
        });
      });

      it('a protocol given as a number (6, "17") matches that protocol and port only', async () => {
        await expectReach({
          'a→b tcp/9000 (rule: protocol 6)': [tcp(a, b.ip4, 9000), true],
          'a→b tcp/9002': [tcp(a, b.ip4, 9002), false],
          'a→b udp/9000 (tcp rule port, udp)': [udp(a, b.ip4, 9000), false],
          'a→b udp/9001 (rule: protocol "17")': [udp(a, b.ip4, 9001), true],
          'a→b udp/9003': [udp(a, b.ip4, 9003), false],
          'a→b tcp/9001 (udp rule port, tcp)': [tcp(a, b.ip4, 9001), false],
        });
      });

      it('a CIDR source admits its /32 sender and no other', async () => {
        await expectReach({
          'a (10.0.0.10/32)→b tcp/22': [tcp(a, b.ip4, 22), true],
          'o (10.0.0.20)→b tcp/22': [tcp(o, b.ip4, 22), false],
          'o→b tcp/80 (same path, open port)': [tcp(o, b.ip4, 80), true],
        });
      });

      it('icmp echo-request (type 8) passes where allowed and is dropped where no rule allows it', async () => {
        await expectReach({
          'a→b ping (type 8 rule)': [icmp(a, b.ip4), true],
          'o→b ping': [icmp(o, b.ip4), true],
          'a→e ping (no ingress rules)': [icmp(a, e.ip4), false],
          'a→b ping6 (v4 rule only)': [icmp(a, b.ip6), false],
        });
      });

      it('icmp type and code restrictions, following rule refreshes', async () => {
        // type 8 code 1 and type 0: an echo request (8/0) matches neither
        await expectReach({
          'a→c ping (rules 8/1 and 0)': [icmp(a, c.ip4), false],
          'a→c tcp/80': [tcp(a, c.ip4, 80), false],
          'a→b ping (control)': [icmp(a, b.ip4), true],
        });

        lab.api.putGroup({ id: 'icmp-c' }, [{ direction: 'ingress', protocol: 'icmp', portRangeMin: 8, portRangeMax: 0 }]);
        await driver.refreshSecurityGroupRules('icmp-c');
        await expectReach({ 'a→c ping (rule 8/0)': [icmp(a, c.ip4), true] });

        lab.api.putGroup({ id: 'icmp-c' }, [{ direction: 'ingress', protocol: 'icmp' }]);
        await driver.refreshSecurityGroupRules('icmp-c');
        await expectReach({
          'a→c ping (rule icmp, any type)': [icmp(a, c.ip4), true],
          'a→c tcp/80': [tcp(a, c.ip4, 80), false],
        });

        lab.api.putGroup({ id: 'icmp-c' }, [{ direction: 'ingress', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 }]);
        await driver.refreshSecurityGroupRules('icmp-c');
        await expectReach({
          'a→c ping (icmp rule removed)': [icmp(a, c.ip4), false],
          'a→c tcp/80 (new rule)': [tcp(a, c.ip4, 80), true],
        });
      });

      it('a rule for every protocol opens every port and icmp; without it all are dropped', async () => {
        await expectReach({
          'a→d tcp/81': [tcp(a, d.ip4, 81), true],
          'a→d udp/5354': [udp(a, d.ip4, 5354), true],
          'a→d ping': [icmp(a, d.ip4), true],
          'a→d tcp/81 v6 (protocol "any", IPv6)': [tcp(a, d.ip6, 81), true],
          'a→d ping6': [icmp(a, d.ip6), true],
          'a→e tcp/81': [tcp(a, e.ip4, 81), false],
          'a→e udp/5354': [udp(a, e.ip4, 5354), false],
          'a→e tcp/81 v6': [tcp(a, e.ip6, 81), false],
          'a→e ping6': [icmp(a, e.ip6), false],
        });
      });

      it("broadcast, multicast, and frames for its MAC but another IP address obey the receiver's ingress rules", async () => {
        // Each frame from the unfiltered o reaches both d (a rule for every
        // protocol: the frame arrives) and e (no ingress rules: it must not).
        const both = async (spec: FrameSpec, filter: string): Promise<[number, number]> => {
          let atE = 0;
          const atD = await capture(d, 'eth0', filter, async () => {
            atE = await capture(e, 'eth0', filter, () => sendFrames(o, { count: 2, ...spec }));
          });
          return [atD, atE];
        };
        const cases: Record<string, () => Promise<[number, number]>> = {
          'udp to 255.255.255.255': () => both({ kind: 'udp', dstIp: '255.255.255.255', dport: 9951 }, 'udp dst port 9951'),
          'udp to 10.0.0.255 (subnet broadcast)': () => both({ kind: 'udp', dstIp: '10.0.0.255', dport: 9952 }, 'udp dst port 9952'),
          'udp to 224.0.0.251 (multicast)': () => both({ kind: 'udp', dstIp: '224.0.0.251', dport: 9953 }, 'udp dst port 9953'),
          'udp to ff02::1 (all nodes)': () => both({ kind: 'udp', dstIp: 'ff02::1', srcIp: o.lla, dport: 9954 }, 'udp dst port 9954'),
          'echo request to ff02::1': () =>
            both({ kind: 'icmp-echo', dstIp: 'ff02::1', srcIp: o.lla }, `icmp6 and ip6[40] = 128 and ether src ${o.mac}`),
        };
        // One frame kind at a time: every case starts scapy, which is heavy on a loaded machine.
        const names = Object.keys(cases);
        const counts: [number, number][] = [];
        for (const n of names) counts.push(await (cases[n] as () => Promise<[number, number]>)());
        // Unicast frames for the receiver's MAC with an address that is not the receiver's.
        const [toD, toE] = await Promise.all([
          capture(d, 'eth0', 'udp dst port 9955', () => sendFrames(o, { kind: 'udp', dstMac: d.mac, dstIp: '10.0.0.77', dport: 9955, count: 2 })),
          capture(e, 'eth0', 'udp dst port 9956', () => sendFrames(o, { kind: 'udp', dstMac: e.mac, dstIp: '10.0.0.77', dport: 9956, count: 2 })),
        ]);
        const actual = Object.fromEntries([...names.map((n, i) => [n, counts[i]]), ['unicast to its MAC for 10.0.0.77', [toD, toE]]]);
        const expected = Object.fromEntries([...names, 'unicast to its MAC for 10.0.0.77'].map((n) => [n, [2, 0]]));
        expect(actual).toEqual(expected);
      });
    });

    describe.sequential('return traffic', () => {
      it('an instance with no ingress rules connects out and gets its replies', async () => {
        await expectReach({
          'e→o tcp/80': [tcp(e, o.ip4, 80), true],
          'e→o udp/5353': [udp(e, o.ip4, 5353), true],
          'e→o ping': [icmp(e, o.ip4), true],
          'e→o tcp/80 v6': [tcp(e, o.ip6, 80), true],
          'e→o udp/5353 v6': [udp(e, o.ip6, 5353), true],
          'e→o ping6': [icmp(e, o.ip6), true],
          'e→b tcp/80 (filtered receiver)': [tcp(e, b.ip4, 80), true],
        });
      });

      it('unsolicited inbound traffic to it is dropped', async () => {
        await expectReach({
          'o→e tcp/80': [tcp(o, e.ip4, 80), false],
          'o→e udp/5353': [udp(o, e.ip4, 5353), false],
          'o→e ping': [icmp(o, e.ip4), false],
          'o→e tcp/80 v6': [tcp(o, e.ip6, 80), false],
          'o→e ping6': [icmp(o, e.ip6), false],
          'o→b tcp/80 (control)': [tcp(o, b.ip4, 80), true],
          'o→b ping (control)': [icmp(o, b.ip4), true],
        });
      });
    });

    describe.sequential('egress rules', () => {
      it('egress limited to tcp 80 lets the instance connect out to 80 and nothing else', async () => {
        await expectReach({
          'f→o tcp/80': [tcp(f, o.ip4, 80), true],
          'f→o tcp/81': [tcp(f, o.ip4, 81), false],
          'f→o udp/5353': [udp(f, o.ip4, 5353), false],
          'f→o ping': [icmp(f, o.ip4), false],
          'f→o tcp/80 v6 (the rule is IPv4)': [tcp(f, o.ip6, 80), false],
          'e→o tcp/81 (egress anywhere, control)': [tcp(e, o.ip4, 81), true],
        });
      });

      it('an egress rule with a destination prefix opens that destination only', async () => {
        await expectReach({
          'f→p (10.0.0.21/32) tcp/81': [tcp(f, p.ip4, 81), true],
          'f→o tcp/81': [tcp(f, o.ip4, 81), false],
        });
      });

      it("instance to instance needs the sender's egress and the receiver's ingress", async () => {
        await expectReach({
          'f→b tcp/80 (both allow)': [tcp(f, b.ip4, 80), true],
          'f→b tcp/8000 (b allows, f egress does not)': [tcp(f, b.ip4, 8000), false],
          'a→b tcp/8000 (a egress allows)': [tcp(a, b.ip4, 8000), true],
          'f→e tcp/80 (f allows, e ingress does not)': [tcp(f, e.ip4, 80), false],
        });
      });
    });
  });
});

describe('allowSameNetTraffic (default true, as in Nova)', () => {
  describe.concurrent.each(DRIVERS)('%s driver', (kind) => {
    let lab: Lab;
    let driver: KernelDriver;
    let a: Vm;
    let b: Vm;
    let o: Vm;

    beforeAll(async () => {
      lab = await Lab.create();
      lab.api.putGroup({ id: 'none' }, []);
      a = await lab.vm('a', 10, ['none']);
      b = await lab.vm('b', 11, ['none']);
      o = await lab.vm('o', 20);
      // o also has an address outside the instances' subnet; b reaches it on-link.
      for (const [vm, argv] of [
        [o, ['ip', 'addr', 'add', '10.9.0.20/24', 'dev', 'eth0']],
        [b, ['ip', 'route', 'add', '10.9.0.0/24', 'dev', 'eth0']],
      ] as const) {
        const r = await vm.exec([...argv]);
        if (r.code !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr}`);
      }
      await lab.serve(a, b, o);
      // Default options apart from the namespace: allowSameNetTraffic is on.
      driver = lab.driver(kind, { allowSameNetTraffic: undefined });
      expect(driver.options.allowSameNetTraffic).toBe(true);
      await lab.filter(driver, a, b);
    });

    afterAll(async () => {
      await lab?.destroy();
    });

    it.sequential('instances without rules exchange any traffic with their own subnets, and nothing else', async () => {
      await expectReach({
        'a→b tcp/81 (same subnet)': [tcp(a, b.ip4, 81), true],
        'a→b udp/5354': [udp(a, b.ip4, 5354), true],
        'a→b ping': [icmp(a, b.ip4), true],
        'a→b tcp/81 v6 (same v6 subnet)': [tcp(a, b.ip6, 81), true],
        'o (10.0.0.20)→b tcp/81': [tcp(o, b.ip4, 81), true],
        'o from 10.9.0.20 (other subnet)→b tcp/81': [tcpFrom(o, '10.9.0.20', b.ip4, 81), false],
        'b→o 10.9.0.20 tcp/81 (egress, other subnet)': [tcp(b, '10.9.0.20', 81), false],
        'b→o tcp/81 (egress, same subnet)': [tcp(b, o.ip4, 81), true],
      });
      // The other-subnet path itself works once b is not filtered.
      await driver.unfilterInstance(b.instance, b.nwinfo);
      await expectReach({
        'o from 10.9.0.20→b tcp/81 (b unfiltered)': [tcpFrom(o, '10.9.0.20', b.ip4, 81), true],
        'b→o 10.9.0.20 tcp/81 (b unfiltered)': [tcp(b, '10.9.0.20', 81), true],
      });
    });
  });
});
