/**
 * Conformance suite (both kernel drivers) against the real kernel: the
 * REJECT fallback (iptables: the REJECT target; nftables: `reject`).
 *
 * The host namespace holds the subnets' gateway addresses on the bridge
 * (nova-network style), because the kernel's REJECT target answers a bridged
 * packet with an ICMP error routed from the host: without a route back to
 * the sender it sends nothing and REJECT behaves like DROP. nftables'
 * `reject` uses the same kernel helpers (nf_send_reset / nf_send_unreach).
 *
 * Timing: each probe's time includes starting the probe process, which a
 * loaded machine can stretch past a second. So a refused probe is compared
 * with an allowed one started at the same moment (same start-up cost): a
 * refusal costs about what a success costs, a drop costs SLOW_MS more. The
 * two drivers take turns on one topology (timings do not share the CPU).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DRIVERS, EGRESS_ALL, GATEWAY4, GATEWAY6, Lab, expectReach, tcp, type KernelDriver, type Vm } from '../helpers/fixtures.js';
import { tcpConnect, udpExchange } from '../helpers/probe.js';

/** Long enough that a probe that is not refused is obvious. */
const SLOW_MS = 3000;

async function timed(probe: () => Promise<boolean>): Promise<{ ok: boolean; ms: number }> {
  const t0 = performance.now();
  const ok = await probe();
  return { ok, ms: Math.round(performance.now() - t0) };
}

describe('REJECT fallback', () => {
  let lab: Lab;
  let a: Vm;
  let b: Vm;

  beforeAll(async () => {
    lab = await Lab.create({ hostIpv4: `${GATEWAY4}/24`, hostIpv6: `${GATEWAY6}/64` });
    lab.api.putGroup({ id: 'out' }, EGRESS_ALL);
    lab.api.putGroup({ id: 'web' }, [
      { direction: 'ingress', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 },
      { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 80, portRangeMax: 80 },
    ]);
    a = await lab.vm('a', 10, ['out']);
    b = await lab.vm('b', 11, ['out', 'web']);
    await lab.serve(b);
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  describe.each(DRIVERS)('%s driver', (kind) => {
    let driver: KernelDriver;

    beforeAll(async () => {
      driver = lab.driver(kind, { fallbackAction: 'REJECT' });
      await lab.filter(driver, a, b);
    });

    afterAll(async () => {
      await driver?.teardown();
    });

    it('a connect to a port no rule allows fails at once instead of timing out', async () => {
      await expectReach({
        'a→b tcp/80': [tcp(a, b.ip4, 80), true],
        'a→b tcp/80 v6': [tcp(a, b.ip6, 80), true],
      });
      const [open4, tcp4, udp4, open6, tcp6] = await Promise.all([
        timed(() => tcpConnect(a, b.ip4, 80, { timeoutMs: SLOW_MS })),
        timed(() => tcpConnect(a, b.ip4, 81, { timeoutMs: SLOW_MS })),
        timed(() => udpExchange(a, b.ip4, 5353, { timeoutMs: SLOW_MS })),
        timed(() => tcpConnect(a, b.ip6, 80, { timeoutMs: SLOW_MS })),
        timed(() => tcpConnect(a, b.ip6, 81, { timeoutMs: SLOW_MS })),
      ]);
      expect({ open4: open4.ok, tcp4: tcp4.ok, udp4: udp4.ok, open6: open6.ok, tcp6: tcp6.ok }).toEqual({
        open4: true,
        tcp4: false,
        udp4: false,
        open6: true,
        tcp6: false,
      });
      // v4: the ICMP error ends connect() at once. v6: Linux counts an ICMPv6
      // error that arrives while connect() still owns the socket as a soft
      // error, so the hard error comes with the SYN retransmission at ~1 s.
      // (Times beyond those of the allowed probes started alongside.)
      const extra = { tcp4: tcp4.ms - open4.ms, udp4: udp4.ms - open4.ms, tcp6: tcp6.ms - open6.ms };
      const times = `ms beyond the allowed probes: ${JSON.stringify(extra)}`;
      expect(extra.tcp4, times).toBeLessThan(1000);
      expect(extra.udp4, times).toBeLessThan(1000);
      expect(extra.tcp6, times).toBeLessThan(2000);
    });
  });
});
