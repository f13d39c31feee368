/**
 * Self-test of the real-kernel harness (no firewall involved): namespaces,
 * bridge, veth "taps", socket probes, crafted frames and captures, cleanup.
 * Needs root.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Topology,
  pidAlive,
  run,
  withTopology,
  type Instance,
} from '../helpers/topology.js';
import {
  capture,
  listen,
  ping,
  sendFrames,
  tcpConnect,
  udpExchange,
  type Listener,
} from '../helpers/probe.js';

const MAC_A = 'fa:16:3e:00:00:0a';
const MAC_B = 'fa:16:3e:00:00:0b';
const SPOOF_MAC = 'fa:16:3e:66:66:66';

async function netnsList(): Promise<string[]> {
  const r = await run(['/usr/sbin/ip', 'netns', 'list']);
  return r.stdout
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter((n) => n !== '');
}

describe('kernel harness', () => {
  let topo: Topology;
  let a: Instance;
  let b: Instance;
  let server: Listener;

  beforeAll(async () => {
    topo = await Topology.create();
    a = await topo.addInstance({
      name: 'a',
      devname: 'tap-a',
      mac: MAC_A,
      ipv4: ['10.0.0.10/24'],
      ipv6: ['2001:db8::10/64'],
    });
    b = await topo.addInstance({
      name: 'b',
      devname: 'tap-b',
      mac: MAC_B,
      ipv4: ['10.0.0.11/24'],
      ipv6: ['2001:db8::11/64'],
    });
    server = await listen(b, { tcp: [8080], udp: [5353] });
  });

  afterAll(async () => {
    // Runs even when tests fail; destroy() is idempotent.
    await topo?.destroy();
  });

  it('builds the namespaces, bridge and veth pairs', async () => {
    expect(topo.prefix).toMatch(/^vfw[0-9a-z]{5}-$/);
    expect(await netnsList()).toEqual(expect.arrayContaining([topo.hostNs, a.ns, b.ns]));
    const links = await topo.hostExec(['/usr/sbin/ip', '-o', 'link', 'show', 'master', topo.bridge]);
    expect(links.stdout).toContain('tap-a');
    expect(links.stdout).toContain('tap-b');
    const eth0 = await b.exec(['/usr/sbin/ip', '-o', 'addr', 'show', 'dev', 'eth0']);
    expect(eth0.stdout).toContain('10.0.0.11/24');
    expect(eth0.stdout).toContain('2001:db8::11/64');
    // Kernel-derived (EUI-64) link-local address from the MAC we set.
    expect(eth0.stdout).toContain('fe80::f816:3eff:fe00:b/64');
    expect(eth0.stdout).not.toContain('tentative');
    const mac = await b.exec(['/usr/sbin/ip', '-o', 'link', 'show', 'dev', 'eth0']);
    expect(mac.stdout).toContain(MAC_B);
  });

  it('pings over IPv4 and IPv6 (global and link-local)', async () => {
    expect(await ping(a, '10.0.0.11')).toBe(true);
    expect(await ping(a, '2001:db8::11')).toBe(true);
    expect(await ping(a, 'fe80::f816:3eff:fe00:b%eth0')).toBe(true);
    expect(await ping(b, '10.0.0.10', { sourceIp: '10.0.0.11' })).toBe(true);
  });

  it('ping to an absent address fails within its timeout', async () => {
    const t0 = Date.now();
    expect(await ping(a, '10.0.0.99', { timeoutMs: 300 })).toBe(false);
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  it('TCP and UDP echo over IPv4 and IPv6', async () => {
    expect(await tcpConnect(a, '10.0.0.11', 8080)).toBe(true);
    expect(await tcpConnect(a, '2001:db8::11', 8080)).toBe(true);
    expect(await udpExchange(a, '10.0.0.11', 5353)).toBe(true);
    expect(await udpExchange(a, '2001:db8::11', 5353)).toBe(true);
    expect(await udpExchange(a, '10.0.0.11', 5353, { sourceIp: '10.0.0.10', sourcePort: 40000 })).toBe(true);
    expect(await tcpConnect(a, '2001:db8::11', 8080, { sourceIp: '2001:db8::10' })).toBe(true);
  });

  it('TCP to a closed port fails fast', async () => {
    // A refused connection ends at once; a dropped one would wait out its
    // 5 s timeout. (Generous bound: a loaded machine starts probes slowly.)
    const t0 = Date.now();
    expect(await tcpConnect(a, '10.0.0.11', 8081, { timeoutMs: 5000 })).toBe(false);
    expect(await tcpConnect(a, '2001:db8::11', 8081, { timeoutMs: 5000 })).toBe(false);
    expect(Date.now() - t0).toBeLessThan(4000);
  });

  it('captures a frame with spoofed source IP and MAC sent to b', async () => {
    const n = await capture(b, 'eth0', `ether src ${SPOOF_MAC} and src host 10.0.0.99 and udp dst port 9999`, () =>
      sendFrames(a, {
        kind: 'udp',
        srcMac: SPOOF_MAC,
        dstMac: MAC_B,
        srcIp: '10.0.0.99',
        dstIp: '10.0.0.11',
        dport: 9999,
        count: 3,
      }),
    );
    expect(n).toBe(3);
  });

  it('captures a spoofed IPv6 TCP SYN sent to b', async () => {
    const n = await capture(b, 'eth0', 'ip6 src 2001:db8::99 and tcp dst port 22', () =>
      sendFrames(a, { kind: 'tcp-syn', dstMac: MAC_B, srcIp: '2001:db8::99', dstIp: '2001:db8::11', dport: 22 }),
    );
    expect(n).toBe(1);
  });

  it("captures an ARP reply from a claiming b's IP", async () => {
    const n = await capture(b, 'eth0', `arp and arp[6:2] = 2 and arp src host 10.0.0.11 and ether src ${MAC_A}`, () =>
      sendFrames(a, { kind: 'arp-reply', arpPsrc: '10.0.0.11', arpPdst: '10.0.0.11' }),
    );
    expect(n).toBe(1);
  });

  it('captures a DHCP-server-like broadcast (udp 67 -> 68) from a on b', async () => {
    const n = await capture(b, 'eth0', 'udp src port 67 and udp dst port 68 and dst host 255.255.255.255', () =>
      sendFrames(a, { kind: 'udp', dstIp: '255.255.255.255', sport: 67, dport: 68 }),
    );
    expect(n).toBe(1);
  });

  it('captures a router advertisement, a VLAN-tagged frame and a raw ethertype', async () => {
    const ra = await capture(b, 'eth0', `icmp6 and ip6[40] = 134 and ether src ${MAC_A}`, () =>
      sendFrames(a, { kind: 'icmpv6-ra', raPrefix: '2001:db8:ffff::/64' }),
    );
    expect(ra).toBe(1);
    const tagged = await capture(b, 'eth0', 'vlan 42 and udp dst port 4242', () =>
      sendFrames(a, { kind: 'udp', dstMac: MAC_B, dstIp: '10.0.0.11', dport: 4242, vlan: 42 }),
    );
    expect(tagged).toBe(1);
    const raw = await capture(b, 'eth0', 'ether proto 0x88b5', () =>
      sendFrames(a, { kind: 'raw-ethertype', dstMac: MAC_B, ethertype: 0x88b5, count: 2 }),
    );
    expect(raw).toBe(2);
  });

  it('captures in the host namespace on the tap device', async () => {
    const n = await capture({ ns: topo.hostNs }, 'tap-a', 'icmp and src host 10.0.0.10', () => ping(a, '10.0.0.11'));
    expect(n).toBe(1);
  });

  it('capture counts nothing when nothing matches, and stops if `during` throws', async () => {
    const n = await capture(b, 'eth0', 'udp dst port 1', async () => undefined, { settleMs: 50 });
    expect(n).toBe(0);
    await expect(
      capture(b, 'eth0', 'udp', async () => {
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
  });

  it('removes an instance', async () => {
    const c = await topo.addInstance({ name: 'c', devname: 'tap-c', mac: 'fa:16:3e:00:00:0c', ipv4: ['10.0.0.12/24'] });
    expect(await ping(a, '10.0.0.12')).toBe(true);
    await topo.removeInstance('c');
    expect(await netnsList()).not.toContain(c.ns);
    const links = await topo.hostExec(['/usr/sbin/ip', '-o', 'link', 'show', 'master', topo.bridge]);
    expect(links.stdout).not.toContain('tap-c');
  });

  it('run() reports exit codes, timeouts and spawn errors without throwing', async () => {
    expect((await run(['/bin/false'])).code).toBe(1);
    expect((await run(['/bin/cat'], { input: 'hi' })).stdout).toBe('hi');
    const t0 = Date.now();
    expect((await run(['/bin/sleep', '5'], { timeoutMs: 100 })).code).toBe(124);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect((await run(['/nonexistent/tool'])).code).toBe(127);
  });

  it('keeps two topologies apart (distinct prefixes, same device names)', async () => {
    await withTopology(async (other) => {
      expect(other.prefix).not.toBe(topo.prefix);
      const x = await other.addInstance({ name: 'a', devname: 'tap-a', mac: MAC_A, ipv4: ['10.0.0.20/24'] });
      // Separate bridges: no path from the other topology to b.
      expect(await ping(x, '10.0.0.11', { timeoutMs: 300 })).toBe(false);
    });
  });

  it('destroy() kills started processes and deletes namespaces, even when the test body throws', async () => {
    let doomed: Topology | undefined;
    const pids: number[] = [];
    let names: string[] = [];
    await expect(
      withTopology(async (t) => {
        doomed = t;
        const x = await t.addInstance({ name: 'x', devname: 'tap-x', mac: 'fa:16:3e:00:00:1a', ipv4: ['10.0.0.30/24'] });
        const srv = await listen(x, { tcp: [80], udp: [53] });
        pids.push(srv.pid);
        names = t.namespaceNames();
        expect(names).toHaveLength(2);
        expect(pidAlive(srv.pid)).toBe(true);
        throw new Error('simulated test failure');
      }),
    ).rejects.toThrow('simulated test failure');
    expect(doomed).toBeDefined();
    const left = await netnsList();
    for (const n of names) expect(left).not.toContain(n);
    expect(left.some((n) => doomed && n.startsWith(doomed.prefix))).toBe(false);
    const all = doomed?.startedPids() ?? [];
    expect(all.length).toBeGreaterThan(0);
    for (const pid of [...pids, ...all]) expect(pidAlive(pid)).toBe(false);
    await doomed?.destroy(); // idempotent
  });

  it('destroys the main topology completely', async () => {
    expect(pidAlive(server.pid)).toBe(true);
    await topo.destroy();
    const left = await netnsList();
    expect(left.some((n) => n.startsWith(topo.prefix))).toBe(false);
    for (const pid of topo.startedPids()) expect(pidAlive(pid)).toBe(false);
    expect(topo.namespaceNames()).toEqual([]);
  });
});
