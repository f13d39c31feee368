/**
 * npm run bench: the driver core on a real kernel, in a namespace of its own.
 *
 * Workload: 1,000 instances in 10 groups (100 members each); every group has
 * 10 rules, one of which names another group as its source. All instances are
 * prepared in one deferred apply; then one member joins a group that another
 * group's rule names, and refreshSecurityGroupMembers is timed.
 *
 *   npm run bench -- --instances 1000 --member-match expand|ipset
 */
import { spawnSync } from 'node:child_process';
import { IptablesFirewallDriver } from '../src/drivers/iptables-driver.js';
import type { MemberMatch } from '../src/render/iptables-rules.js';
import type { NetworkInfo, SecurityGroupRule } from '../src/model/types.js';
import { InMemoryVirtAPI } from '../src/virtapi/memory.js';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i === -1 ? fallback : (process.argv[i + 1] ?? fallback);
}

const INSTANCES = Number(arg('instances', '1000'));
const GROUPS = 10;
const memberMatch = arg('member-match', 'expand') as MemberMatch;

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

function countRules(ns: string): { v4: number; v6: number; bridge: number } {
  const count = (argv: string[], re: RegExp) =>
    spawnSync('ip', ['netns', 'exec', ns, ...argv], { encoding: 'utf8', maxBuffer: 1 << 28 }).stdout.split('\n').filter((l) => re.test(l)).length;
  return {
    v4: count(['iptables-save'], /^-A /),
    v6: count(['ip6tables-save'], /^-A /),
    bridge: count(['nft', 'list', 'table', 'bridge', 'virtfw'], /^\t\t(?!type )\S/),
  };
}

async function main(): Promise<void> {
  const ns = `vfwbench${process.pid}`;
  spawnSync('ip', ['netns', 'add', ns]);
  try {
    const api = new InMemoryVirtAPI();
    for (let g = 0; g < GROUPS; g++) api.putGroup({ id: `g${g}` }, groupRules(g));
    for (let i = 0; i < INSTANCES; i++) api.putInstance({ id: `i${i}` }, netinfo(i), [`g${i % GROUPS}`]);
    const driver = new IptablesFirewallDriver(api, { netns: ns, memberMatch, allowSameNetTraffic: false });

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
    const counts = countRules(ns);

    // One new member of g1, which the rules of g0 name as their source.
    api.putInstance({ id: 'extra' }, netinfo(INSTANCES + 5), ['g1']);
    t = performance.now();
    await driver.refreshSecurityGroupMembers('g1');
    const memberMs = performance.now() - t;
    const memberLines = driver.lastApplyStats?.inputLines ?? 0;

    t = performance.now();
    api.addRule('g3', { protocol: 'tcp', portRangeMin: 9000 });
    await driver.refreshSecurityGroupRules('g3');
    const ruleMs = performance.now() - t;

    const rssMb = Math.max(process.memoryUsage().rss, rss0) / 2 ** 20;
    const result = {
      instances: INSTANCES,
      groups: GROUPS,
      rulesPerGroup: 10,
      membersPerGroup: INSTANCES / GROUPS,
      memberMatch,
      prepareAllSeconds: +(prepareMs / 1000).toFixed(3),
      modelSeconds: +(modelMs / 1000).toFixed(3),
      kernelRules: counts,
      memberRefreshMs: +memberMs.toFixed(1),
      memberRefreshRestoreLines: memberLines,
      ruleRefreshMs: +ruleMs.toFixed(1),
      rssMb: +rssMb.toFixed(1),
    };
    console.log(JSON.stringify(result, null, 2));
  } finally {
    spawnSync('ip', ['netns', 'del', ns]);
  }
}

await main();
