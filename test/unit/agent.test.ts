/**
 * HostAgent over a real (SQLite, in memory) store and the fake kernel: which
 * driver call each committed change becomes, batching, retries, catch-up.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HostAgent } from '../../src/agent/agent.js';
import { IptablesFirewallDriver } from '../../src/drivers/iptables-driver.js';
import { FakeKernel } from '../../src/kernel/fake-kernel.js';
import { openStore } from '../../src/store/open.js';
import type { Store } from '../../src/store/store.js';
import { vif } from '../helpers/scenarios.js';

const P = 'demo';

/** Records every driver method call by name. */
function spy(driver: IptablesFirewallDriver): { calls: string[]; driver: IptablesFirewallDriver } {
  const calls: string[] = [];
  const proxy = new Proxy(driver, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        const first = args[0] as { id?: string } | string | undefined;
        calls.push(`${String(prop)}(${typeof first === 'string' ? first : (first?.id ?? '')})`);
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  return { calls, driver: proxy };
}

describe('HostAgent', () => {
  let store: Store;
  let kernel: FakeKernel;
  let calls: string[];
  let agent: HostAgent;
  let web: string;

  const restores = () => kernel.callCount('iptables-restore') + kernel.callCount('ip6tables-restore');

  beforeEach(async () => {
    store = openStore(':memory:');
    await store.migrate();
    web = (await store.createSecurityGroup(P, { name: 'web' })).id;
    await store.createRule(P, { securityGroupId: web, direction: 'ingress', protocol: 'tcp', portRangeMin: 80 });
    await store.createInstance(P, { id: 'i1', name: 'i1', host: 'h1', securityGroups: [web], networkInfo: [vif(10)] });
    await store.createInstance(P, { id: 'i2', name: 'i2', host: 'h1', securityGroups: [web], networkInfo: [vif(11)] });
    await store.createInstance(P, { id: 'elsewhere', name: 'x', host: 'h2', securityGroups: [web], networkInfo: [vif(12)] });
    kernel = new FakeKernel();
    const real = new IptablesFirewallDriver(store, { runner: kernel, allowSameNetTraffic: false });
    const s = spy(real);
    calls = s.calls;
    agent = new HostAgent({ store, driver: s.driver, host: 'h1', coalesceMs: 5, pollIntervalMs: 60_000, resyncIntervalMs: 0 });
    await agent.start();
  });

  afterEach(async () => {
    await agent.stop();
    await store.close();
  });

  it('starts with a full sync of its own host only, in one deferred apply', () => {
    expect(calls.filter((c) => c.startsWith('prepareInstanceFilter'))).toEqual(['prepareInstanceFilter(i1)', 'prepareInstanceFilter(i2)']);
    expect(restores()).toBe(2); // one per family
    expect(agent.status().instances.map((s) => [s.instanceId, s.filtered])).toEqual([
      ['i1', true],
      ['i2', true],
    ]);
    expect(kernel.save('4')).not.toContain('tap12');
  });

  it('reports its status to the store, and reports a failure at once', async () => {
    const reported = await store.getAgentStatus('h1');
    expect(reported?.instances.map((i) => i.instanceId)).toEqual(['i1', 'i2']);
    expect(reported?.appliedSeq).toBe(agent.appliedSeq);
    kernel.failNext('iptables-restore', 'line 9: injected');
    await store.createRule(P, { securityGroupId: web, direction: 'ingress', protocol: 'tcp', portRangeMin: 7 });
    await new Promise((r) => setTimeout(r, 50));
    expect((await store.getAgentStatus('h1'))?.lastError).toMatch(/injected/);
  });

  it('a rule change becomes refreshSecurityGroupRules', async () => {
    calls.length = 0;
    await store.createRule(P, { securityGroupId: web, direction: 'ingress', protocol: 'udp', portRangeMin: 53 });
    await agent.idle();
    expect(calls).toContain(`refreshSecurityGroupRules(${web})`);
    expect(kernel.save('4')).toContain('--dport 53');
    expect(agent.appliedSeq).toBe(await store.latestChangeSeq());
  });

  it('an instance created here is set up, prepared and applied; one elsewhere only refreshes members', async () => {
    calls.length = 0;
    await store.createInstance(P, { id: 'i3', name: 'i3', host: 'h1', securityGroups: [web], networkInfo: [vif(13)] });
    await store.createInstance(P, { id: 'far', name: 'far', host: 'h9', securityGroups: [web], networkInfo: [vif(14)] });
    await agent.idle();
    expect(calls).toEqual(
      expect.arrayContaining(['setupBasicFiltering(i3)', 'prepareInstanceFilter(i3)', 'applyInstanceFilter(i3)', `refreshSecurityGroupMembers(${web})`]),
    );
    expect(calls.some((c) => c.endsWith('(far)'))).toBe(false);
  });

  it('a membership change refreshes members and the instance', async () => {
    const db = (await store.createSecurityGroup(P, { name: 'db' })).id;
    await agent.idle();
    calls.length = 0;
    await store.updateInstance(null, 'i1', { securityGroups: [web, db] });
    await agent.idle();
    expect(calls).toEqual(expect.arrayContaining([`refreshSecurityGroupMembers(${db})`, 'refreshInstanceSecurityRules(i1)']));
    expect(calls).not.toContain('prepareInstanceFilter(i1)');
  });

  it('an instance that moves away or is deleted is unfiltered', async () => {
    calls.length = 0;
    await store.updateInstance(null, 'i1', { host: 'h2' });
    await store.deleteInstance(null, 'i2');
    await agent.idle();
    expect(calls).toEqual(expect.arrayContaining(['unfilterInstance(i1)', 'unfilterInstance(i2)']));
    expect(agent.status().instances).toEqual([]);
  });

  it('a burst of changes is one apply', async () => {
    await agent.idle();
    const before = restores();
    await Promise.all(
      Array.from({ length: 20 }, (_, i) => store.createRule(P, { securityGroupId: web, direction: 'ingress', protocol: 'tcp', portRangeMin: 1000 + i })),
    );
    await agent.idle();
    expect(restores() - before).toBeLessThanOrEqual(4);
    expect(kernel.save('4')).toContain('--dport 1019');
  });

  it('a failed apply keeps its place in the log and is retried', async () => {
    const seq = agent.appliedSeq;
    kernel.failNext('iptables-restore', 'line 2: injected');
    await store.createRule(P, { securityGroupId: web, direction: 'ingress', protocol: 'tcp', portRangeMin: 4444 });
    await new Promise((r) => setTimeout(r, 50));
    expect(agent.status().lastError).toMatch(/injected/);
    expect(agent.appliedSeq).toBe(seq);
    await new Promise((r) => setTimeout(r, 800)); // first retry after 500 ms
    await agent.idle();
    expect(agent.status().lastError).toBeNull();
    expect(kernel.save('4')).toContain('--dport 4444');
    expect(agent.appliedSeq).toBe(await store.latestChangeSeq());
  });

  it('a full resync repairs a chain flushed behind its back', async () => {
    const chain = (await import('../../src/render/names.js')).Names;
    const names = new chain('virtfw');
    await kernel.run(['iptables-restore', '--noflush'], { input: `*filter\n:${names.instanceIngress('i1')} - [0:0]\nCOMMIT\n` });
    expect(kernel.chain('4', names.instanceIngress('i1'))).toEqual([]);
    agent.resync();
    await agent.idle();
    expect(kernel.chain('4', names.instanceIngress('i1'))?.length).toBeGreaterThan(0);
  });
});
