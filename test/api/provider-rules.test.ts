import { describe, expect, it } from 'vitest';
import { BACKENDS, useApi } from './harness.js';

describe.each(BACKENDS)('provider firewall rules (%s)', (backend) => {
  const api = useApi(backend, 'provider');

  it('an admin creates, lists and deletes provider rules', async () => {
    const res = await api.call('POST', '/v2.0/provider-firewall-rules', {
      as: 'admin',
      body: { provider_firewall_rule: { cidr: '203.0.113.0/24', protocol: 'tcp', from_port: 25, to_port: 25 } },
    });
    expect(res.status, res.text).toBe(201);
    const rule = res.json.provider_firewall_rule;
    expect(rule).toEqual({
      id: expect.any(String),
      cidr: '203.0.113.0/24',
      protocol: 'tcp',
      from_port: 25,
      to_port: 25,
      created_at: expect.any(String),
    });
    const all = await api.ok(201, 'POST', '/v2.0/provider-firewall-rules', {
      as: 'admin',
      body: { provider_firewall_rule: { cidr: '2001:db8:bad::/48' } },
    });
    expect(all.provider_firewall_rule).toMatchObject({ cidr: '2001:db8:bad::/48', protocol: null, from_port: null, to_port: null });
    const list = await api.ok(200, 'GET', '/v2.0/provider-firewall-rules', { as: 'admin' });
    expect(list.provider_firewall_rules).toContainEqual(rule);
    expect(list.provider_firewall_rules).toContainEqual(all.provider_firewall_rule);

    expect((await api.call('DELETE', `/v2.0/provider-firewall-rules/${rule.id}`, { as: 'admin' })).status).toBe(204);
    const after = await api.ok(200, 'GET', '/v2.0/provider-firewall-rules', { as: 'admin' });
    expect(after.provider_firewall_rules.map((r: { id: string }) => r.id)).not.toContain(rule.id);
    await api.fails(404, 'ProviderFirewallRuleNotFound', 'DELETE', `/v2.0/provider-firewall-rules/${rule.id}`, { as: 'admin' });
  });

  it('a non-admin is refused (403) on every verb, before its input is read', async () => {
    const seq = await api.seq();
    await api.fails(403, 'PolicyNotAuthorized', 'POST', '/v2.0/provider-firewall-rules', {
      body: { provider_firewall_rule: { cidr: '198.51.100.0/24' } },
    });
    await api.fails(403, 'PolicyNotAuthorized', 'POST', '/v2.0/provider-firewall-rules', { body: { nonsense: true } });
    await api.fails(403, 'PolicyNotAuthorized', 'GET', '/v2.0/provider-firewall-rules');
    await api.fails(403, 'PolicyNotAuthorized', 'DELETE', '/v2.0/provider-firewall-rules/anything', { as: 'other' });
    expect(await api.seq()).toBe(seq);
  });

  it('an unknown id is 404', async () => {
    await api.fails(404, 'ProviderFirewallRuleNotFound', 'DELETE', '/v2.0/provider-firewall-rules/no-such-rule', { as: 'admin' });
  });

  describe('bad input (400, the field named, nothing stored)', () => {
    const cases: Array<[string, Record<string, unknown>, RegExp]> = [
      ['malformed CIDR', { cidr: '10.1.2.0/40' }, /Invalid input for cidr/],
      ['missing CIDR', {}, /'cidr'/],
      ['CIDR of a wrong type', { cidr: 10 }, /cidr/],
      ['port out of range', { cidr: '10.0.0.0/8', protocol: 'udp', from_port: 1, to_port: 65536 }, /to_port/],
      ['from > to', { cidr: '10.0.0.0/8', protocol: 'tcp', from_port: 90, to_port: 80 }, /from_port/],
      ['icmp type 256', { cidr: '10.0.0.0/8', protocol: 'icmp', from_port: 256 }, /from_port/],
      ['unknown protocol', { cidr: '10.0.0.0/8', protocol: 'smtp' }, /protocol/],
      ['ports without protocol', { cidr: '10.0.0.0/8', from_port: 80 }, /from_port/],
      ['unknown field', { cidr: '10.0.0.0/8', action: 'drop' }, /Unrecognized attribute\(s\) 'action'/],
      ['port as text', { cidr: '10.0.0.0/8', protocol: 'tcp', from_port: '80' }, /from_port/],
    ];
    it.each(cases)('%s', async (_label, rule, message) => {
      const seq = await api.seq();
      const res = await api.call('POST', '/v2.0/provider-firewall-rules', { as: 'admin', body: { provider_firewall_rule: rule } });
      expect(res.status, res.text).toBe(400);
      expect(res.json.NeutronError.message).toMatch(message);
      expect(res.json.NeutronError.message).not.toMatch(/fromPort|toPort|providerRule/);
      expect(await api.seq()).toBe(seq);
    });
  });
});
