import { beforeAll, describe, expect, it } from 'vitest';
import type { AgentStatus } from '../../src/api/server.js';
import { BACKENDS, useApi } from './harness.js';

describe.each(BACKENDS)('agent status and host rulesets (%s)', (backend) => {
  const rendered: Array<[string, string]> = [];
  const status: AgentStatus = {
    host: 'compute-1',
    instances: [],
    lastApply: '2025-01-02T03:04:05.000Z',
    lastError: null,
    appliedSeq: 0,
  };
  const api = useApi(backend, 'agent', {
    deps: {
      agentStatus: () => status,
      renderRuleset: async (host, format) => {
        rendered.push([host, format]);
        return `# ${format} ruleset of ${host}\n*filter\nCOMMIT\n`;
      },
    },
  });
  const bare = useApi(backend, 'agent-bare');

  beforeAll(async () => {
    const mine = await api.ok(201, 'POST', '/v2.0/instances', { body: { instance: { id: 'vm-mine', name: 'm', host: 'compute-1' } } });
    const theirs = await api.ok(201, 'POST', '/v2.0/instances', {
      as: 'other',
      body: { instance: { id: 'vm-theirs', name: 't', host: 'compute-1' } },
    });
    status.instances = [
      { instanceId: mine.instance.id, filtered: true, lastApply: '2025-01-02T03:04:05.000Z', lastError: null },
      { instanceId: theirs.instance.id, filtered: false, lastApply: null, lastError: 'iptables-restore: line 3 failed' },
    ];
    status.appliedSeq = await api.seq();
  });

  it('GET /v2.0/status shows the whole host to an admin, as AgentStatus', async () => {
    const body = await api.ok(200, 'GET', '/v2.0/status', { as: 'admin' });
    expect(body).toEqual({
      status: {
        host: 'compute-1',
        instances: [
          { instanceId: 'vm-mine', filtered: true, lastApply: '2025-01-02T03:04:05.000Z', lastError: null },
          { instanceId: 'vm-theirs', filtered: false, lastApply: null, lastError: 'iptables-restore: line 3 failed' },
        ],
        lastApply: '2025-01-02T03:04:05.000Z',
        lastError: null,
        appliedSeq: status.appliedSeq,
      },
    });
  });

  it("a project sees only its own instances' status", async () => {
    const body = await api.ok(200, 'GET', '/v2.0/status');
    expect(body.status.instances.map((i: { instanceId: string }) => i.instanceId)).toEqual(['vm-mine']);
    const other = await api.ok(200, 'GET', '/v2.0/status', { as: 'other' });
    expect(other.status.instances.map((i: { instanceId: string }) => i.instanceId)).toEqual(['vm-theirs']);
  });

  it('GET /v2.0/hosts/:host/ruleset returns text for an admin, iptables by default', async () => {
    const res = await api.call('GET', '/v2.0/hosts/compute-1/ruleset', { as: 'admin' });
    expect(res.status, res.text).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    expect(res.text).toBe('# iptables ruleset of compute-1\n*filter\nCOMMIT\n');
    const nft = await api.call('GET', '/v2.0/hosts/compute-2/ruleset?format=nft', { as: 'admin' });
    expect(nft.status).toBe(200);
    expect(rendered).toEqual([
      ['compute-1', 'iptables'],
      ['compute-2', 'nft'],
    ]);
  });

  it('the ruleset is admin only (403), with a bad format 400 and a bad host 400', async () => {
    await api.fails(403, 'PolicyNotAuthorized', 'GET', '/v2.0/hosts/compute-1/ruleset');
    await api.fails(400, 'HTTPBadRequest', 'GET', '/v2.0/hosts/compute-1/ruleset?format=pf', {
      as: 'admin',
      message: /format.*iptables, nft/,
    });
    await api.fails(400, 'HTTPBadRequest', 'GET', '/v2.0/hosts/compute%201/ruleset', { as: 'admin', message: /host/ });
    await api.fails(401, 'HTTPUnauthorized', 'GET', '/v2.0/hosts/compute-1/ruleset', { as: 'none' });
  });

  it('without an agent or a renderer in the process, both are 404', async () => {
    await bare.fails(404, 'AgentNotFound', 'GET', '/v2.0/status', { as: 'admin' });
    await bare.fails(404, 'RulesetNotAvailable', 'GET', '/v2.0/hosts/compute-1/ruleset', { as: 'admin' });
    await bare.fails(401, 'HTTPUnauthorized', 'GET', '/v2.0/status', { as: 'none' });
  });
});
