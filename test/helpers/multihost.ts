/**
 * Many compute hosts on one data store, for the multi-host and fault tests.
 *
 * # Network
 * A `ComputeHost` is a Topology (its host namespace with a Linux bridge)
 * whose bridge holds the gateway address `10.<i>.0.1/24` of the host's own
 * subnet `10.<i>.0.0/24`; its VMs get `10.<i>.0.<n>`, MAC `fa:16:3e:0<i>:00:<n
 * in hex>`, tap `tap-<name>` and a default route via the gateway. A `Fabric`
 * adds a "core" namespace (one more Topology, no VMs) whose bridge is a
 * switch with one veth to every host (`uplink`, `10.255.0.<i>/24` on the host
 * side); each host routes the other hosts' subnets over it and forwards
 * (`net.ipv4.ip_forward=1`). Traffic between VMs of two hosts is routed by
 * both host namespaces, so each host's FORWARD chain sees it: the sender's
 * egress chain on its host, the receiver's ingress chain on its host.
 *
 * # Processes
 * `virtfw api` and `virtfw agent` run in the ROOT namespace (they reach
 * PostgreSQL on 127.0.0.1); an agent applies its rules inside its host's
 * namespace with `--netns`. Every process is started through `spawnTracked`
 * (recorded by PID, SIGKILLed by the exit hook if a test dies) and is stopped
 * by PID: `stop()` (SIGTERM), `kill9()`, or `stopAllProcesses()`.
 *
 * # iptables-restore stand-in
 * `RestoreWrapper` puts `iptables-restore` and `ip6tables-restore` scripts in
 * a temp dir that an agent gets first on its PATH. They behave as the real
 * tools unless a file next to them says otherwise: `fail` (exit 1, the
 * file's text on stderr) or `delay` (leave a marker `running.<tool>.<pid>`,
 * sleep that many seconds, then exec the real tool with the same stdin).
 */
import type { ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, readdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import type { NetworkInfo } from '../../src/model/types.js';
import { CLI } from './cli.js';
import { freePort } from './private-pg.js';
import { listen, tcpConnect, type Listener } from './probe.js';
import { IP, Topology, pidAlive, run, spawnTracked, stopChild, type ExecResult, type Instance as NsInstance } from './topology.js';

/** Ports every VM's echo server listens on. */
export const TCP_PORTS = [22, 80, 81, 8000, 8001, 8002, 8003, 8004, 9000];

/** Probe timeout in `within()` loops: a blocked probe costs this much, so several tries fit in a 1 s budget. */
export const FAST_MS = 300;

/** Probe timeout of one-shot checks (probe tables): long enough for a loaded machine. */
export const PROBE_MS = 1000;

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------------ network

export interface Vm extends NsInstance {
  host: ComputeHost;
  /** the VM's IPv4 address */
  ip: string;
  nwinfo: NetworkInfo;
}

export class ComputeHost {
  readonly vms = new Map<string, Vm>();
  readonly #listeners: Listener[] = [];

  private constructor(
    /** the host name the agent and the instances use, e.g. `h1` */
    readonly name: string,
    /** 1-9: the host's subnet is 10.<index>.0.0/24 */
    readonly index: number,
    readonly topo: Topology,
  ) {}

  static async create(name: string, index: number): Promise<ComputeHost> {
    if (!Number.isInteger(index) || index < 1 || index > 9) throw new Error(`host index ${index} outside 1-9`);
    const topo = await Topology.create({ hostIpv4: `10.${index}.0.1/24` });
    const host = new ComputeHost(name, index, topo);
    try {
      await host.must(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
    } catch (err) {
      await topo.destroy();
      throw err;
    }
    return host;
  }

  get ns(): string {
    return this.topo.hostNs;
  }

  get subnet(): string {
    return `10.${this.index}.0.0/24`;
  }

  get gateway(): string {
    return `10.${this.index}.0.1`;
  }

  /** A VM namespace on this host's bridge (not in the data store until a test creates its instance). */
  async vm(name: string, n: number): Promise<Vm> {
    if (!Number.isInteger(n) || n < 2 || n > 254) throw new Error(`vm number ${n} outside 2-254`);
    const ip = `10.${this.index}.0.${n}`;
    const mac = `fa:16:3e:0${this.index}:00:${n.toString(16).padStart(2, '0')}`;
    const devname = `tap-${name}`;
    const ns = await this.topo.addInstance({ name, devname, mac, ipv4: [`${ip}/24`], gateway4: this.gateway });
    const vm: Vm = { ...ns, host: this, ip, nwinfo: this.networkInfo(name, devname, mac, ip) };
    this.vms.set(name, vm);
    return vm;
  }

  /** Nova network info of a VIF on this host's subnet. */
  networkInfo(name: string, devname: string, mac: string, ip: string): NetworkInfo {
    return [
      {
        id: `vif-${this.name}-${name}`,
        address: mac,
        devname,
        type: 'bridge',
        network: {
          id: `net-${this.name}`,
          label: `net-${this.name}`,
          bridge: this.topo.bridge,
          subnets: [{ cidr: this.subnet, version: 4, ips: [{ address: ip, type: 'fixed', version: 4 }], gateway: { address: this.gateway } }],
        },
      },
    ];
  }

  /** Echo servers on every test port of each VM. */
  async serve(...vms: NsInstance[]): Promise<void> {
    for (const vm of vms) this.#listeners.push(await listen(vm, { tcp: TCP_PORTS }));
  }

  exec(argv: string[]): Promise<ExecResult> {
    return this.topo.hostExec(argv, { timeoutMs: 15_000 });
  }

  async must(argv: string[]): Promise<string> {
    const r = await this.exec(argv);
    if (r.code !== 0) throw new Error(`${argv.join(' ')} in ${this.ns} failed (${r.code}): ${r.stderr.trim()}`);
    return r.stdout;
  }

  /** The filter table of one family, canonical (see `canonicalFilter`). */
  async filter(version: 4 | 6): Promise<string> {
    return canonicalFilter(await this.must([version === 4 ? 'iptables-save' : 'ip6tables-save', '-t', 'filter']));
  }

  /** The namespace's ipsets (`ipset save`), lines sorted. */
  async sets(): Promise<string> {
    return (await this.must(['ipset', 'save'])).split('\n').filter((l) => l.trim() !== '').sort().join('\n');
  }

  /** Both families' filter tables, the ipsets and virtfw's bridge table, for "nothing changed" checks. */
  async snapshot(): Promise<KernelState> {
    const [v4, v6, sets, bridge] = await Promise.all([
      this.filter(4),
      this.filter(6),
      this.sets(),
      this.exec(['nft', 'list', 'table', 'bridge', 'virtfw']).then((r) => (r.code === 0 ? r.stdout : '')),
    ]);
    return { v4, v6, sets, bridge };
  }

  /**
   * Does the kernel's filtering in this namespace name `address`: in an
   * iptables rule (`-s 10.2.0.21/32`, member matching by expansion) or as an
   * element of an ipset (member matching by sets)?
   */
  async names(address: string): Promise<boolean> {
    const text = `${await this.must(['iptables-save', '-t', 'filter'])}\n${await this.must(['ipset', 'save'])}`;
    const escaped = address.replace(/\./g, '\\.');
    return new RegExp(`(^|\\s)${escaped}(/32)?(\\s|$)`, 'm').test(text);
  }

  async destroy(): Promise<void> {
    await Promise.all(this.#listeners.splice(0).map((l) => l.stop()));
    await this.topo.destroy();
  }
}

export interface KernelState {
  v4: string;
  v6: string;
  sets: string;
  bridge: string;
}

/**
 * `iptables-save -t filter` output in a form that compares equal for equal
 * rulesets: comments, the table header and COMMIT dropped, counters zeroed,
 * chain declarations sorted, and each chain's rules kept in their order but
 * grouped by chain with the chains sorted (nf_tables lists chains in creation
 * order, which differs between two ways of reaching one ruleset).
 */
export function canonicalFilter(save: string): string {
  const declarations: string[] = [];
  const rules = new Map<string, string[]>();
  for (const raw of save.split('\n')) {
    const line = raw.trim().replace(/\[\d+:\d+\]/g, '[0:0]');
    if (line === '' || line.startsWith('#') || line.startsWith('*') || line === 'COMMIT') continue;
    if (line.startsWith(':')) {
      declarations.push(line);
      continue;
    }
    const chain = /^-A (\S+)/.exec(line)?.[1] ?? '?';
    const list = rules.get(chain) ?? [];
    list.push(line);
    rules.set(chain, list);
  }
  const chains = [...rules.keys()].sort();
  return [...declarations.sort(), ...chains.flatMap((c) => rules.get(c) ?? [])].join('\n');
}

/**
 * Hosts joined by a core switch, each routing the others' subnets. Built in
 * parallel; `destroy()` removes every namespace (and so every veth).
 */
export class Fabric {
  private constructor(
    readonly core: Topology,
    readonly hosts: ComputeHost[],
  ) {}

  static async create(names: string[]): Promise<Fabric> {
    const made: { core?: Topology; hosts: ComputeHost[] } = { hosts: [] };
    try {
      const [core, ...hosts] = await Promise.all([
        Topology.create({ bridge: 'core' }),
        ...names.map(async (name, i) => {
          const h = await ComputeHost.create(name, i + 1);
          made.hosts.push(h);
          return h;
        }),
      ]);
      made.core = core;
      if (!core) throw new Error('no core topology');
      const fabric = new Fabric(core, hosts);
      for (const h of hosts) {
        const port = `up-${h.name}`;
        await ipMust(['-n', core.hostNs, 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'uplink', 'netns', h.ns]);
        await ipMust(['-n', core.hostNs, 'link', 'set', port, 'master', core.bridge]);
        await ipMust(['-n', core.hostNs, 'link', 'set', port, 'up']);
        await ipMust(['-n', h.ns, 'addr', 'add', `10.255.0.${h.index}/24`, 'dev', 'uplink']);
        await ipMust(['-n', h.ns, 'link', 'set', 'uplink', 'up']);
        for (const other of hosts) {
          if (other !== h) await ipMust(['-n', h.ns, 'route', 'add', other.subnet, 'via', `10.255.0.${other.index}`]);
        }
      }
      return fabric;
    } catch (err) {
      await Promise.all([made.core?.destroy(), ...made.hosts.map((h) => h.destroy())]);
      throw err;
    }
  }

  host(name: string): ComputeHost {
    const h = this.hosts.find((x) => x.name === name);
    if (!h) throw new Error(`no host ${name}`);
    return h;
  }

  async destroy(): Promise<void> {
    await Promise.all([...this.hosts.map((h) => h.destroy()), this.core.destroy()]);
  }
}

async function ipMust(args: string[]): Promise<void> {
  const r = await run([IP, ...args], { timeoutMs: 15_000 });
  if (r.code !== 0) throw new Error(`ip ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
}

/** A TCP probe (connect and an echo round trip), for probe tables. */
export const reach =
  (from: NsInstance, ip: string, port: number, timeoutMs = PROBE_MS) =>
  (): Promise<boolean> =>
    tcpConnect(from, ip, port, { timeoutMs });

/** A TCP probe with a short timeout, for `within()` loops. */
export const quick = (from: NsInstance, ip: string, port: number) => reach(from, ip, port, FAST_MS);

/** Runs the probes at once; returns name -> outcome (compare the whole table, so a failure shows every path). */
export async function probeTable(table: Record<string, () => Promise<boolean>>): Promise<Record<string, boolean>> {
  const entries = Object.entries(table);
  const results = await Promise.all(entries.map(([, probe]) => probe()));
  return Object.fromEntries(entries.map(([name], i) => [name, results[i] as boolean]));
}

/**
 * Probes the table until it gives `expected` or `withinMs` ran out, and
 * returns the last outcome (compare it with `expected`, so a failure shows
 * every path). For states that must settle, not for transients.
 */
export async function settledTable(
  table: Record<string, () => Promise<boolean>>,
  expected: Record<string, boolean>,
  withinMs = 3000,
): Promise<Record<string, boolean>> {
  const deadline = performance.now() + withinMs;
  for (;;) {
    const got = await probeTable(table);
    if (JSON.stringify(got) === JSON.stringify(expected) || performance.now() > deadline) return got;
  }
}

// ---------------------------------------------------------------- processes

export interface VirtfwProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  /** the API's URL (api), or the agent's /metrics base URL (agent with --listen) */
  readonly url: string;
  /** everything it printed so far (pino JSON lines on stdout, and stderr) */
  log(): string;
  /** the JSON log records whose msg is `msg` */
  records(msg: string): Record<string, unknown>[];
  /** resolves once its output matches `re` */
  waitForLog(re: RegExp, timeoutMs?: number): Promise<void>;
  running(): boolean;
  kill9(): Promise<void>;
  stop(): Promise<void>;
}

const processes = new Set<VirtfwProcess>();
/** Every process started, for failure reports. */
const history: VirtfwProcess[] = [];

/**
 * What every process started since `since` (an index into the history; see
 * `processCount()`) did: PID, exit status, the last lines of its log.
 */
export function processReport(since = 0, lines = 25): string {
  return history
    .slice(since)
    .map((p) => {
      const state = p.running() ? 'running' : `exited (${p.child.exitCode ?? p.child.signalCode})`;
      const tail = p.log().trimEnd().split('\n').slice(-lines).join('\n');
      return `==== ${p.name} pid ${p.pid} ${state}\n${tail}`;
    })
    .join('\n');
}

export function processCount(): number {
  return history.length;
}

/** Stops (SIGTERM, then SIGKILL after 5 s) every process this module started that still runs, by PID. */
export async function stopAllProcesses(): Promise<void> {
  await Promise.all([...processes].map((p) => p.stop()));
}

export interface StartOptions {
  /** resolves once the output matches this */
  waitFor: RegExp;
  /** extra environment, e.g. a PATH with a RestoreWrapper first */
  env?: Record<string, string>;
  timeoutMs?: number;
  name?: string;
}

/** Starts `node dist/cli/main.js <args>` in the root namespace, tracked by PID. */
export async function startVirtfwProcess(args: string[], opts: StartOptions): Promise<VirtfwProcess> {
  // `env` execs node, so the PID recorded is node's own.
  const envArgs = opts.env ? ['/usr/bin/env', ...Object.entries(opts.env).map(([k, v]) => `${k}=${v}`)] : [];
  const child = spawnTracked(null, [...envArgs, process.execPath, CLI, ...args]);
  const pid = child.pid;
  if (pid === undefined) throw new Error(`virtfw ${args.join(' ')} did not start`);
  let output = '';
  const watchers = new Set<() => void>();
  const onData = (d: Buffer) => {
    output += d.toString();
    for (const w of [...watchers]) w();
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  const name = opts.name ?? `virtfw ${args[0] ?? ''}`;
  const waitForLog = (re: RegExp, timeoutMs = 20_000) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (re.test(output)) {
          done();
          resolve();
        } else if (child.exitCode !== null || child.signalCode !== null) {
          done();
          reject(new Error(`${name} has exited (${child.exitCode ?? child.signalCode}) without printing ${re}:\n${output}`));
        }
      };
      const onExit = (code: number | null, sig: string | null) => {
        done();
        reject(new Error(`${name} exited (${code ?? sig}) before printing ${re}:\n${output}`));
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${name}: no ${re} after ${timeoutMs} ms:\n${output}`));
      }, timeoutMs);
      function done() {
        clearTimeout(timer);
        watchers.delete(check);
        child.off('exit', onExit);
      }
      watchers.add(check);
      child.once('exit', onExit);
      check();
    });
  const proc: VirtfwProcess = {
    name,
    child,
    pid,
    url: '',
    log: () => output,
    records(msg: string) {
      const out: Record<string, unknown>[] = [];
      for (const line of output.split('\n')) {
        if (!line.startsWith('{')) continue;
        try {
          const rec = JSON.parse(line) as Record<string, unknown>;
          if (rec.msg === msg) out.push(rec);
        } catch {
          /* a partial line */
        }
      }
      return out;
    },
    waitForLog,
    running: () => child.exitCode === null && child.signalCode === null,
    async kill9() {
      await stopChild(child, 'SIGKILL', 0);
      processes.delete(proc);
    },
    async stop() {
      await stopChild(child, 'SIGTERM', 5000);
      processes.delete(proc);
    },
  };
  processes.add(proc);
  history.push(proc);
  try {
    await waitForLog(opts.waitFor, opts.timeoutMs ?? 30_000);
  } catch (err) {
    await proc.stop();
    throw err;
  }
  const url = /"url":"([^"]+)"/.exec(output)?.[1] ?? '';
  return Object.assign(proc, { url });
}

/** `virtfw api --db DB --listen 127.0.0.1:<free port>`; resolves once it listens. */
export async function startApi(db: string, name = 'api'): Promise<VirtfwProcess> {
  const port = await freePort();
  return startVirtfwProcess(['api', '--db', db, '--listen', `127.0.0.1:${port}`], { waitFor: /"msg":"API listening"/, name });
}

export interface AgentOptions {
  host: string;
  db: string;
  netns: string;
  /** --resync-interval (seconds); default 60 (the product's) */
  resyncSeconds?: number;
  /** directory put first on the agent's PATH (a RestoreWrapper) */
  pathFirst?: string;
}

/**
 * `virtfw agent --host H --db DB --netns NS --listen 127.0.0.1:<free port>`;
 * resolves once the host is in sync and /metrics listens.
 */
export async function startAgent(o: AgentOptions): Promise<VirtfwProcess> {
  const port = await freePort();
  const args = ['agent', '--host', o.host, '--db', o.db, '--netns', o.netns, '--listen', `127.0.0.1:${port}`];
  if (o.resyncSeconds !== undefined) args.push('--resync-interval', String(o.resyncSeconds));
  const env = o.pathFirst ? { PATH: `${o.pathFirst}${delimiter}${process.env.PATH ?? ''}` } : undefined;
  return startVirtfwProcess(args, { waitFor: /"msg":"agent metrics listening"/, name: `agent ${o.host}`, ...(env ? { env } : {}) });
}

/** Sum of a Prometheus metric's samples (every label set) at `<url>/metrics`; 0 when absent. */
export async function metric(url: string, name: string): Promise<number> {
  const res = await fetch(`${url}/metrics`);
  if (!res.ok) throw new Error(`GET ${url}/metrics: ${res.status}`);
  const text = await res.text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^(\S+?)(?:\{[^}]*\})? (\S+)$/.exec(line);
    if (m && m[1] === name) sum += Number(m[2]);
  }
  return sum;
}

// ------------------------------------------------------------------ clients

/** The `virtfw` CLI against an API, in the root namespace. */
export async function virtfw(url: string, args: string[], opts: { allowFail?: boolean } = {}): Promise<ExecResult> {
  const r = await run([process.execPath, CLI, ...args, '--url', url], { timeoutMs: 30_000 });
  if (r.code !== 0 && !opts.allowFail) throw new Error(`virtfw ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r;
}

export async function virtfwJson<T>(url: string, args: string[]): Promise<T> {
  return JSON.parse((await virtfw(url, [...args, '--json'])).stdout) as T;
}

export interface HttpResult<T = Record<string, unknown>> {
  status: number;
  body: T;
}

/** One REST call (no token: the API runs loopback-only, as admin). */
export async function http<T = Record<string, unknown>>(url: string, method: string, path: string, body?: unknown): Promise<HttpResult<T>> {
  const res = await fetch(`${url}${path}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : {}) as T };
}

/** A REST call that must answer `status` (default: any 2xx). */
export async function httpOk<T = Record<string, unknown>>(url: string, method: string, path: string, body?: unknown, status?: number): Promise<T> {
  const r = await http<T>(url, method, path, body);
  if (status === undefined ? r.status >= 300 : r.status !== status) {
    throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  }
  return r.body;
}

/** Creates a group and returns its id. */
export async function createGroup(url: string, name: string): Promise<string> {
  const body = await httpOk<{ security_group: { id: string } }>(url, 'POST', '/v2.0/security-groups', { security_group: { name } }, 201);
  return body.security_group.id;
}

/** An ingress TCP rule (from anywhere, or from a remote group). */
export async function allowTcp(url: string, group: string, port: number, remoteGroup?: string): Promise<string> {
  const rule: Record<string, unknown> = { security_group_id: group, direction: 'ingress', protocol: 'tcp', port_range_min: port, port_range_max: port };
  if (remoteGroup) rule.remote_group_id = remoteGroup;
  const body = await httpOk<{ security_group_rule: { id: string } }>(url, 'POST', '/v2.0/security-group-rules', { security_group_rule: rule }, 201);
  return body.security_group_rule.id;
}

export async function createInstance(url: string, vm: Vm, groups: string[]): Promise<string> {
  const body = await httpOk<{ instance: { id: string } }>(
    url,
    'POST',
    '/v2.0/instances',
    { instance: { name: vm.name, host: vm.host.name, security_groups: groups, network_info: vm.nwinfo } },
    201,
  );
  return body.instance.id;
}

export async function setGroups(url: string, instanceId: string, groups: string[]): Promise<{ revision_number: number; security_groups: string[] }> {
  const body = await httpOk<{ instance: { revision_number: number; security_groups: string[] } }>(url, 'PUT', `/v2.0/instances/${instanceId}`, {
    instance: { security_groups: groups },
  });
  return body.instance;
}

// ------------------------------------------------------- restore stand-in

const WRAPPED_TOOLS = ['iptables-restore', 'ip6tables-restore'] as const;

/** The first `tool` on PATH that is not in `skip`. */
export function whichTool(tool: string, skip?: string): string {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
    if (!dir || dir === skip) continue;
    const path = join(dir, tool);
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      /* not here */
    }
  }
  throw new Error(`${tool} not found on PATH`);
}

export class RestoreWrapper {
  readonly dir: string;

  constructor() {
    this.dir = mkdtempSync(join(tmpdir(), 'virtfw-wrap-'));
    for (const tool of WRAPPED_TOOLS) {
      // The real tool by its own name (not `readlink -f`): xtables-nft-multi picks the tool from argv[0].
      const real = whichTool(tool, this.dir);
      const script = [
        '#!/bin/sh',
        `# Test stand-in for ${tool}: the real one unless ./fail or ./delay say otherwise.`,
        `dir='${this.dir}'`,
        `if [ -e "$dir/fail" ]; then cat "$dir/fail" >&2; exit 1; fi`,
        `if [ -e "$dir/delay" ]; then echo $$ > "$dir/running.${tool}.$$"; sleep "$(cat "$dir/delay")"; fi`,
        `exec '${real}' "$@"`,
        '',
      ].join('\n');
      writeFileSync(join(this.dir, tool), script, { mode: 0o755 });
    }
  }

  /** Every restore sleeps this long first (null: no delay). */
  setDelay(seconds: number | null): void {
    this.#setFile('delay', seconds === null ? null : String(seconds));
  }

  /** Every restore fails with this message on stderr (null: no failure). */
  setFailure(message: string | null): void {
    this.#setFile('fail', message === null ? null : `${message}\n`);
  }

  /** Delayed restores seen so far: tool and PID (the PID stays the real tool's after exec). */
  started(): { tool: string; pid: number }[] {
    return readdirSync(this.dir)
      .map((f) => /^running\.(.+)\.(\d+)$/.exec(f))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => ({ tool: m[1] as string, pid: Number(m[2]) }));
  }

  /** Waits until no delayed restore started through this wrapper still runs; SIGKILLs (by PID) any left after `timeoutMs`. */
  async settle(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const alive = this.started().filter((s) => pidAlive(s.pid));
      if (alive.length === 0) return;
      if (Date.now() > deadline) {
        for (const s of alive) {
          try {
            process.kill(s.pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
        return;
      }
      await sleep(50);
    }
  }

  /** Forgets the markers of restores that have finished. */
  clearMarkers(): void {
    for (const s of this.started()) if (!pidAlive(s.pid)) rmSync(join(this.dir, `running.${s.tool}.${s.pid}`), { force: true });
  }

  #setFile(name: string, content: string | null): void {
    const path = join(this.dir, name);
    if (content === null) {
      if (existsSync(path)) unlinkSync(path);
    } else {
      writeFileSync(path, content);
    }
  }

  async remove(): Promise<void> {
    this.setFailure(null);
    this.setDelay(null);
    await this.settle();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Polls `check` until it returns true; rejects after `timeoutMs` with `what`. Resolves with the ms it took. */
export async function until(timeoutMs: number, check: () => Promise<boolean> | boolean, what: string, everyMs = 50): Promise<number> {
  const started = performance.now();
  for (;;) {
    if (await check()) return performance.now() - started;
    if (performance.now() - started > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(everyMs);
  }
}
