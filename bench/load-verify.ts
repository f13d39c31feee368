/**
 * "Nothing missed": once every agent has applied the last change, each
 * agent's state is compared with a fresh render of its host from the
 * database (an IptablesFirewallDriver over the store, on a FakeKernel, with
 * the options `virtfw agent` uses, every instance of the host prepared in one
 * deferred apply):
 *
 * The fresh render uses dist/ (the agents' code), see load-product.ts.
 *
 * 1. instances: the agent's `/status` lists exactly the host's instances in
 *    the store (`instancesOnHost`), each `filtered` with no `lastError`;
 * 2. counts: `virtfw_rules{table}` from the agent's `/metrics` equals the
 *    fresh render's `ruleCounts()` (ipv4, ipv6, bridge), and
 *    `virtfw_applied_change_seq` is the latest seq;
 * 3. exact (when the agent can show its ruleset): the agent's full ruleset
 *    equals the fresh one, chain by chain. Sources, first that answers:
 *    `GET /ruleset` on the agent (not in the product yet: the proposed
 *    endpoint returning `{ appliedSeq, ipv4, ipv6, bridge }` from
 *    `driver.renderRuleset()`), or, with `--exact`, the bench's dump driver
 *    (SIGUSR2), which also gives the agent's in-memory kernel: then the
 *    kernel's tables are compared with the fresh render's kernel too.
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import type { Store } from '../src/store/store.js';
import type { RunningAgent } from './load-agents.js';
import type { Product } from './load-product.js';
import { sleep } from './load-stats.js';

/** ruleCounts(): per table (ipv4, ipv6, bridge, and whatever the driver adds) */
type Counts = Record<string, number>;
/** renderRuleset(): iptables-restore input per family (ipv4, ipv6), other scripts (bridge, ...) */
type Ruleset = Record<string, string>;

export interface HostCheck {
  host: string;
  ok: boolean;
  problems: string[];
  instancesInStore: number;
  instancesAtAgent: number;
  notFiltered: number;
  agentCounts: Counts;
  freshCounts: Counts;
  appliedSeqMetric: number | null;
  applyErrors: number | null;
  driftRepairs: number | null;
  exact: 'equal' | 'different' | 'unavailable';
  exactSource: string | null;
  kernel: 'equal' | 'different' | 'unavailable';
  /** dispatch chains whose rules are the same as the fresh render's in another order (not a problem) */
  orderOnly: string[];
}

export interface FreshRender {
  counts: Counts;
  ruleset: Ruleset;
  kernel: { ipv4: string; ipv6: string };
  ids: string[];
}

export async function renderFresh(product: Product, store: Store, host: string): Promise<FreshRender> {
  const kernel = new product.FakeKernel();
  const driver = new product.IptablesFirewallDriver(store, { ...product.agentDriverOptions, runner: kernel });
  const rows = await store.instancesOnHost(host);
  driver.filterDeferApplyOn();
  for (const row of rows) {
    const instance = { id: row.id, name: row.name, host: row.host };
    await driver.setupBasicFiltering(instance, row.networkInfo);
    await driver.prepareInstanceFilter(instance, row.networkInfo);
  }
  await driver.filterDeferApplyOff();
  return { counts: driver.ruleCounts() as Counts, ruleset: driver.renderRuleset() as Ruleset, kernel: { ipv4: kernel.save('4'), ipv6: kernel.save('6') }, ids: rows.map((r) => r.id).sort() };
}

async function getJson(url: string): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(30_000) });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, body };
}

/** `name{labels} value` lines of a Prometheus text page. */
export function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const m = /^(\S+?)\s+(\S+)$/.exec(line.trim());
    if (m) out.set(m[1] ?? '', Number(m[2]));
  }
  return out;
}

/**
 * iptables-restore input or iptables-save output as chain -> its rules in
 * order (`-A`), plus `-I` commands (hooks) under `<chain> -I`. Chain order and
 * packet counters do not matter; rule order within a chain does.
 */
export function chainsOf(text: string): Map<string, string[]> {
  const chains = new Map<string, string[]>();
  const add = (chain: string, rule: string | null) => {
    let list = chains.get(chain);
    if (!list) chains.set(chain, (list = []));
    if (rule !== null) list.push(rule);
  };
  for (const line of text.split('\n')) {
    if (line.startsWith(':')) add(line.slice(1).split(' ')[0] ?? '', null);
    else if (line.startsWith('-A ')) {
      const [, chain = '', ...rule] = line.split(' ');
      add(chain, rule.join(' '));
    } else if (line.startsWith('-I ')) {
      const [, chain = '', ...rule] = line.split(' ');
      add(`${chain} -I`, rule.join(' '));
    }
  }
  return chains;
}

/**
 * Chains whose rules each match a different device (one jump per tap): their
 * order cannot change what a packet meets, and it follows the order the
 * instances were prepared in, which differs between an agent that has been
 * following changes and a fresh render.
 */
const DISPATCH_CHAIN = /-(from|to)-vm$/;

export interface ChainDiff {
  /** chains that differ (missing, extra, other rules, or order where order matters) */
  problems: string[];
  /** dispatch chains with the same rules in another order */
  orderOnly: string[];
}

/** Differences between two chain maps (problems described, at most `limit`). */
export function diffChains(agent: Map<string, string[]>, fresh: Map<string, string[]>, limit = 5): ChainDiff {
  const problems: string[] = [];
  const orderOnly: string[] = [];
  let count = 0;
  const note = (s: string) => {
    if (count++ < limit) problems.push(s);
  };
  for (const [chain, rules] of fresh) {
    const have = agent.get(chain);
    if (!have) note(`chain ${chain} missing at the agent (${rules.length} rules)`);
    else if (have.join('\n') !== rules.join('\n')) {
      // A rule's identity hash (its comment) depends on where it sits in its chain, so compare without it.
      const sameSet = [...have].map(withoutHash).sort().join('\n') === [...rules].map(withoutHash).sort().join('\n');
      if (sameSet && DISPATCH_CHAIN.test(chain.replace(/ -I$/, ''))) orderOnly.push(chain);
      else {
        const i = rules.findIndex((r, k) => have[k] !== r);
        note(`chain ${chain} differs${sameSet ? ' in order only' : ''}: agent ${have.length} rules, fresh ${rules.length}; first difference at rule ${i + 1}: agent "${have[i] ?? ''}" / fresh "${rules[i] ?? ''}"`);
      }
    }
  }
  for (const [chain, rules] of agent) if (!fresh.has(chain)) note(`chain ${chain} only at the agent (${rules.length} rules)`);
  if (count > limit) problems.push(`... ${count - limit} more`);
  return { problems, orderOnly };
}

function withoutHash(rule: string): string {
  return rule.replace(/-m comment --comment "[^"]*:[0-9a-z]+\.\d+" /, '');
}

/**
 * A script (the bridge table's nft script, ipset input) as its sorted lines,
 * the elements inside `{ ... }` sorted too: the order of VIFs, sets and set
 * elements does not matter.
 */
function sortedLines(text: string): string {
  return text
    .split('\n')
    .map((l) => l.trim().replace(/\{ ([^{}]*) \}/g, (_m, inner: string) => `{ ${inner.split(', ').sort().join(', ')} }`))
    .filter((l) => l !== '')
    .sort()
    .join('\n');
}

function compareRulesets(agent: Ruleset, fresh: Ruleset, orderOnly: Set<string>): string[] {
  const problems: string[] = [];
  for (const key of new Set([...Object.keys(agent), ...Object.keys(fresh)])) {
    const a = agent[key] ?? '';
    const f = fresh[key] ?? '';
    if (key === 'ipv4' || key === 'ipv6') {
      const d = diffChains(chainsOf(a), chainsOf(f));
      for (const c of d.orderOnly) orderOnly.add(`${key} ${c}`);
      for (const p of d.problems) problems.push(`${key} ruleset: ${p}`);
    } else {
      const al = sortedLines(a).split('\n');
      const fl = sortedLines(f).split('\n');
      const fs = new Set(fl);
      const as = new Set(al);
      const onlyAgent = al.filter((l) => !fs.has(l));
      const onlyFresh = fl.filter((l) => !as.has(l));
      if (onlyAgent.length || onlyFresh.length || al.length !== fl.length) {
        problems.push(`${key} ruleset differs: ${onlyAgent.length} lines only at the agent (e.g. "${(onlyAgent[0] ?? '').slice(0, 160)}"), ${onlyFresh.length} only in the fresh render (e.g. "${(onlyFresh[0] ?? '').slice(0, 160)}"), ${al.length} vs ${fl.length} lines`);
      }
    }
  }
  return problems;
}

interface Dump {
  ruleset: Ruleset;
  counts: Counts;
  kernel: { ipv4: string; ipv6: string } | null;
}

/**
 * What the agent holds: from `GET /ruleset` if the agent serves it (the
 * proposed endpoint: `{ host, appliedSeq, ipv4, ipv6, bridge, ..., kernel?:
 * { ipv4, ipv6 } }`, kernel with --dry-run), else from the dump driver.
 */
async function agentRuleset(agent: RunningAgent, url: string, latestSeq: number, problems: string[]): Promise<(Dump & { source: string }) | null> {
  const endpoint = await getJson(url).catch(() => ({ status: 0, body: null }));
  if (endpoint.status === 200 && endpoint.body && typeof (endpoint.body as Ruleset).ipv4 === 'string') {
    const { host: _h, appliedSeq, kernel, ...ruleset } = endpoint.body as Ruleset & { host?: string; appliedSeq?: number; kernel?: Dump['kernel'] };
    if (appliedSeq !== undefined && appliedSeq !== latestSeq) problems.push(`/ruleset appliedSeq ${appliedSeq} != latest ${latestSeq}`);
    return { ruleset: ruleset as Ruleset, counts: {}, kernel: kernel ?? null, source: 'GET /ruleset' };
  }
  const dump = await dumpOf(agent);
  return dump ? { ...dump, source: 'dump driver' } : null;
}

async function dumpOf(agent: RunningAgent): Promise<Dump | null> {
  const file = agent.spec.dumpFile;
  if (!file || agent.exited) return null;
  rmSync(file, { force: true });
  process.kill(agent.pid, 'SIGUSR2');
  for (let i = 0; i < 200 && !existsSync(file); i++) await sleep(50);
  if (!existsSync(file)) return null;
  return JSON.parse(readFileSync(file, 'utf8')) as Dump;
}

export async function checkHost(product: Product, store: Store, agent: RunningAgent, latestSeq: number): Promise<HostCheck> {
  const host = agent.spec.host;
  const base = `http://127.0.0.1:${agent.spec.port}`;
  const problems: string[] = [];
  const fresh = await renderFresh(product, store, host);

  // 1. instances
  const status = await getJson(`${base}/status`);
  const s = (status.body as { status?: { instances?: { instanceId: string; filtered: boolean; lastError: string | null }[]; appliedSeq?: number; lastError?: string | null } }).status;
  const atAgent = s?.instances ?? [];
  const agentIds = new Set(atAgent.map((i) => i.instanceId));
  const freshIds = new Set(fresh.ids);
  const missing = fresh.ids.filter((id) => !agentIds.has(id));
  const extra = [...agentIds].filter((id) => !freshIds.has(id));
  if (missing.length) problems.push(`${missing.length} instances of the host not at the agent (e.g. ${missing.slice(0, 3).join(', ')})`);
  if (extra.length) problems.push(`${extra.length} instances at the agent not on the host (e.g. ${extra.slice(0, 3).join(', ')})`);
  const notFiltered = atAgent.filter((i) => !i.filtered || i.lastError).length;
  if (notFiltered) problems.push(`${notFiltered} instances not filtered or with an error`);
  if (s?.lastError) problems.push(`agent lastError: ${s.lastError}`);
  if (s?.appliedSeq !== latestSeq) problems.push(`/status appliedSeq ${s?.appliedSeq} != latest ${latestSeq}`);

  // 2. counts
  const metricsRes = await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(30_000) });
  const metrics = parseMetrics(await metricsRes.text());
  const m = (k: string) => metrics.get(k) ?? null;
  const agentCounts: Counts = {};
  for (const [key, value] of metrics) {
    const t = /^virtfw_rules\{table="([^"]+)"\}$/.exec(key)?.[1];
    if (t) agentCounts[t] = value;
  }
  for (const t of Object.keys(fresh.counts)) {
    if (agentCounts[t] === undefined) problems.push(`virtfw_rules{table="${t}"} missing from /metrics`);
    else if (agentCounts[t] !== fresh.counts[t]) problems.push(`${t} rules: agent ${agentCounts[t]}, fresh render ${fresh.counts[t]}`);
  }
  const appliedSeqMetric = m('virtfw_applied_change_seq');
  if (appliedSeqMetric !== latestSeq) problems.push(`virtfw_applied_change_seq ${appliedSeqMetric} != latest ${latestSeq}`);

  // 3. exact
  let exact: HostCheck['exact'] = 'unavailable';
  let kernel: HostCheck['kernel'] = 'unavailable';
  const orderOnly = new Set<string>();
  const dump = await agentRuleset(agent, `${base}/ruleset`, latestSeq, problems);
  if (dump?.kernel) {
    const diffs: string[] = [];
    for (const fam of ['ipv4', 'ipv6'] as const) {
      const d = diffChains(chainsOf(dump.kernel[fam]), chainsOf(fresh.kernel[fam]));
      for (const c of d.orderOnly) orderOnly.add(`${fam} kernel ${c}`);
      diffs.push(...d.problems.map((p) => `${fam} kernel: ${p}`));
    }
    kernel = diffs.length ? 'different' : 'equal';
    problems.push(...diffs);
  }
  const ruleset = dump?.ruleset ?? null;
  const exactSource = dump?.source ?? null;
  if (ruleset) {
    const diffs = compareRulesets(ruleset, fresh.ruleset as Ruleset, orderOnly);
    exact = diffs.length ? 'different' : 'equal';
    problems.push(...diffs);
  }

  return {
    host,
    ok: problems.length === 0,
    problems,
    instancesInStore: fresh.ids.length,
    instancesAtAgent: atAgent.length,
    notFiltered,
    agentCounts,
    freshCounts: fresh.counts,
    appliedSeqMetric,
    applyErrors: m('virtfw_apply_errors_total'),
    driftRepairs: m('virtfw_drift_repairs_total'),
    exact,
    exactSource,
    kernel,
    orderOnly: [...orderOnly],
  };
}
