/**
 * Packet probes: real packets through the real kernel, from inside instance
 * namespaces.  Socket probes and crafted frames are implemented in pkt.py
 * (Debian's /usr/bin/python3 + scapy); ICMP echo uses iputils ping; captures use
 * tcpdump.  Negative results cost their timeout, so defaults are short.
 */
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { PYTHON, spawnTracked, stopChild, type Instance } from './topology.js';

export const PKT_PY = fileURLToPath(new URL('./pkt.py', import.meta.url));
const TCPDUMP = '/usr/bin/tcpdump';
const PING = '/usr/bin/ping';
const DEFAULT_TIMEOUT_MS = 1000;
const DEFAULT_TCP_TIMEOUT_MS = 1500;
/** Extra time the outer process gets beyond the probe's own timeout. */
const SLACK_MS = 3000;

function pkt(from: Instance, sub: string, args: Record<string, unknown>, timeoutMs: number) {
  return from.exec([PYTHON, '-I', PKT_PY, sub, JSON.stringify(args)], { timeoutMs: timeoutMs + SLACK_MS });
}

function isV6(ip: string): boolean {
  return ip.includes(':');
}

/** Address without prefix length. */
function bare(cidr: string): string {
  return cidr.split('/')[0] ?? cidr;
}

export interface TcpOptions {
  sourceIp?: string;
  timeoutMs?: number;
}

/**
 * TCP connect from `from` to ip:port; true if the handshake completes and a token
 * is echoed back within timeoutMs (default 1500).  A refused connection (RST)
 * returns false immediately.
 */
export async function tcpConnect(from: Instance, ip: string, port: number, opts: TcpOptions = {}): Promise<boolean> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TCP_TIMEOUT_MS;
  const r = await pkt(from, 'tcp', { ip, port, src: opts.sourceIp, timeout: timeoutMs / 1000 }, timeoutMs);
  return r.code === 0;
}

export interface UdpOptions {
  sourceIp?: string;
  sourcePort?: number;
  timeoutMs?: number;
}

/**
 * Send one UDP datagram from a socket connected to ip:port; true if the echo
 * comes back (from exactly ip:port) within timeoutMs (default 1000).
 */
export async function udpExchange(from: Instance, ip: string, port: number, opts: UdpOptions = {}): Promise<boolean> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const r = await pkt(
    from,
    'udp',
    { ip, port, src: opts.sourceIp, sport: opts.sourcePort, timeout: timeoutMs / 1000 },
    timeoutMs,
  );
  return r.code === 0;
}

export interface PingOptions {
  timeoutMs?: number;
  sourceIp?: string;
}

/** One ICMP(v6) echo with iputils ping; true if a reply arrives within timeoutMs (default 1000). */
export async function ping(from: Instance, ip: string, opts: PingOptions = {}): Promise<boolean> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const argv = [PING, isV6(ip) ? '-6' : '-4', '-n', '-q', '-c', '1', '-W', (timeoutMs / 1000).toFixed(3)];
  if (opts.sourceIp) argv.push('-I', opts.sourceIp);
  argv.push(ip);
  const r = await from.exec(argv, { timeoutMs: timeoutMs + SLACK_MS });
  return r.code === 0;
}

export interface Listener {
  /** PID of the echo server process. */
  readonly pid: number;
  stop(): Promise<void>;
}

/** Wait until `child` prints a line matching `re` on `stream`; reject if it exits first. */
function waitForLine(
  child: ChildProcess,
  stream: 'stdout' | 'stderr',
  re: RegExp,
  what: string,
  timeoutMs = 15_000,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let buf = '';
    let errBuf = '';
    const src = child[stream];
    const onData = (d: Buffer | string) => {
      buf += String(d);
      if (re.test(buf)) done();
    };
    const onErr = (d: Buffer | string) => (errBuf += String(d));
    const onExit = (code: number | null, sig: string | null) =>
      done(new Error(`${what} exited (${code ?? sig}) before it was ready: ${(errBuf || buf).trim()}`));
    const timer = setTimeout(() => done(new Error(`${what} not ready after ${timeoutMs} ms: ${errBuf.trim()}`)), timeoutMs);
    function done(err?: Error) {
      clearTimeout(timer);
      src?.off('data', onData);
      if (stream === 'stdout') child.stderr?.off('data', onErr);
      child.off('exit', onExit);
      if (err) reject(err);
      else resolve();
    }
    src?.on('data', onData);
    if (stream === 'stdout') child.stderr?.on('data', onErr);
    child.once('exit', onExit);
  });
}

/**
 * Start TCP and UDP echo servers in `on` (IPv4 0.0.0.0 and IPv6 ::, one socket
 * each per port).  Resolves once every socket is bound.  stop() kills it by PID.
 */
export async function listen(on: Instance, ports: { tcp?: number[]; udp?: number[] }): Promise<Listener> {
  const child = spawnTracked(on.ns, [
    PYTHON,
    '-I',
    PKT_PY,
    'serve',
    JSON.stringify({ tcp: ports.tcp ?? [], udp: ports.udp ?? [] }),
  ]);
  child.stdin?.end();
  try {
    await waitForLine(child, 'stdout', /^READY\b/m, `echo server in ${on.ns}`);
  } catch (err) {
    await stopChild(child, 'SIGKILL');
    throw err;
  }
  // Keep draining output so the server never blocks on a full pipe.
  child.stdout?.resume();
  child.stderr?.resume();
  const pid = child.pid ?? -1;
  return {
    pid,
    stop: () => stopChild(child, 'SIGTERM', 1000),
  };
}

export type FrameKind =
  | 'udp'
  | 'tcp-syn'
  | 'icmp-echo'
  | 'arp-reply'
  | 'arp-request'
  | 'icmpv6-ra'
  | 'raw-ethertype';

export interface FrameSpec {
  kind: FrameKind;
  /** Default: the sender's own MAC. */
  srcMac?: string;
  /**
   * Default: ff:ff:ff:ff:ff:ff (ARP, IPv4 broadcast, or when omitted), or the
   * 33:33:xx mapping for an IPv6 multicast dstIp.  Pass the receiver's MAC for unicast.
   */
  dstMac?: string;
  /** Default: the sender's first address of dstIp's family (icmpv6-ra: its link-local). */
  srcIp?: string;
  /** Required for udp/tcp-syn/icmp-echo; icmpv6-ra defaults to ff02::1. */
  dstIp?: string;
  sport?: number;
  dport?: number;
  /** Frames to send (default 1). */
  count?: number;
  /** ARP sender protocol address (default srcIp, else the sender's first IPv4). */
  arpPsrc?: string;
  /** ARP sender hardware address (default srcMac). */
  arpHwsrc?: string;
  /** ARP target protocol address (default dstIp). */
  arpPdst?: string;
  /** ARP target hardware address (request: 00:..; reply: dstMac). */
  arpHwdst?: string;
  /** EtherType for raw-ethertype (default 0x88b5, local experimental). */
  ethertype?: number;
  /** Wrap the frame in an 802.1Q tag with this VLAN id. */
  vlan?: number;
  /** Application payload (udp, icmp-echo, raw-ethertype). */
  payload?: string;
  /** Prefix Information option for icmpv6-ra, e.g. '2001:db8:1::/64'. */
  raPrefix?: string;
  raRouterLifetime?: number;
  /** IPv4 TTL / IPv6 hop limit. */
  ttl?: number;
  /** Interface in the sender's namespace (default eth0). */
  iface?: string;
}

/** Craft frames with scapy in `from`'s namespace and sendp() them on its eth0. */
export async function sendFrames(from: Instance, spec: FrameSpec): Promise<void> {
  const args: Record<string, unknown> = { ...spec };
  args.srcMac = spec.srcMac ?? from.mac;
  if (spec.srcIp === undefined && spec.kind !== 'icmpv6-ra') {
    const v6 = spec.dstIp !== undefined ? isV6(spec.dstIp) : false;
    const own = v6 ? from.ipv6?.[0] : from.ipv4?.[0];
    if (own) args.srcIp = bare(own);
  }
  if ((spec.kind === 'arp-reply' || spec.kind === 'arp-request') && spec.arpPsrc === undefined) {
    const src = (args.srcIp as string | undefined) ?? (from.ipv4?.[0] ? bare(from.ipv4[0]) : undefined);
    if (src) args.arpPsrc = src;
  }
  const r = await pkt(from, 'send', args, 10_000);
  if (r.code !== 0) {
    throw new Error(`sendFrames(${spec.kind}) from ${from.ns} failed (${r.code}): ${r.stderr.trim()}`);
  }
}

export interface CaptureOptions {
  /** Time to keep capturing after `during` resolves (default 150 ms). */
  settleMs?: number;
}

/**
 * Count frames matching a tcpdump/BPF `filter` on `iface` in `on`'s namespace
 * while `during()` runs.  The capture is listening before `during` starts.
 * Note: a VLAN-tagged frame only matches filters that start with `vlan`.
 */
export async function capture(
  on: Instance | { ns: string },
  iface: string,
  filter: string,
  during: () => Promise<unknown>,
  opts: CaptureOptions = {},
): Promise<number> {
  const settleMs = opts.settleMs ?? 150;
  // -p: don't touch promiscuity (veth delivers every frame to packet sockets anyway).
  const argv = [TCPDUMP, '-i', iface, '-n', '-l', '-q', '-p', '--immediate-mode', '-Z', 'root'];
  if (filter.trim() !== '') argv.push(filter);
  const child = spawnTracked(on.ns, argv);
  child.stdin?.end();
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  try {
    await waitForLine(child, 'stderr', /listening on/, `tcpdump on ${on.ns}/${iface}`);
    await during();
    await new Promise((r) => setTimeout(r, settleMs));
  } finally {
    await stopChild(child, 'SIGINT', 2000);
  }
  const m = /(\d+) packets? captured/.exec(stderr);
  if (m?.[1] !== undefined) return Number(m[1]);
  return stdout.split('\n').filter((l) => l.trim() !== '').length;
}
