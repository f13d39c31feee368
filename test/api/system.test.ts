import { describe, expect, it } from 'vitest';
import { REQUESTS_TOTAL, REQUEST_DURATION } from '../../src/api/metrics.js';
import type { Store } from '../../src/store/store.js';
import { BACKENDS, useApi } from './harness.js';

/** The api's store, with some methods replaced (to make it fail). */
function brokenStore(store: Store, overrides: Partial<Record<keyof Store, () => Promise<never>>>): Store {
  return new Proxy(store, {
    get(target, name, receiver) {
      const override = overrides[name as keyof Store];
      if (override) return override;
      const value = Reflect.get(target, name, receiver);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

describe.each(BACKENDS)('system routes (%s)', (backend) => {
  const api = useApi(backend, 'system');

  it('GET /healthz answers ok without a token', async () => {
    const res = await api.call('GET', '/healthz', { as: 'none' });
    expect(res.status).toBe(200);
    expect(res.json).toEqual({ status: 'ok' });
  });

  it('GET /metrics serves the HTTP metrics without a token', async () => {
    await api.ok(200, 'GET', '/v2.0/security-groups');
    await api.call('GET', '/v2.0/security-groups/nope');
    const res = await api.call('GET', '/metrics', { as: 'none' });
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    expect(res.text).toContain(`# TYPE ${REQUESTS_TOTAL} counter`);
    expect(res.text).toContain(`# TYPE ${REQUEST_DURATION} histogram`);
    expect(res.text).toMatch(
      new RegExp(`^${REQUESTS_TOTAL}\\{method="GET",route="/v2.0/security-groups",status_code="200"\\} [1-9]`, 'm'),
    );
    // Route patterns, not raw URLs.
    expect(res.text).toContain('route="/v2.0/security-groups/:id",status_code="404"');
    expect(res.text).not.toContain('/v2.0/security-groups/nope');
  });

  it('GET /openapi.json is an OpenAPI document with every route', async () => {
    const res = await api.call('GET', '/openapi.json', { as: 'none' });
    expect(res.status).toBe(200);
    const doc = JSON.parse(res.text);
    expect(doc.openapi).toMatch(/^3\./);
    expect(doc.info.title).toBe('virtfw');
    const paths = doc.paths as Record<string, Record<string, unknown>>;
    const methods = (p: string) => Object.keys(paths[p] ?? {}).sort();
    expect(methods('/v2.0/security-groups')).toEqual(['get', 'post']);
    expect(methods('/v2.0/security-groups/{id}')).toEqual(['delete', 'get', 'put']);
    expect(methods('/v2.0/security-group-rules')).toEqual(['get', 'post']);
    expect(methods('/v2.0/security-group-rules/{id}')).toEqual(['delete', 'get']);
    expect(methods('/v2.0/instances')).toEqual(['get', 'post']);
    expect(methods('/v2.0/instances/{id}')).toEqual(['delete', 'get', 'put']);
    expect(methods('/v2.0/provider-firewall-rules')).toEqual(['get', 'post']);
    expect(methods('/v2.0/provider-firewall-rules/{id}')).toEqual(['delete']);
    expect(methods('/v2.0/status')).toEqual(['get']);
    expect(methods('/v2.0/hosts/{host}/ruleset')).toEqual(['get']);
    expect(methods('/healthz')).toEqual(['get']);
    expect(Object.keys(doc.components.schemas)).toEqual(
      expect.arrayContaining(['NeutronError', 'SecurityGroup', 'SecurityGroupRule', 'Instance', 'ProviderFirewallRule']),
    );
    expect(Object.keys(doc.components.securitySchemes).sort()).toEqual(['bearer', 'token']);
    // Every $ref points at a component that exists.
    const refs = [...res.text.matchAll(/"\$ref":"([^"]+)"/g)].map((m) => m[1]!);
    expect(refs.length).toBeGreaterThan(0);
    for (const ref of refs) {
      expect(ref).toMatch(/^#\/components\/schemas\//);
      expect(doc.components.schemas[ref.split('/').at(-1)!], ref).toBeDefined();
    }
    // The request body of a create names its envelope and forbids unknown fields.
    const body = paths['/v2.0/security-group-rules']!.post as { requestBody: { content: Record<string, { schema: unknown }> } };
    const schema = body.requestBody.content['application/json']!.schema as {
      required: string[];
      additionalProperties: boolean;
    };
    expect(schema.required).toEqual(['security_group_rule']);
    expect(schema.additionalProperties).toBe(false);
  });

  it('an unknown route is a Neutron 404', async () => {
    await api.fails(404, 'HTTPNotFound', 'GET', '/v2.0/networks');
    await api.fails(404, 'HTTPNotFound', 'PATCH', '/v2.0/security-groups', { as: 'none' });
  });

  it('every response carries a request id', async () => {
    const res = await api.call('GET', '/v2.0/security-groups');
    expect(res.headers['x-openstack-request-id']).toMatch(/^req-[0-9a-f-]{36}$/);
  });

  it('an unsupported content type is 415', async () => {
    const res = await api.call('POST', '/v2.0/security-groups', {
      body: 'name=x',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    expect(res.status).toBe(415);
    expect(res.json.NeutronError.type).toBe('HTTPUnsupportedMediaType');
  });

  describe('when the store fails', () => {
    const failing = () => Promise.reject(new Error('connect ECONNREFUSED 10.9.9.9:5432 password=hunter2'));
    const down = useApi(backend, 'system-down', {
      wrapStore: (store) => brokenStore(store, { latestChangeSeq: failing, listSecurityGroups: failing }),
    });

    it('/healthz is 503', async () => {
      await down.fails(503, 'ServiceUnavailable', 'GET', '/healthz', { as: 'none' });
    });

    it('a route is a 500 that leaks nothing', async () => {
      const res = await down.fails(500, 'HTTPInternalServerError', 'GET', '/v2.0/security-groups');
      expect(res.text).not.toMatch(/ECONNREFUSED|hunter2|at .*\.ts|stack/);
    });
  });
});
