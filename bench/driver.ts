/**
 * npm run bench: the driver core on a real kernel, in a namespace of its own.
 *
 * Workload: 1,000 instances in 10 groups (100 members each); every group has
 * 10 rules, one of which names another group as its source. All instances are
 * prepared in one deferred apply; then one member joins a group that another
 * group's rule names, and refreshSecurityGroupMembers is timed (the median of
 * MEMBER_EVENTS joins), then one rule is added to a group.
 *
 *   npm run bench                     every variant, each in a child process of its own, as a table
 *   npm run bench -- --variant iptables-ipset|iptables-expand|nftables [--instances N]   one, as JSON
 */
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { IptablesFirewallDriver } from '../src/drivers/iptables-driver.js';
import { NftablesFirewallDriver } from '../src/drivers/nftables-driver.js';
import type { MemberMatch } from '../src/render/iptables-rules.js';
import type { NetworkInfo, SecurityGroupRule } from '../src/model/types.js';
import { InMemoryVirtAPI } from '../src/virtapi/memory.js';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i === -1 ? fallback : (process.argv[i + 1] ?? fallback);
}

const INSTANCES = Number(arg('instances', '1000'));
const GROUPS = 10;
const MEMBER_EVENTS = 5;
const VARIANTS = ['iptables-ipset', 'iptables-expand', 'nftables'] as const;
type Variant = (typeof VARIANTS)[number];
const variant = arg('variant', '') as Variant | '';
if (variant && !VARIANTS.includes(variant)) {
  console.error(`--variant: ${JSON.stringify(variant)} is not one of ${VARIANTS.join(', ')}`);
  process.exit(2);
}
if (!Number.isInteger(INSTANCES) || INSTANCES < 10) {
  console.error('--instances: a whole number of at least 10');
  process.exit(2);
}

function netinfo(i: number): NetworkInfo {
  const hi = Math.floor(i / 250);
  const lo = (i % 250) + 2;
  const mac = `fa:16:3e:${hi.toString(16).padStart(2, '0')}:${(lo >> 8).toString(16).padStart(2, '0')}:${(lo & 255).toString(16).padStart(2, '0')}`;
  return [
    {
      address: mac,
      devname: `tap${i}`,
      network: {
        subnets: [
          { cidr: '10.0.0.0/16', gateway: { address: '10.0.0.1' }, ips: [{ address: `10.0.${hi}.${lo}` }], meta: { dhcp_server: '10.0.0.1' } },
          { cidr: '2001:db8::/64', gateway: { address: '2001:db8::1' }, ips: [{ address: `2001:db8::${hi.toString(16)}:${lo.toString(16)}` }] },
        ],
      },
    },
  ];
}

function groupRules(g: number): SecurityGroupRule[] {
  return [
    { protocol: 'tcp', portRangeMin: 22, remoteIpPrefix: '192.0.2.0/24' },
    { protocol: 'tcp', portRangeMin: 80 },
    { protocol: 'tcp', portRangeMin: 443 },
    { protocol: 'tcp', portRangeMin: 8000 + g, portRangeMax: 8100 + g },
    { protocol: 'udp', portRangeMin: 53 },
    { protocol: 'icmp', portRangeMin: 8 },
    { ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 443 },
    { ethertype: 'IPv6', protocol: 'icmp' },
    { direction: 'egress' },
    { protocol: 'tcp', portRangeMin: 5000 + g, remoteGroupId: `g${(g + 1) % GROUPS}` },
  ];
}

/**
 * Rules in the namespace, counted asynchronously (as a service's own work
 * would run): the driver's background work after its first apply (the
 * nftables driver's look for other firewalls, the kept processes' warm-up)
 * runs meanwhile, not inside the member events timed next.
 */
async function countRules(ns: string): Promise<{ v4: number; v6: number; inet: number; bridge: number }> {
  const output = async (argv: string[]) =>
    (await execFileAsync('ip', ['netns', 'exec', ns, ...argv], { encoding: 'utf8', maxBuffer: 1 << 28 }).catch((err: { stdout?: string }) => err)).stdout ?? '';
  const count = async (argv: string[], re: RegExp) => (await output(argv)).split('\n').filter((l) => re.test(l)).length;
  // nft rules are the lines of a chain's body after its type/policy line; set and map bodies are elements, not rules.
  const nftRules = async (family: string) => {
    const out = await output(['nft', 'list', 'table', family, 'virtfw']);
    let inChain = false;
    let n = 0;
    for (const line of out.split('\n')) {
      if (/^\tchain /.test(line)) inChain = true;
      else if (/^\t(set|map) /.test(line)) inChain = false;
      else if (inChain && /^\t\t(?!type )\S/.test(line)) n += 1;
    }
    return n;
  };
  return {
    v4: await count(['iptables-save'], /^-A /),
    v6: await count(['ip6tables-save'], /^-A /),
    inet: await nftRules('inet'),
    bridge: await nftRules('bridge'),
  };
}

const execFileAsync = promisify(execFile);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function one(v: Variant): Promise<void> {
  const ns = `vfwbench${process.pid}`;
  spawnSync('ip', ['netns', 'add', ns]);
  try {
    const api = new InMemoryVirtAPI();
    for (let g = 0; g < GROUPS; g++) api.putGroup({ id: `g${g}` }, groupRules(g));
    for (let i = 0; i < INSTANCES; i++) api.putInstance({ id: `i${i}` }, netinfo(i), [`g${i % GROUPS}`]);
    const options = { netns: ns, allowSameNetTraffic: false };
    const driver =
      v === 'nftables'
        ? new NftablesFirewallDriver(api, options)
        : new IptablesFirewallDriver(api, { ...options, memberMatch: v.slice('iptables-'.length) as MemberMatch });

    const rss0 = process.memoryUsage().rss;
    let t = performance.now();
    driver.filterDeferApplyOn();
    for (let i = 0; i < INSTANCES; i++) {
      const inst = { id: `i${i}` };
      await driver.setupBasicFiltering(inst, netinfo(i));
      await driver.prepareInstanceFilter(inst, netinfo(i));
    }
    const modelMs = performance.now() - t;
    await driver.filterDeferApplyOff();
    const prepareMs = performance.now() - t;
    const counts = await countRules(ns);
    if (driver instanceof NftablesFirewallDriver) await driver.conflictsChecked();

    // New members of g1, which the rules of g0 name as their source, one at a time.
    const memberTimes: number[] = [];
    for (let k = 0; k < MEMBER_EVENTS; k++) {
      api.putInstance({ id: `extra${k}` }, netinfo(INSTANCES + 5 + k), ['g1']);
      t = performance.now();
      await driver.refreshSecurityGroupMembers('g1');
      memberTimes.push(performance.now() - t);
    }
    const memberMs = median(memberTimes);
    const memberLines = driver.lastApplyStats?.inputLines ?? 0;

    t = performance.now();
    api.addRule('g3', { protocol: 'tcp', portRangeMin: 9000 });
    await driver.refreshSecurityGroupRules('g3');
    const ruleMs = performance.now() - t;

    const rssMb = Math.max(process.resourceUsage().maxRSS * 1024, rss0) / 2 ** 20;
    await driver.close();
    const result = {
      variant: v,
      instances: INSTANCES,
      groups: GROUPS,
      rulesPerGroup: 10,
      membersPerGroup: INSTANCES / GROUPS,
      prepareAllSeconds: +(prepareMs / 1000).toFixed(3),
      modelSeconds: +(modelMs / 1000).toFixed(3),
      kernelRules: counts,
      memberRefreshMs: +memberMs.toFixed(1),
      memberRefreshSamplesMs: memberTimes.map((x) => +x.toFixed(1)),
      memberRefreshInputLines: memberLines,
      ruleRefreshMs: +ruleMs.toFixed(1),
      rssMb: +rssMb.toFixed(1),
    };
    console.log(JSON.stringify(result, null, 2));
  } finally {
    spawnSync('ip', ['netns', 'del', ns]);
  }
}

/** Every variant in a child process of its own (fresh namespace, its own peak RSS), side by side. */
function all(): void {
  const self = fileURLToPath(import.meta.url);
  const rows: Record<string, unknown>[] = [];
  for (const v of VARIANTS) {
    process.stderr.write(`bench: ${v}, ${INSTANCES} instances...\n`);
    const child = spawnSync(process.execPath, [...process.execArgv, self, '--variant', v, '--instances', String(INSTANCES)], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    if (child.status !== 0) throw new Error(`${v} failed (exit ${child.status})`);
    rows.push(JSON.parse(child.stdout) as Record<string, unknown>);
  }
  const cell = (r: Record<string, unknown>, k: string) => {
    const v = r[k];
    return typeof v === 'object' && v !== null ? Object.entries(v).map(([a, b]) => `${a} ${String(b)}`).join(', ') : String(v);
  };
  const keys: [string, string][] = [
    ['prepareAllSeconds', `prepare ${INSTANCES} instances, one deferred apply (s)`],
    ['modelSeconds', '… of which queuing the calls (s)'],
    ['kernelRules', 'kernel rules after it'],
    ['memberRefreshMs', `one member joins a source group (ms, median of ${MEMBER_EVENTS})`],
    ['memberRefreshInputLines', '… lines of iptables-restore or nft input (ipset restore not counted)'],
    ['ruleRefreshMs', 'one rule added to a group (ms)'],
    ['rssMb', 'peak RSS (MB)'],
  ];
  console.log(`| figure | ${VARIANTS.join(' | ')} |`);
  console.log(`|---|${VARIANTS.map(() => '---:').join('|')}|`);
  for (const [k, label] of keys) console.log(`| ${label} | ${rows.map((r) => cell(r, k)).join(' | ')} |`);
}

if (variant) await one(variant);
else all();
