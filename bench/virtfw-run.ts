/**
 * The virtfw side of `npm run bench:compare`: one measured run of one of
 * virtfw's kernel drivers on the shared Neutron workload, in a network
 * namespace the caller made (and deletes). Run as its own process so that its
 * peak RSS is its own; prints exactly one JSON line on stdout (progress goes
 * to stderr).
 *
 *   tsx bench/virtfw-run.ts --workload w.json --ns NAME [--driver iptables] --member-match ipset|expand [--tools-only]
 *   tsx bench/virtfw-run.ts --workload w.json --ns NAME --driver nftables [--tools-only]
 *
 * --driver iptables (default): IptablesFirewallDriver with the given memberMatch.
 * --driver nftables: NftablesFirewallDriver (member sets are always nft named
 * sets: --member-match does not apply and is ignored).
 *
 * Phases mirror /work/shared/bench/neutron/harness.py (see bench/README.md):
 *   prepare_all   filterDeferApplyOn(); setupBasicFiltering + prepareInstanceFilter
 *                 per port; await filterDeferApplyOff()
 *   member_add    per workload event: the member is put in the VirtAPI (untimed),
 *                 then refreshSecurityGroupMembers(group) is timed; median
 *   rule_add      per event: the rule is added (untimed), refreshSecurityGroupRules
 *                 (group) is timed; median
 *   remove_all    filterDeferApplyOn(); unfilterInstance per port; filterDeferApplyOff()
 *   conntrack_cleanup  await driver.connectionCleanupDone() (the conntrack -D of
 *                 the removed instances, which the driver runs in the background)
 *
 * --tools-only: render the same prepared host with a FakeKernel runner
 * (`renderRuleset()`; iptables: plus the FakeKernel's `ipset restore` input
 * when the ruleset has no ipset key; nftables: its one `nft` script) and time
 * only the real tools loading it into the (fresh, empty) namespace.
 */
import { execFile, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { promisify } from 'node:util';
import { readFileSync } from 'node:fs';
import { IptablesFirewallDriver } from '../src/drivers/iptables-driver.js';
import { NftablesFirewallDriver } from '../src/drivers/nftables-driver.js';
import { NetnsRunner, ProcessRunner, type CommandResult, type CommandRunner, type RunOptions } from '../src/kernel/exec.js';
import { FakeKernel } from '../src/kernel/fake-kernel.js';
import type { SecurityGroup, SecurityGroupRule, ProviderRule } from '../src/model/types.js';
import type { MemberMatch } from '../src/render/iptables-rules.js';
import type { InstanceRecord, MemberAddressList, VirtAPI } from '../src/virtapi/virtapi.js';
import { buildHost, readWorkload } from './neutron-workload.js';
import { medianOf } from './report.js';

// ---------------------------------------------------------------- arguments

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i === -1 ? undefined : process.argv[i + 1];
}

const USAGE = 'usage: tsx bench/virtfw-run.ts --workload FILE --ns NAME [--driver iptables|nftables] [--member-match ipset|expand] [--tools-only]';
const workloadPath = arg('workload');
const ns = arg('ns');
const driverArg = arg('driver') ?? 'iptables';
const memberMatchArg = arg('member-match') ?? 'expand';
const toolsOnly = process.argv.includes('--tools-only');
const PREFIX = 'virtfw';

if (!workloadPath || !ns) {
  console.error(USAGE);
  process.exit(2);
}
if (driverArg !== 'iptables' && driverArg !== 'nftables') {
  console.error(`--driver: ${driverArg} is not iptables or nftables`);
  process.exit(2);
}
if (memberMatchArg !== 'ipset' && memberMatchArg !== 'expand') {
  console.error(`--member-match: ${memberMatchArg} is not ipset or expand`);
  process.exit(2);
}
const driverKind: 'iptables' | 'nftables' = driverArg;
const memberMatch: MemberMatch = memberMatchArg;
const netns: string = ns;
/** what the run is called in logs and in its JSON */
const variant = driverKind === 'nftables' ? 'nftables' : memberMatch;

const log = (msg: string) => process.stderr.write(`[virtfw ${variant}${toolsOnly ? ' tools-only' : ''}] ${msg}\n`);
const execFileAsync = promisify(execFile);
const round = (x: number, digits = 6) => Number(x.toFixed(digits));

/** Either driver, constructed as production would (the runner is the only bench-specific part). */
type Driver = IptablesFirewallDriver | NftablesFirewallDriver;

function makeDriver(api: VirtAPI, runner: CommandRunner, inNetns: boolean): Driver {
  const common = { ...(inNetns ? { netns } : {}), allowSameNetTraffic: false, runner };
  return driverKind === 'nftables' ? new NftablesFirewallDriver(api, common) : new IptablesFirewallDriver(api, { ...common, memberMatch });
}

/** The options the driver was given, for the record. */
const driverOptions =
  driverKind === 'nftables'
    ? { driver: 'NftablesFirewallDriver', netns, allowSameNetTraffic: false, others: 'defaults (member sets are always nft named sets)' }
    : { driver: 'IptablesFirewallDriver', netns, memberMatch, allowSameNetTraffic: false, others: 'defaults' };

// ------------------------------------------------------- accounting helpers

interface ToolStat {
  calls: number;
  /** sum of the calls' durations (calls may overlap: the driver runs some tools side by side) */
  s: number;
  /** time at least one call of this tool was running */
  busy_s: number;
  input_lines: number;
}

type Interval = [number, number];

/** Total length of the union of intervals (ms). */
function unionMs(intervals: readonly Interval[]): number {
  const sorted = [...intervals].sort((a, b) => a[0] - b[0]);
  let total = 0;
  let cur: Interval | null = null;
  for (const [a, b] of sorted) {
    if (!cur || a > cur[1]) {
      if (cur) total += cur[1] - cur[0];
      cur = [a, b];
    } else if (b > cur[1]) cur[1] = b;
  }
  if (cur) total += cur[1] - cur[0];
  return total;
}

/** The tool a command runs, without the namespace wrapper (`ip netns exec NS`, `nsenter --net=... --`). */
function toolArgv(argv: readonly string[]): readonly string[] {
  if (argv[0] === 'ip' && argv[1] === 'netns' && argv[2] === 'exec') return argv.slice(4);
  if (argv[0] === 'nsenter') {
    const dashes = argv.indexOf('--');
    if (dashes !== -1) return argv.slice(dashes + 1);
    let i = 1;
    while (i < argv.length && (argv[i] ?? '').startsWith('-')) i++;
    return argv.slice(i);
  }
  return argv;
}

/**
 * The name a call is accounted under: the tool, with the subcommand for ipset
 * (`ipset restore`, `ipset list`) and nft (`nft -f` loads a script, `nft list`
 * reads), so listings are not counted as restores.
 */
function toolKey(cmd: readonly string[]): string {
  if (cmd[0] === 'ipset' && cmd[1]) return `ipset ${cmd[1]}`;
  if (cmd[0] === 'nft') {
    if (cmd.includes('-f')) return 'nft -f';
    const verb = cmd.slice(1).find((a) => !a.startsWith('-'));
    return verb ? `nft ${verb}` : 'nft';
  }
  return cmd[0] ?? '?';
}

interface Call {
  key: string;
  interval: Interval;
  inputLines: number;
}

/**
 * Wraps the real ProcessRunner (the driver's NetnsRunner adds the namespace
 * wrapper in front) and records every call per phase, as harness.py's
 * ExecRecorder does: tool, start and end, input lines.
 */
class TimingRunner implements CommandRunner {
  phase = 'setup';
  readonly calls = new Map<string, Call[]>();
  constructor(private readonly inner: CommandRunner) {}

  async run(argv: readonly string[], options?: RunOptions): Promise<CommandResult> {
    const phase = this.phase;
    const t0 = performance.now();
    try {
      return await this.inner.run(argv, options);
    } finally {
      const cmd = toolArgv(argv);
      const key = toolKey(cmd);
      const list = this.calls.get(phase) ?? [];
      list.push({ key, interval: [t0, performance.now()], inputLines: options?.input ? options.input.split('\n').filter((l) => l !== '').length : 0 });
      this.calls.set(phase, list);
    }
  }

  /**
   * A kept process (the nftables driver's `nft -i` for element changes):
   * recorded when started; what it does later is not a tool call, so its
   * time shows as js_s of the phases that use it.
   */
  start(argv: readonly string[]): ChildProcessWithoutNullStreams {
    const child = (this.inner.start as NonNullable<CommandRunner['start']>)(argv);
    const t0 = performance.now();
    const list = this.calls.get(this.phase) ?? [];
    list.push({ key: `${toolKey(toolArgv(argv))} (kept, started)`, interval: [t0, t0], inputLines: 0 });
    this.calls.set(this.phase, list);
    return child;
  }

  take(phase: string): Call[] {
    const list = this.calls.get(phase) ?? [];
    this.calls.delete(phase);
    return list;
  }
}

/** Times the VirtAPI reads (Neutron's harness excludes its fake-RPC time; we report ours). */
class TimedVirtAPI implements VirtAPI {
  seconds = 0;
  constructor(private readonly inner: Required<VirtAPI>) {}
  async #time<T>(fn: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      return await fn();
    } finally {
      this.seconds += (performance.now() - t0) / 1000;
    }
  }
  getInstanceSecurityGroups(id: string): Promise<SecurityGroup[]> {
    return this.#time(() => this.inner.getInstanceSecurityGroups(id));
  }
  getSecurityGroupRules(id: string): Promise<SecurityGroupRule[]> {
    return this.#time(() => this.inner.getSecurityGroupRules(id));
  }
  getSecurityGroupMembers(id: string): Promise<InstanceRecord[]> {
    return this.#time(() => this.inner.getSecurityGroupMembers(id));
  }
  getSecurityGroupMemberAddresses(id: string): Promise<MemberAddressList> {
    return this.#time(() => this.inner.getSecurityGroupMemberAddresses(id));
  }
  getProviderRules(): Promise<ProviderRule[]> {
    return this.#time(() => this.inner.getProviderRules());
  }
}

interface PhaseResult {
  wall_s: number;
  virtapi_s: number;
  /** time at least one tool was running */
  subprocess_s: number;
  /** wall - subprocess_s: time no tool was running (JavaScript: model, rendering, diffing; spawning) */
  js_s: number;
  /** time at least one of iptables-restore, ip6tables-restore, nft -f, ipset restore was running */
  restore_subprocess_s: number;
  restore_input_lines: number;
  subprocess: Record<string, ToolStat>;
  input_lines_last_apply?: number;
  /** the driver's lastApplyStats after the event (iptables: ApplyStats; nftables: NftApplyStats) */
  apply_stats?: Record<string, unknown> | null;
}

const isRestore = (key: string) => key.endsWith('-restore') || key === 'nft -f' || key === 'ipset restore';

function summarize(wall: number, virtapi: number, calls: readonly Call[]): PhaseResult {
  const byKey = new Map<string, Call[]>();
  for (const c of calls) {
    const list = byKey.get(c.key);
    if (list) list.push(c);
    else byKey.set(c.key, [c]);
  }
  const subprocess: Record<string, ToolStat> = {};
  for (const [key, list] of [...byKey].sort((a, b) => a[0].localeCompare(b[0]))) {
    subprocess[key] = {
      calls: list.length,
      s: round(list.reduce((n, c) => n + (c.interval[1] - c.interval[0]), 0) / 1000),
      busy_s: round(unionMs(list.map((c) => c.interval)) / 1000),
      input_lines: list.reduce((n, c) => n + c.inputLines, 0),
    };
  }
  const busy = unionMs(calls.map((c) => c.interval)) / 1000;
  const restore = calls.filter((c) => isRestore(c.key));
  return {
    wall_s: round(wall),
    virtapi_s: round(virtapi),
    subprocess_s: round(busy),
    js_s: round(wall - busy),
    restore_subprocess_s: round(unionMs(restore.map((c) => c.interval)) / 1000),
    restore_input_lines: restore.reduce((n, c) => n + c.inputLines, 0),
    subprocess,
  };
}

// ------------------------------------------------------------ kernel counts

/**
 * Runs a small shell pipeline in the namespace; only its (tiny) output enters
 * this process. Asynchronous, as a service's own work would be: the driver's
 * background work (its start-up look for other firewalls, the kept `nft -i`'s
 * warm-up) runs while the counts are taken, not in the next timed phase.
 */
async function nsOutput(pipeline: string): Promise<string> {
  try {
    const { stdout } = await execFileAsync('ip', ['netns', 'exec', netns, 'sh', '-c', pipeline], { encoding: 'utf8', maxBuffer: 1 << 26 });
    return stdout.trim();
  } catch (err) {
    return String((err as { stdout?: string }).stdout ?? '').trim(); // grep -c exits 1 when it counts 0
  }
}

async function nsCount(pipeline: string): Promise<number> {
  const n = Number.parseInt(await nsOutput(pipeline), 10);
  return Number.isFinite(n) ? n : 0;
}

/** What `nft -j list table <family> virtfw` holds (all 0 when the table does not exist). */
export interface NftTableCounts {
  /** rule objects, in every chain */
  rules: number;
  chains: number;
  /** rules in the instance chains (inet: vm-in-*, vm-out-* shared by instances with the same rules, vm-spoof-*) */
  instance_rules: number;
  instance_chains: number;
  sets: number;
  /** elements of the named sets (inet: remote groups' member addresses) */
  set_elements: number;
  maps: number;
  /** elements of the maps (inet: the dispatch verdict maps) */
  map_elements: number;
}

export interface KernelCounts {
  rules_v4: number;
  rules_v6: number;
  /** rule objects in the chains of `table bridge virtfw` (`nft -j`) */
  bridge_rules: number;
  /** elements of the named sets and maps of `table bridge virtfw` */
  bridge_set_elements: number;
  /** `table inet virtfw` (the nftables driver's filter table) */
  inet: NftTableCounts;
  ipset_sets: number;
  ipset_members: number;
}

/** The nftables driver's instance chains (src/render/nftables.ts). */
const INSTANCE_CHAIN_RE = '^vm-(in|out|spoof)-';

/** Counts `nft -j` output (Debian's python3; only the counts enter this process). No single quotes: it goes in sh -c '...'. */
const NFT_COUNTS_PY = [
  'import json, re, sys',
  'try:',
  '    objs = json.load(sys.stdin)["nftables"]',
  'except Exception:',
  '    objs = []',
  'inst = re.compile(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] else None',
  'c = dict(rules=0, chains=0, instance_rules=0, instance_chains=0, sets=0, set_elements=0, maps=0, map_elements=0)',
  'for o in objs:',
  '    if "rule" in o:',
  '        c["rules"] += 1',
  '        if inst and inst.match(o["rule"].get("chain", "")): c["instance_rules"] += 1',
  '    elif "chain" in o:',
  '        c["chains"] += 1',
  '        if inst and inst.match(o["chain"].get("name", "")): c["instance_chains"] += 1',
  '    elif "set" in o:',
  '        c["sets"] += 1',
  '        c["set_elements"] += len(o["set"].get("elem", []))',
  '    elif "map" in o:',
  '        c["maps"] += 1',
  '        c["map_elements"] += len(o["map"].get("elem", []))',
  'print(json.dumps(c))',
].join('\n');

const EMPTY_NFT: NftTableCounts = { rules: 0, chains: 0, instance_rules: 0, instance_chains: 0, sets: 0, set_elements: 0, maps: 0, map_elements: 0 };

async function nftTableCounts(family: 'inet' | 'bridge', instanceRe = ''): Promise<NftTableCounts> {
  const out = await nsOutput(`nft -j list table ${family} ${PREFIX} 2>/dev/null | /usr/bin/python3 -c '${NFT_COUNTS_PY}' '${instanceRe}'`);
  try {
    return { ...EMPTY_NFT, ...(JSON.parse(out) as Partial<NftTableCounts>) };
  } catch {
    return { ...EMPTY_NFT };
  }
}

async function kernelCounts(): Promise<KernelCounts> {
  const bridge = await nftTableCounts('bridge');
  return {
    rules_v4: await nsCount(`iptables-save | grep -c '^-A '`),
    rules_v6: await nsCount(`ip6tables-save | grep -c '^-A '`),
    bridge_rules: bridge.rules,
    bridge_set_elements: bridge.set_elements + bridge.map_elements,
    inet: await nftTableCounts('inet', INSTANCE_CHAIN_RE),
    ipset_sets: await nsCount(`ipset save 2>/dev/null | grep -c '^create '`),
    ipset_members: await nsCount(`ipset save 2>/dev/null | grep -c '^add '`),
  };
}

function peakRssKb(): { maxrss_kb: number; vmhwm_kb: number | null } {
  const status = readFileSync('/proc/self/status', 'utf8');
  const m = /^VmHWM:\s+(\d+) kB/m.exec(status);
  return { maxrss_kb: process.resourceUsage().maxRSS, vmhwm_kb: m?.[1] ? Number(m[1]) : null };
}

function errorText(err: unknown): string {
  const text = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return text.length > 1500 ? `${text.slice(0, 1500)}...` : text;
}

// ---------------------------------------------------------------- full run

/**
 * An idle pause before a timed phase of events, so that work the bench's own
 * bookkeeping queued (the kernel counts; status() and ruleCounts() over every
 * instance, whose code the JIT then compiles on a background thread) ends
 * before the clock starts instead of inside the first events: on two cores
 * such a compile slows the change and the answer of the kept tool process.
 */
const SETTLE_MS = 200;
const settle = () => new Promise<void>((resolve) => setTimeout(resolve, SETTLE_MS));

async function measuredRun(): Promise<Record<string, unknown>> {
  const workload = readWorkload(workloadPath as string);
  const host = buildHost(workload);
  const api = new TimedVirtAPI(host.api);
  const runner = new TimingRunner(new ProcessRunner());
  const driver = makeDriver(api, runner, true);
  const P = host.ports.length;
  const phases: Record<string, unknown> = {};
  const counts: Record<string, KernelCounts> = {};
  const checks: Record<string, unknown> = {};
  const result: Record<string, unknown> = {
    side: 'virtfw',
    driver: driverKind,
    member_match: driverKind === 'nftables' ? 'nft named sets' : memberMatch,
    ports: P,
    netns,
    workload: host.summary,
    options: driverOptions,
    phases,
    counts,
    checks,
  };

  const timed = async (phase: string, fn: () => Promise<void>): Promise<PhaseResult> => {
    runner.phase = phase;
    api.seconds = 0;
    const t0 = performance.now();
    await fn();
    const wall = (performance.now() - t0) / 1000;
    runner.phase = 'idle';
    const virtapi = api.seconds;
    return summarize(wall, virtapi, runner.take(phase));
  };

  let failedPhase = 'prepare_all';
  try {
    log(`prepare_all: ${P} ports`);
    phases.prepare_all = await timed('prepare_all', async () => {
      driver.filterDeferApplyOn();
      for (const { instance, networkInfo } of host.ports) {
        await driver.setupBasicFiltering(instance, networkInfo);
        await driver.prepareInstanceFilter(instance, networkInfo);
      }
      await driver.filterDeferApplyOff();
    });
    const peakAfter: Record<string, number> = {};
    result.peak_rss_kb_after_phase = peakAfter;
    peakAfter.prepare_all = peakRssKb().maxrss_kb;
    counts.after_prepare = await kernelCounts();
    checks.filtered_instances = driver.status().filter((s) => s.filtered).length;
    checks.driver_rule_counts = driver.ruleCounts();
    checks.prepare_all_apply_stats = driver.lastApplyStats ? { ...driver.lastApplyStats } : null;
    if (driver instanceof NftablesFirewallDriver) {
      await driver.conflictsChecked(); // its start-up look, run after the first apply (while the counts above were taken)
      checks.conflicts_found = driver.conflicts;
    }

    failedPhase = 'member_add';
    await settle();
    const memberSamples: PhaseResult[] = [];
    for (const event of host.memberAdds) {
      event.apply();
      const s = await timed('member_add', () => driver.refreshSecurityGroupMembers(event.groupId));
      s.input_lines_last_apply = driver.lastApplyStats?.inputLines ?? 0;
      s.apply_stats = driver.lastApplyStats ? { ...driver.lastApplyStats } : null;
      memberSamples.push(s);
    }
    phases.member_add = { median_wall_s: round(medianOf(memberSamples.map((s) => s.wall_s))), samples: memberSamples };
    log(`member_add: ${JSON.stringify(memberSamples.map((s) => s.wall_s))}`);
    peakAfter.member_add = peakRssKb().maxrss_kb;

    failedPhase = 'rule_add';
    await settle();
    const ruleSamples: PhaseResult[] = [];
    for (const event of host.ruleAdds) {
      event.apply();
      const s = await timed('rule_add', () => driver.refreshSecurityGroupRules(event.groupId));
      s.input_lines_last_apply = driver.lastApplyStats?.inputLines ?? 0;
      s.apply_stats = driver.lastApplyStats ? { ...driver.lastApplyStats } : null;
      ruleSamples.push(s);
    }
    phases.rule_add = { median_wall_s: round(medianOf(ruleSamples.map((s) => s.wall_s))), samples: ruleSamples };
    log(`rule_add: ${JSON.stringify(ruleSamples.map((s) => s.wall_s))}`);
    peakAfter.rule_add = peakRssKb().maxrss_kb;
    counts.after_changes = await kernelCounts();

    failedPhase = 'remove_all';
    await settle();
    checks.calls_outside_phases = runner.take('idle').length; // expected 0
    const removeAll = await timed('remove_all', async () => {
      driver.filterDeferApplyOn();
      for (const { instance, networkInfo } of host.ports) await driver.unfilterInstance(instance, networkInfo);
      await driver.filterDeferApplyOff();
    });
    // The driver forgets the removed instances' connections in the background,
    // after their rules are gone; timed on its own, as Neutron's harness does.
    const cleanup = await timed('conntrack_cleanup', () => driver.connectionCleanupDone());
    const conntrack = cleanup.subprocess.conntrack ?? { calls: 0, s: 0, busy_s: 0, input_lines: 0 };
    // The first instance's cleanup commands start as remove_all's apply ends,
    // before its clock stops (they are recorded under remove_all once they end,
    // after that phase was summed) or between the phases: counted here; they
    // overlap the start of the conntrack_cleanup window.
    const between = [...runner.take('remove_all'), ...runner.take('idle')].filter((c) => c.key === 'conntrack').length;
    phases.remove_all = {
      ...removeAll,
      conntrack_s: cleanup.wall_s,
      conntrack_calls: conntrack.calls + between,
      conntrack_calls_started_between_phases: between,
      conntrack_cleanup: cleanup,
      excl_conntrack_s: removeAll.wall_s,
    };
    log(`remove_all: ${removeAll.wall_s}s; conntrack cleanup ${cleanup.wall_s}s wall (${conntrack.calls + between} calls)`);
    peakAfter.remove_all = peakRssKb().maxrss_kb;
    counts.after_remove = await kernelCounts();
  } catch (err) {
    result.failed = `${failedPhase}: ${errorText(err)}`;
    log(`FAILED in ${failedPhase}: ${errorText(err)}`);
    if (!counts.after_prepare) counts.after_failure = await kernelCounts();
  }
  await driver.close();
  const rss = peakRssKb();
  result.peak_rss_kb = rss.maxrss_kb;
  result.vmhwm_kb = rss.vmhwm_kb;
  return result;
}

// ---------------------------------------------------------------- tools only

/** The real tool that loads each kind of rendered input, with the driver's own arguments. */
function toolFor(key: string): string[] | null {
  if (key === 'ipv4') return ['iptables-restore', '--wait=10', '--noflush'];
  if (key === 'ipv6') return ['ip6tables-restore', '--wait=10', '--noflush'];
  if (key === 'bridge' || key === 'nft') return ['nft', '-f', '-'];
  if (/ipset|sets?$/i.test(key)) return ['ipset', 'restore'];
  return null;
}

/** Sets must exist before rules name them; the bridge table goes first, as in the driver's apply. */
const ORDER = (key: string) => (/ipset|sets?$/i.test(key) ? 0 : key === 'bridge' || key === 'nft' ? 1 : key === 'ipv4' ? 2 : 3);

async function toolsOnlyRun(): Promise<Record<string, unknown>> {
  const workload = readWorkload(workloadPath as string);
  const host = buildHost(workload);
  const fake = new FakeKernel();
  const driver = makeDriver(host.api, fake, false);
  const result: Record<string, unknown> = {
    side: 'virtfw-tools-only',
    driver: driverKind,
    member_match: driverKind === 'nftables' ? 'nft named sets' : memberMatch,
    ports: host.ports.length,
    netns,
  };
  try {
    driver.filterDeferApplyOn();
    for (const { instance, networkInfo } of host.ports) {
      await driver.setupBasicFiltering(instance, networkInfo);
      await driver.prepareInstanceFilter(instance, networkInfo);
    }
    await driver.filterDeferApplyOff();
  } catch (err) {
    result.failed = `render with FakeKernel: ${errorText(err)}`;
    return result;
  }
  const inputs = new Map<string, string>();
  for (const [key, value] of Object.entries(driver.renderRuleset() as Record<string, unknown>)) {
    if (typeof value === 'string' && value.trim() !== '') inputs.set(key, value);
  }
  const notes: string[] = [];
  if (driverKind === 'iptables' && memberMatch === 'ipset' && ![...inputs.keys()].some((k) => ORDER(k) === 0)) {
    const scripts = fake.ipsetScripts.filter((s) => s.trim() !== '');
    if (scripts.length) {
      inputs.set('ipset (FakeKernel ipsetScripts)', scripts.join('\n'));
      notes.push(`renderRuleset() has no ipset key; used ${scripts.length} ipset restore input(s) the driver gave the FakeKernel`);
    } else {
      notes.push('renderRuleset() has no ipset key and the driver ran no `ipset restore`: no ipset input to load');
    }
  }
  if (driverKind === 'nftables') {
    // The tools-only input should be what the driver's own first apply wrote (one transaction).
    const applied = fake.nftScripts.filter((t) => t.trim() !== '');
    const lines = (t: string) => t.split('\n').filter((l) => l.trim() !== '').sort().join('\n');
    result.driver_nft_transactions = applied.length;
    result.same_as_driver_apply = applied.length === 1 && lines(applied[0] ?? '') === lines(inputs.get('nft') ?? '');
    if (!result.same_as_driver_apply) notes.push(`renderRuleset().nft differs from the ${applied.length} nft -f input(s) the driver gave the FakeKernel in prepare_all`);
  }
  const real = new NetnsRunner(netns, new ProcessRunner());
  const tools: Record<string, { argv: string[]; s: number; input_lines: number; rc: number | null; stderr?: string }> = {};
  let total = 0;
  let failed: string | null = null;
  for (const [key, text] of [...inputs].sort((a, b) => ORDER(a[0]) - ORDER(b[0]))) {
    const argv = toolFor(key);
    if (!argv) {
      notes.push(`renderRuleset() key ${key} has no known tool; not loaded`);
      continue;
    }
    const t0 = performance.now();
    const r = await real.run(argv, { input: text, timeoutMs: 600_000 });
    const s = (performance.now() - t0) / 1000;
    total += s;
    tools[key] = { argv, s: round(s), input_lines: text.split('\n').filter((l) => l !== '').length, rc: r.code };
    if (r.code !== 0) {
      tools[key].stderr = r.stderr.trim().slice(0, 800);
      failed ??= `${argv[0]} exited ${r.code}: ${r.stderr.trim().split('\n').slice(0, 3).join(' | ').slice(0, 400)}`;
    }
  }
  result.tools = tools;
  result.tools_only_s = round(total);
  result.counts = await kernelCounts();
  if (notes.length) result.notes = notes;
  if (failed) result.failed = failed;
  log(`tools_only: ${round(total, 3)}s ${failed ? `FAILED ${failed}` : ''}`);
  return result;
}

// ---------------------------------------------------------------------- main

if (!spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.split('\n').some((l) => l.split(' ')[0] === netns)) {
  console.error(`network namespace ${netns} does not exist (the caller creates and deletes it)`);
  process.exit(2);
}
const out = toolsOnly ? await toolsOnlyRun() : await measuredRun();
process.stdout.write(`${JSON.stringify(out)}\n`);
