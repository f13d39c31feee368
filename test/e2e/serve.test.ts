/**
 * End to end: `virtfw serve` runs in the host namespace of a bridge topology
 * (embedded SQLite), driven only through the `virtfw` CLI. Real packets prove
 * that rules, membership changes, provider rules and deletions take effect
 * within 1 s, and that after `kill -9` and a restart the same ruleset is in
 * force and nothing is lost.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, ensureBuilt, startVirtfw, within, type Server } from '../helpers/cli.js';
import { Lab, normaliseSave, type Vm } from '../helpers/fixtures.js';
import { tcpConnect } from '../helpers/probe.js';
import type { Instance as NsInstance } from '../helpers/topology.js';

const PORT = 18775;
const HOST = 'compute1';
const FAST = 300; // probe timeout: several tries fit in the 1 s budget

describe('virtfw serve, end to end through the CLI', () => {
  let lab: Lab;
  let dir: string;
  let server: Server;
  let a: Vm;
  let b: Vm;
  let c: Vm;
  let outside: NsInstance;
  const groups: Record<string, string> = {};
  const instances: Record<string, string> = {};

  const v = (...args: string[]) => cli(lab.hostNs, [...args, '--url', `http://127.0.0.1:${PORT}`]);
  const json = async <T>(...args: string[]): Promise<T> => JSON.parse((await v(...args, '--json')).stdout) as T;
  const reach = (from: NsInstance, ip: string, port: number) => () => tcpConnect(from, ip, port, { timeoutMs: FAST });
  const serve = () =>
    startVirtfw(lab.hostNs, ['serve', '--db', join(dir, 'virtfw.db'), '--listen', `127.0.0.1:${PORT}`, '--host', HOST]);
  const netinfo = (vm: Vm) => JSON.stringify(vm.nwinfo);

  beforeAll(async () => {
    ensureBuilt();
    dir = mkdtempSync(join(tmpdir(), 'virtfw-e2e-'));
    lab = await Lab.create();
    a = await lab.vm('a', 10);
    b = await lab.vm('b', 11);
    c = await lab.vm('c', 12);
    outside = await lab.host('x', 'tap-x', 'fa:16:3e:00:00:99', ['10.0.0.99/24']);
    await lab.serve(a, b, c);
    server = await serve();
  }, 60_000);

  afterAll(async () => {
    await server?.stop();
    await lab?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it('creates groups, rules and instances through the CLI; the kernel follows within 1 s', async () => {
    groups.web = (await json<{ id: string }>('group', 'create', 'web')).id;
    groups.db = (await json<{ id: string }>('group', 'create', 'db')).id;
    await v('rule', 'create', '--group', groups.web, '--protocol', 'tcp', '--port', '80');
    await v('rule', 'create', '--group', groups.db, '--protocol', 'tcp', '--port', '8000', '--remote-group', groups.web);
    instances.a = (await json<{ id: string }>('instance', 'create', '--name', 'a', '--host', HOST, '--group', groups.web, '--network-info', netinfo(a))).id;
    instances.b = (await json<{ id: string }>('instance', 'create', '--name', 'b', '--host', HOST, '--group', groups.db, '--network-info', netinfo(b))).id;
    // c gets no group: it joins the project's default group.
    instances.c = (await json<{ id: string; security_groups: string[] }>('instance', 'create', '--name', 'c', '--host', HOST, '--network-info', netinfo(c))).id;

    expect(await within(1000, true, reach(outside, a.ip4, 80), 'outside -> a:80 (web allows 80)')).toBeLessThan(1000);
    await within(1000, false, reach(outside, a.ip4, 81), 'outside -> a:81 (no rule)');
    await within(1000, true, reach(a, b.ip4, 8000), 'a -> b:8000 (db allows web members)');
    await within(1000, false, reach(c, b.ip4, 8000), 'c -> b:8000 (c is not in web)');
    await within(1000, false, reach(outside, c.ip4, 80), 'outside -> c:80 (default group: members only)');

    const status = await json<{ instances: { instanceId: string; filtered: boolean }[] }>('status');
    expect(status.instances.filter((s) => s.filtered).map((s) => s.instanceId).sort()).toEqual(Object.values(instances).sort());
  });

  it('a membership change reaches the rules that name the group within 1 s', async () => {
    await v('instance', 'update', instances.c as string, '--group', groups.web as string);
    const ms = await within(1000, true, reach(c, b.ip4, 8000), 'c -> b:8000 after c joined web');
    expect(ms).toBeLessThan(1000);
    await v('instance', 'update', instances.c as string, '--group', groups.db as string);
    await within(1000, false, reach(c, b.ip4, 8000), 'c -> b:8000 after c left web');
  });

  it('provider rules drop traffic every group allows, and lifting them restores it, within 1 s', async () => {
    const rule = await json<{ id: string }>('provider-rule', 'create', '--cidr', '10.0.0.99/32', '--protocol', 'tcp');
    await within(1000, false, reach(outside, a.ip4, 80), 'outside -> a:80 under a provider drop');
    await within(1000, true, reach(b, a.ip4, 80), 'b -> a:80 is not dropped by it');
    await v('provider-rule', 'delete', rule.id);
    await within(1000, true, reach(outside, a.ip4, 80), 'outside -> a:80 after the provider rule is gone');
  });

  it('deleting a rule and an instance takes effect within 1 s', async () => {
    const rules = await json<{ id: string; port_range_min: number | null }[]>('rule', 'list', '--group', groups.web as string);
    const http = rules.find((r) => r.port_range_min === 80);
    expect(http).toBeDefined();
    await v('rule', 'delete', http?.id as string);
    await within(1000, false, reach(outside, a.ip4, 80), 'outside -> a:80 after its rule was deleted');
    await v('rule', 'create', '--group', groups.web as string, '--protocol', 'tcp', '--port', '80');
    await within(1000, true, reach(outside, a.ip4, 80), 'outside -> a:80 after the rule is back');

    const temp = await lab.vm('t', 13);
    await lab.serve(temp);
    const id = (await json<{ id: string }>('instance', 'create', '--name', 't', '--host', HOST, '--group', groups.web as string, '--network-info', netinfo(temp))).id;
    await within(1000, false, reach(outside, temp.ip4, 81), 'outside -> t:81 while t is filtered');
    await v('instance', 'delete', id);
    // Unfiltered, t is open again: its chains are gone.
    await within(1000, true, reach(outside, temp.ip4, 81), 'outside -> t:81 after t was deleted');
    const saved = (await lab.hostExec(['iptables-save'])).stdout;
    expect(saved).not.toContain('tap-t');
  });

  it('after kill -9 and a restart the same ruleset is in force and nothing is lost', async () => {
    const before = normaliseSave((await lab.hostExec(['iptables-save'])).stdout);
    const before6 = normaliseSave((await lab.hostExec(['ip6tables-save'])).stdout);
    const listBefore = await json<unknown[]>('instance', 'list');
    await server.kill9();
    // The kernel keeps enforcing while virtfw is down.
    expect(await reach(outside, a.ip4, 81)()).toBe(false);
    expect(await reach(outside, a.ip4, 80)()).toBe(true);

    server = await serve();
    expect(normaliseSave((await lab.hostExec(['iptables-save'])).stdout)).toBe(before);
    expect(normaliseSave((await lab.hostExec(['ip6tables-save'])).stdout)).toBe(before6);
    expect(await json<unknown[]>('instance', 'list')).toEqual(listBefore);
    expect(await json<unknown[]>('group', 'list')).toHaveLength(3);

    // And it goes on following changes.
    await v('rule', 'create', '--group', groups.web as string, '--protocol', 'tcp', '--port', '81');
    await within(1000, true, reach(outside, a.ip4, 81), 'outside -> a:81 after a rule added post-restart');
  });

  it('bad input is one line on stderr, a non-zero exit, and nothing stored', async () => {
    const before = await json<unknown[]>('rule', 'list');
    const r = await cli(lab.hostNs, ['rule', 'create', '--group', groups.web as string, '--protocol', 'tcp', '--port', '70000', '--url', `http://127.0.0.1:${PORT}`], {
      allowFail: true,
    });
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/port_range_min/);
    expect(await json<unknown[]>('rule', 'list')).toEqual(before);
  });
});
