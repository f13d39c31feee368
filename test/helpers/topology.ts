/**
 * Real-kernel test topologies built from network namespaces.
 *
 *   hostNs ("compute host")            instance namespaces
 *   +--------------------------+       +-------------------+
 *   | bridge (br0)             |       | eth0 (spec.mac)   |
 *   |   +-- tap-a  <--veth-->  | ----- |  addresses/routes |
 *   |   +-- tap-b  <--veth-->  | --+   +-------------------+
 *   +--------------------------+   +-- ...
 *
 * Nothing here touches the root namespace: every namespace is created with a
 * random per-topology prefix, veth pairs are created from inside the host
 * namespace directly into the instance namespace, and every tool runs with an
 * argument vector (no shell).  destroy() kills the processes the topology
 * started (by PID) and deletes its namespaces; a process 'exit' hook does the
 * same synchronously for anything left behind.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomInt } from 'node:crypto';

export interface ExecOptions {
  input?: string;
  timeoutMs?: number;
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface InstanceSpec {
  /** Short role name, e.g. 'a'; the namespace is `${prefix}${name}`. */
  name: string;
  /** Host-side veth name = the instance's "tap" device, e.g. 'tap-a' (<= 15 chars). */
  devname: string;
  /** Instance-side MAC, e.g. 'fa:16:3e:00:00:0a'. */
  mac: string;
  /** With prefix length, e.g. ['10.0.0.10/24']. */
  ipv4?: string[];
  /** E.g. ['2001:db8::10/64']; added with `nodad`. */
  ipv6?: string[];
  gateway4?: string;
  gateway6?: string;
}

export interface Instance extends InstanceSpec {
  /** Namespace name. */
  ns: string;
  exec(argv: string[], opts?: ExecOptions): Promise<ExecResult>;
}

export interface TopologyOptions {
  /** Bridge name in the host namespace, default 'br0'. */
  bridge?: string;
  /** Optional address on the bridge, e.g. '10.0.0.1/24'. */
  hostIpv4?: string;
  /** Optional address on the bridge, e.g. '2001:db8::1/64' (nodad). */
  hostIpv6?: string;
}

export const IP = '/usr/sbin/ip';
export const PYTHON = '/usr/bin/python3';
const TIMEOUT_CODE = 124;
const SPAWN_ERROR_CODE = 127;

// ------------------------------------------------------------ process registry

interface Tracked {
  child: ChildProcess;
  /** Namespace the process runs in, or null for root-namespace helpers (ip, ...). */
  ns: string | null;
}

/** Every child started through this module that has not exited yet, by PID. */
const live = new Map<number, Tracked>();
/** Namespaces of topologies that are not destroyed yet. */
const ownedNamespaces = new Set<string>();
/** Namespace -> owning topology (for PID bookkeeping). */
const nsOwner = new Map<string, Topology>();

let exitHookInstalled = false;

/** Synchronous last-resort cleanup: SIGKILL tracked children, delete owned namespaces. */
function cleanupSync(): void {
  for (const [pid, t] of live) {
    if (isRunning(t.child)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
  live.clear();
  for (const ns of ownedNamespaces) {
    spawnSync(IP, ['netns', 'del', ns], { stdio: 'ignore', timeout: 5000 });
  }
  ownedNamespaces.clear();
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', cleanupSync);
  // A terminating signal skips 'exit'.  Clean up, then, if nobody else handles
  // the signal, re-raise it so the default action (termination) still happens.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      cleanupSync();
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    });
  }
}

function isRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** Argument vector that runs `argv` inside namespace `ns` (or as-is when ns is null). */
export function nsArgv(ns: string | null, argv: string[]): string[] {
  return ns === null ? argv : [IP, 'netns', 'exec', ns, ...argv];
}

/**
 * Start a long-lived process inside `ns` (null = current namespace) and record its
 * PID, so destroy() / the exit hook can kill it.  `ip netns exec` exec()s the
 * command, so the PID is the command's own.
 */
export function spawnTracked(ns: string | null, argv: string[]): ChildProcess {
  const full = nsArgv(ns, argv);
  const [cmd, ...args] = full;
  if (cmd === undefined) throw new Error('spawnTracked: empty argv');
  installExitHook();
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const pid = child.pid;
  if (pid !== undefined) {
    live.set(pid, { child, ns });
    if (ns !== null) nsOwner.get(ns)?.recordPid(pid);
    child.once('exit', () => live.delete(pid));
  }
  // Swallow EPIPE & co. on stdin: the caller sees the exit code instead.
  child.stdin?.on('error', () => undefined);
  return child;
}

/** Wait for a child to exit; SIGTERM (or `signal`), then SIGKILL after graceMs. */
export async function stopChild(
  child: ChildProcess,
  signal: NodeJS.Signals = 'SIGTERM',
  graceMs = 1000,
): Promise<void> {
  if (!isRunning(child)) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  const timer = setTimeout(() => {
    if (isRunning(child)) child.kill('SIGKILL');
  }, graceMs);
  await exited;
  clearTimeout(timer);
}

function execIn(ns: string | null, argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
  return new Promise((resolve) => {
    let child: ChildProcess;
    try {
      child = spawnTracked(ns, argv);
    } catch (err) {
      resolve({ code: SPAWN_ERROR_CODE, stdout: '', stderr: String(err) });
      return;
    }
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    let settled = false;
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer =
      opts.timeoutMs !== undefined
        ? setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, opts.timeoutMs)
        : undefined;
    const finish = (r: ExecResult): void => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      resolve(r);
    };
    child.once('error', (err) => finish({ code: SPAWN_ERROR_CODE, stdout, stderr: stderr + String(err) }));
    child.once('close', (code, sig) => {
      if (timedOut) {
        finish({ code: TIMEOUT_CODE, stdout, stderr: `${stderr}[timed out after ${opts.timeoutMs} ms]` });
      } else {
        finish({ code: code ?? (sig ? 128 : 1), stdout, stderr });
      }
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}

/**
 * Spawn helper: runs argv (no shell), collects output, never throws on a non-zero
 * exit.  Timeout => SIGKILL and code 124; spawn failure => code 127.
 */
export function run(argv: string[], opts?: ExecOptions): Promise<ExecResult> {
  return execIn(null, argv, opts);
}

/** Run argv inside namespace ns (`ip netns exec ns ...`). */
export function nsExec(ns: string, argv: string[], opts?: ExecOptions): Promise<ExecResult> {
  return execIn(ns, argv, opts);
}

/** Like run() but throws with the tool's stderr on a non-zero exit. */
async function must(argv: string[], opts?: ExecOptions): Promise<ExecResult> {
  const r = await run(argv, opts);
  if (r.code !== 0) {
    throw new Error(`command failed (${r.code}): ${argv.join(' ')}\n${r.stderr.trim()}`);
  }
  return r;
}

/** Several `ip` commands in one process: `ip -n ns -batch -`. */
async function ipBatch(ns: string, lines: string[]): Promise<void> {
  if (lines.length === 0) return;
  await must([IP, '-n', ns, '-batch', '-'], { input: lines.join('\n') + '\n', timeoutMs: 15_000 });
}

async function sysctl(ns: string, settings: Record<string, string | number>): Promise<void> {
  const args = Object.entries(settings).map(([k, v]) => `${k}=${v}`);
  await must([IP, 'netns', 'exec', ns, '/usr/sbin/sysctl', '-q', '-w', ...args], { timeoutMs: 15_000 });
}

// -------------------------------------------------------------------- Topology

const IFNAMSIZ = 15;
const SAFE_NAME = /^[A-Za-z0-9_.-]+$/;
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;

function randomPrefix(): string {
  const alphabet = '0123456789abcdefghijklmnopqrstuvwxyz';
  let s = '';
  for (let i = 0; i < 5; i++) s += alphabet[randomInt(alphabet.length)];
  return `vfw${s}-`;
}

export class Topology {
  readonly prefix: string;
  readonly hostNs: string;
  readonly bridge: string;
  private readonly instances = new Map<string, Instance>();
  /** Namespaces created (and not yet deleted) by this topology, host first. */
  private readonly namespaces = new Set<string>();
  /** Every PID started in this topology's namespaces (for leak checks). */
  private readonly pids = new Set<number>();
  private destroying: Promise<void> | undefined;

  private constructor(prefix: string, bridge: string) {
    this.prefix = prefix;
    this.hostNs = `${prefix}h`;
    this.bridge = bridge;
  }

  static async create(opts: TopologyOptions = {}): Promise<Topology> {
    const bridge = opts.bridge ?? 'br0';
    if (bridge.length > IFNAMSIZ || !SAFE_NAME.test(bridge)) throw new Error(`bad bridge name ${bridge}`);
    installExitHook();
    let topo: Topology | undefined;
    for (let attempt = 0; attempt < 5 && !topo; attempt++) {
      const candidate = new Topology(randomPrefix(), bridge);
      const r = await run([IP, 'netns', 'add', candidate.hostNs]);
      if (r.code === 0) topo = candidate;
      else if (!/exists/i.test(r.stderr)) throw new Error(`ip netns add ${candidate.hostNs}: ${r.stderr.trim()}`);
    }
    if (!topo) throw new Error('could not allocate a unique namespace prefix');
    topo.adopt(topo.hostNs);
    try {
      await topo.setupHost(opts);
    } catch (err) {
      await topo.destroy();
      throw err;
    }
    return topo;
  }

  private adopt(ns: string): void {
    this.namespaces.add(ns);
    ownedNamespaces.add(ns);
    nsOwner.set(ns, this);
  }

  private forget(ns: string): void {
    this.namespaces.delete(ns);
    ownedNamespaces.delete(ns);
    nsOwner.delete(ns);
  }

  /** @internal called by spawnTracked */
  recordPid(pid: number): void {
    this.pids.add(pid);
  }

  /** PIDs of every process started inside this topology's namespaces so far. */
  startedPids(): number[] {
    return [...this.pids];
  }

  /** Names of namespaces this topology currently owns (host first). */
  namespaceNames(): string[] {
    return [...this.namespaces];
  }

  private async setupHost(opts: TopologyOptions): Promise<void> {
    const ns = this.hostNs;
    // Quiet IPv6: no DAD, no router solicitations from the bridge/taps.
    await sysctl(ns, {
      'net.ipv6.conf.all.accept_dad': 0,
      'net.ipv6.conf.default.accept_dad': 0,
      'net.ipv6.conf.default.router_solicitations': 0,
      'net.ipv4.ip_forward': 0,
    });
    const lines = [
      'link set lo up',
      // No STP; ports forward as soon as they are up.  Multicast snooping off so
      // IPv6 ND / multicast is simply flooded (deterministic without a querier).
      `link add ${this.bridge} type bridge stp_state 0 forward_delay 0 mcast_snooping 0`,
      `link set ${this.bridge} up`,
    ];
    if (opts.hostIpv4) lines.push(`addr add ${opts.hostIpv4} dev ${this.bridge}`);
    if (opts.hostIpv6) lines.push(`addr add ${opts.hostIpv6} dev ${this.bridge} nodad`);
    await ipBatch(ns, lines);
  }

  async addInstance(spec: InstanceSpec): Promise<Instance> {
    if (this.destroying) throw new Error('topology destroyed');
    if (!SAFE_NAME.test(spec.name)) throw new Error(`bad instance name ${spec.name}`);
    if (spec.name === 'h') throw new Error("instance name 'h' is reserved for the host namespace");
    if (this.instances.has(spec.name)) throw new Error(`instance ${spec.name} exists`);
    if (spec.devname.length > IFNAMSIZ || !SAFE_NAME.test(spec.devname)) {
      throw new Error(`bad devname ${spec.devname} (<= ${IFNAMSIZ} chars)`);
    }
    if (!MAC_RE.test(spec.mac)) throw new Error(`bad mac ${spec.mac}`);
    const ns = `${this.prefix}${spec.name}`;
    await must([IP, 'netns', 'add', ns]);
    this.adopt(ns);
    try {
      // Defaults first, so eth0 inherits them when it appears in the namespace.
      await sysctl(ns, {
        'net.ipv6.conf.all.accept_dad': 0,
        'net.ipv6.conf.default.accept_dad': 0,
        'net.ipv6.conf.default.router_solicitations': 0,
      });
      // Created from inside the host namespace straight into the instance namespace.
      await ipBatch(this.hostNs, [
        `link add ${spec.devname} type veth peer name eth0 address ${spec.mac} netns ${ns}`,
        `link set ${spec.devname} master ${this.bridge}`,
        `link set ${spec.devname} up`,
      ]);
      await sysctl(ns, { 'net.ipv6.conf.eth0.router_solicitations': 0, 'net.ipv6.conf.eth0.accept_dad': 0 });
      const lines = ['link set lo up', `link set eth0 address ${spec.mac}`];
      for (const a of spec.ipv4 ?? []) lines.push(`addr add ${a} dev eth0`);
      lines.push('link set eth0 up');
      for (const a of spec.ipv6 ?? []) lines.push(`addr add ${a} dev eth0 nodad`);
      if (spec.gateway4) lines.push(`route add default via ${spec.gateway4} dev eth0`);
      if (spec.gateway6) lines.push(`route add default via ${spec.gateway6} dev eth0`);
      await ipBatch(ns, lines);
    } catch (err) {
      await this.dropNamespace(ns, spec.devname);
      throw err;
    }
    const inst: Instance = {
      ...spec,
      ipv4: spec.ipv4 ? [...spec.ipv4] : undefined,
      ipv6: spec.ipv6 ? [...spec.ipv6] : undefined,
      ns,
      exec: (argv, opts) => nsExec(ns, argv, opts),
    };
    this.instances.set(spec.name, inst);
    return inst;
  }

  instance(name: string): Instance {
    const i = this.instances.get(name);
    if (!i) throw new Error(`no instance ${name}`);
    return i;
  }

  async removeInstance(name: string): Promise<void> {
    const inst = this.instances.get(name);
    if (!inst) return;
    this.instances.delete(name);
    await this.dropNamespace(inst.ns, inst.devname);
  }

  hostExec(argv: string[], opts?: ExecOptions): Promise<ExecResult> {
    return nsExec(this.hostNs, argv, opts);
  }

  private async killProcessesIn(namespaces: Set<string>): Promise<void> {
    const victims = [...live.values()].filter((t) => t.ns !== null && namespaces.has(t.ns));
    await Promise.all(victims.map((t) => stopChild(t.child, 'SIGKILL', 1000)));
  }

  private async dropNamespace(ns: string, devname?: string): Promise<void> {
    await this.killProcessesIn(new Set([ns]));
    // Delete the host end explicitly: namespace teardown in the kernel is
    // asynchronous, and the tap would otherwise linger on the bridge a moment.
    if (devname && this.namespaces.has(this.hostNs)) {
      await run([IP, '-n', this.hostNs, 'link', 'del', devname]);
    }
    await this.deleteNamespace(ns);
  }

  private async deleteNamespace(ns: string): Promise<void> {
    const r = await run([IP, 'netns', 'del', ns]);
    // Keep it registered (for the exit hook) if deletion failed for another reason.
    if (r.code === 0 || /No such file/i.test(r.stderr)) this.forget(ns);
  }

  /** Kill every process of this topology (by PID) and delete its namespaces. Idempotent. */
  destroy(): Promise<void> {
    this.destroying ??= (async () => {
      await this.killProcessesIn(new Set(this.namespaces));
      await Promise.all([...this.namespaces].map((ns) => this.deleteNamespace(ns)));
      this.instances.clear();
    })();
    return this.destroying;
  }
}

/**
 * Create a topology, run fn, and always destroy it (even when fn throws).
 * Handy for tests that need a short-lived second topology.
 */
export async function withTopology<T>(
  fn: (topo: Topology) => Promise<T>,
  opts?: TopologyOptions,
): Promise<T> {
  const topo = await Topology.create(opts);
  try {
    return await fn(topo);
  } finally {
    await topo.destroy();
  }
}

/** True if a process with this PID exists (signal 0 probe). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
