/**
 * Agents on other hosts report their status into the store; the API answers
 * `/v2.0/status?host=` and `/v2.0/agents` from those reports.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { BACKENDS, useApi } from './harness.js';

describe.each(BACKENDS)('reported agent status (%s)', (backend) => {
  const api = useApi(backend, 'agents');

  beforeAll(async () => {
    const mine = await api.ok(201, 'POST', '/v2.0/instances', { body: { instance: { id: 'vm-a', name: 'a', host: 'compute-2' } } });
    await api.store.reportAgentStatus({
      host: 'compute-2',
      appliedSeq: 7,
      lastApply: '2026-01-02T03:04:05.000000Z',
      lastError: null,
      instances: [
        { instanceId: mine.instance.id, filtered: true, lastApply: '2026-01-02T03:04:05.000000Z', lastError: null },
        { instanceId: 'vm-of-someone-else', filtered: false, lastApply: null, lastError: 'boom' },
      ],
    });
    // A later report replaces the earlier one.
    await api.store.reportAgentStatus({
      host: 'compute-3',
      appliedSeq: 1,
      lastApply: null,
      lastError: 'first',
      instances: [],
    });
    await api.store.reportAgentStatus({
      host: 'compute-3',
      appliedSeq: 9,
      lastApply: '2026-01-02T03:04:06.000000Z',
      lastError: 'iptables-restore failed, previous ruleset kept: line 3',
      instances: [],
    });
  });

  it('GET /v2.0/status?host= answers for a remote host from its last report', async () => {
    const body = await api.ok(200, 'GET', '/v2.0/status?host=compute-2', { as: 'admin' });
    expect(body.status).toMatchObject({ host: 'compute-2', appliedSeq: 7, lastError: null });
    expect(body.status.instances).toHaveLength(2);
    expect(body.status.updatedAt).toMatch(/^\d{4}-/);
  });

  it('a project sees only its own instances in a report', async () => {
    const body = await api.ok(200, 'GET', '/v2.0/status?host=compute-2');
    expect(body.status.instances.map((i: { instanceId: string }) => i.instanceId)).toEqual(['vm-a']);
  });

  it('GET /v2.0/agents lists every host, the newest report of each', async () => {
    const body = await api.ok(200, 'GET', '/v2.0/agents', { as: 'admin' });
    expect(body.agents.map((a: { host: string; appliedSeq: number }) => [a.host, a.appliedSeq])).toEqual([
      ['compute-2', 7],
      ['compute-3', 9],
    ]);
    expect(body.agents[1].lastError).toMatch(/previous ruleset kept/);
  });

  it('an unknown host is 404, and a bad host name is 400 naming the field', async () => {
    await api.fails(404, 'AgentNotFound', 'GET', '/v2.0/status?host=nowhere', { as: 'admin' });
    await api.fails(400, /BadRequest/, 'GET', '/v2.0/status?host=a%20b', { as: 'admin', message: /host/ });
  });
});
