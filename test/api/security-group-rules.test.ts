import { beforeAll, describe, expect, it } from 'vitest';
import { BACKENDS, unique, useApi, type Api } from './harness.js';

async function newGroup(api: Api, as: 'demo' | 'other' | 'admin' = 'demo'): Promise<string> {
  const { security_group: g } = await api.ok(201, 'POST', '/v2.0/security-groups', {
    as,
    body: { security_group: { name: unique('rules') } },
  });
  return g.id;
}

describe.each(BACKENDS)('security group rules (%s)', (backend) => {
  const api = useApi(backend, 'rules');
  let group = '';
  let otherGroup = '';

  beforeAll(async () => {
    group = await newGroup(api);
    otherGroup = await newGroup(api, 'other');
  });

  const create = (rule: Record<string, unknown>, as: 'demo' | 'other' | 'admin' = 'demo') =>
    api.call('POST', '/v2.0/security-group-rules', { as, body: { security_group_rule: { security_group_id: group, ...rule } } });

  it('creates, shows, lists and deletes a tcp rule', async () => {
    const res = await create({
      direction: 'ingress',
      ethertype: 'IPv4',
      protocol: 'tcp',
      port_range_min: 22,
      port_range_max: 22,
      remote_ip_prefix: '192.0.2.0/24',
      description: 'ssh from the office',
    });
    expect(res.status, res.text).toBe(201);
    const rule = res.json.security_group_rule;
    expect(rule).toEqual({
      id: expect.any(String),
      security_group_id: group,
      direction: 'ingress',
      ethertype: 'IPv4',
      protocol: 'tcp',
      port_range_min: 22,
      port_range_max: 22,
      remote_ip_prefix: '192.0.2.0/24',
      remote_group_id: null,
      description: 'ssh from the office',
      project_id: 'demo',
      tenant_id: 'demo',
      created_at: expect.any(String),
    });
    expect((await api.ok(200, 'GET', `/v2.0/security-group-rules/${rule.id}`)).security_group_rule).toEqual(rule);
    const inGroup = await api.ok(200, 'GET', `/v2.0/security-group-rules?security_group_id=${group}`);
    expect(inGroup.security_group_rules).toContainEqual(rule);
    expect(inGroup.security_group_rules.every((r: { security_group_id: string }) => r.security_group_id === group)).toBe(true);
    const all = await api.ok(200, 'GET', '/v2.0/security-group-rules');
    expect(all.security_group_rules).toContainEqual(rule);
    // The group shows it too.
    const { security_group: g } = await api.ok(200, 'GET', `/v2.0/security-groups/${group}`);
    expect(g.security_group_rules).toContainEqual(rule);

    const del = await api.call('DELETE', `/v2.0/security-group-rules/${rule.id}`);
    expect(del.status).toBe(204);
    await api.fails(404, 'SecurityGroupRuleNotFound', 'GET', `/v2.0/security-group-rules/${rule.id}`);
    await api.fails(404, 'SecurityGroupRuleNotFound', 'DELETE', `/v2.0/security-group-rules/${rule.id}`);
  });

  it('accepts a protocol as a name, a number or numeric text, and any/null for every protocol', async () => {
    const udp = await create({ direction: 'ingress', protocol: 17, port_range_min: 53, port_range_max: 53 });
    expect(udp.status, udp.text).toBe(201);
    expect(udp.json.security_group_rule.protocol).toBe('17');
    const gre = await create({ direction: 'ingress', protocol: '47' });
    expect(gre.status, gre.text).toBe(201);
    expect(gre.json.security_group_rule.protocol).toBe('47');
    const upper = await create({ direction: 'ingress', protocol: 'SCTP', port_range_min: 3868 });
    expect(upper.status, upper.text).toBe(201);
    expect(upper.json.security_group_rule).toMatchObject({ protocol: 'sctp', port_range_min: 3868 });
    const any = await create({ direction: 'ingress', protocol: 'any', remote_ip_prefix: '198.51.100.7/32' });
    expect(any.status, any.text).toBe(201);
    expect(any.json.security_group_rule.protocol).toBeNull();
    const nul = await create({ direction: 'ingress', protocol: null, remote_ip_prefix: '198.51.100.8/32' });
    expect(nul.status, nul.text).toBe(201);
    expect(nul.json.security_group_rule.protocol).toBeNull();
  });

  it('takes icmp type and code in the port fields', async () => {
    const res = await create({ direction: 'ingress', protocol: 'icmp', port_range_min: 8, port_range_max: 0 });
    expect(res.status, res.text).toBe(201);
    expect(res.json.security_group_rule).toMatchObject({ protocol: 'icmp', port_range_min: 8, port_range_max: 0 });
    const v6 = await create({ direction: 'ingress', ethertype: 'IPv6', protocol: 'icmpv6', port_range_min: 128 });
    expect(v6.status, v6.text).toBe(201);
    expect(v6.json.security_group_rule).toMatchObject({ ethertype: 'IPv6', protocol: 'icmpv6', port_range_min: 128 });
  });

  it('stores the canonical CIDR and derives the ethertype from it', async () => {
    const res = await create({ direction: 'egress', protocol: 'tcp', port_range_min: 443, remote_ip_prefix: '2001:DB8:0:0::1/48' });
    expect(res.status, res.text).toBe(201);
    expect(res.json.security_group_rule).toMatchObject({ ethertype: 'IPv6', remote_ip_prefix: '2001:db8::/48' });
  });

  it('allows traffic from another group of the project', async () => {
    const remote = await newGroup(api);
    const res = await create({ direction: 'ingress', protocol: 'tcp', port_range_min: 5432, remote_group_id: remote });
    expect(res.status, res.text).toBe(201);
    expect(res.json.security_group_rule).toMatchObject({ remote_group_id: remote, remote_ip_prefix: null });
  });

  it('a duplicate rule is 409 SecurityGroupRuleExists, also when spelled differently', async () => {
    const first = await create({ direction: 'ingress', protocol: 'tcp', port_range_min: 8080, port_range_max: 8081 });
    expect(first.status, first.text).toBe(201);
    const seq = await api.seq();
    await api.fails(409, 'SecurityGroupRuleExists', 'POST', '/v2.0/security-group-rules', {
      body: { security_group_rule: { security_group_id: group, direction: 'ingress', protocol: 'tcp', port_range_min: 8080, port_range_max: 8081 } },
    });
    await api.fails(409, 'SecurityGroupRuleExists', 'POST', '/v2.0/security-group-rules', {
      body: {
        security_group_rule: {
          security_group_id: group,
          direction: 'ingress',
          ethertype: 'IPv4',
          protocol: 6,
          port_range_min: 8080,
          port_range_max: 8081,
          description: 'same rule, other words',
        },
      },
    });
    expect(await api.seq()).toBe(seq);
  });

  describe('projects', () => {
    it("another project's rule is not found", async () => {
      const res = await create({ direction: 'ingress', protocol: 'tcp', port_range_min: 9000 });
      const id = res.json.security_group_rule.id;
      await api.fails(404, 'SecurityGroupRuleNotFound', 'GET', `/v2.0/security-group-rules/${id}`, { as: 'other' });
      await api.fails(404, 'SecurityGroupRuleNotFound', 'DELETE', `/v2.0/security-group-rules/${id}`, { as: 'other' });
      const list = await api.ok(200, 'GET', '/v2.0/security-group-rules', { as: 'other' });
      expect(list.security_group_rules.every((r: { project_id: string }) => r.project_id === 'other')).toBe(true);
      const filtered = await api.ok(200, 'GET', `/v2.0/security-group-rules?security_group_id=${group}`, { as: 'other' });
      expect(filtered.security_group_rules).toEqual([]);
      await api.ok(200, 'GET', `/v2.0/security-group-rules/${id}`);
    });

    it("adding a rule to another project's group, or naming it as remote, is 404", async () => {
      const seq = await api.seq();
      await api.fails(404, 'SecurityGroupNotFound', 'POST', '/v2.0/security-group-rules', {
        body: { security_group_rule: { security_group_id: otherGroup, direction: 'ingress' } },
      });
      await api.fails(404, 'SecurityGroupNotFound', 'POST', '/v2.0/security-group-rules', {
        body: { security_group_rule: { security_group_id: group, direction: 'ingress', remote_group_id: otherGroup } },
      });
      expect(await api.seq()).toBe(seq);
    });

    it('an unknown group or remote group is 404', async () => {
      await api.fails(404, 'SecurityGroupNotFound', 'POST', '/v2.0/security-group-rules', {
        body: { security_group_rule: { security_group_id: 'no-such-group', direction: 'ingress' } },
      });
      await api.fails(404, 'SecurityGroupNotFound', 'POST', '/v2.0/security-group-rules', {
        body: { security_group_rule: { security_group_id: group, direction: 'ingress', remote_group_id: 'no-such-group' } },
      });
      await api.fails(404, 'SecurityGroupRuleNotFound', 'GET', '/v2.0/security-group-rules/no-such-rule');
    });

    it("an admin adds rules to any project's group; project_id must then be the group's", async () => {
      const res = await api.call('POST', '/v2.0/security-group-rules', {
        as: 'admin',
        body: { security_group_rule: { security_group_id: otherGroup, direction: 'ingress', protocol: 'udp', project_id: 'other' } },
      });
      expect(res.status, res.text).toBe(201);
      expect(res.json.security_group_rule).toMatchObject({ project_id: 'other', security_group_id: otherGroup });
      const seq = await api.seq();
      await api.fails(400, 'HTTPBadRequest', 'POST', '/v2.0/security-group-rules', {
        as: 'admin',
        body: { security_group_rule: { security_group_id: otherGroup, direction: 'ingress', protocol: 'tcp', project_id: 'demo' } },
        message: /project_id/,
      });
      await api.fails(400, 'HTTPBadRequest', 'POST', '/v2.0/security-group-rules', {
        body: { security_group_rule: { security_group_id: group, direction: 'ingress', protocol: 'tcp', tenant_id: 'other' } },
        message: /tenant_id/,
      });
      expect(await api.seq()).toBe(seq);
    });
  });

  describe('bad input (400, the field named, nothing stored)', () => {
    const cases: Array<[string, Record<string, unknown>, RegExp]> = [
      ['malformed CIDR', { direction: 'ingress', remote_ip_prefix: '10.0.0.300/24' }, /remote_ip_prefix/],
      ['CIDR that is not one', { direction: 'ingress', remote_ip_prefix: 'not-a-cidr' }, /remote_ip_prefix/],
      ['CIDR of the other family', { direction: 'ingress', ethertype: 'IPv6', remote_ip_prefix: '10.0.0.0/8' }, /remote_ip_prefix/],
      ['port above 65535 (schema)', { direction: 'ingress', protocol: 'tcp', port_range_min: 70000 }, /port_range_min/],
      ['port 0', { direction: 'ingress', protocol: 'tcp', port_range_min: 0, port_range_max: 10 }, /port_range_min/],
      ['max port out of range', { direction: 'ingress', protocol: 'udp', port_range_min: 1, port_range_max: 65536 }, /port_range_max/],
      ['from > to', { direction: 'ingress', protocol: 'tcp', port_range_min: 2000, port_range_max: 1000 }, /port_range_min/],
      ['max without min', { direction: 'ingress', protocol: 'tcp', port_range_max: 1000 }, /port_range_min/],
      ['icmp type 256', { direction: 'ingress', protocol: 'icmp', port_range_min: 256 }, /port_range_min/],
      ['icmp code 256', { direction: 'ingress', protocol: 'icmp', port_range_min: 3, port_range_max: 256 }, /port_range_max/],
      ['icmp code without type', { direction: 'ingress', protocol: 'icmp', port_range_max: 1 }, /port_range_max/],
      ['icmpv6 on IPv4', { direction: 'ingress', ethertype: 'IPv4', protocol: 'icmpv6' }, /protocol/],
      ['unknown protocol name', { direction: 'ingress', protocol: 'tcpx' }, /protocol/],
      ['protocol number 256', { direction: 'ingress', protocol: 256 }, /protocol/],
      ['protocol of a wrong type', { direction: 'ingress', protocol: true }, /protocol/],
      ['ports without a protocol', { direction: 'ingress', port_range_min: 80 }, /port_range_min/],
      ['ports on a protocol without ports', { direction: 'ingress', protocol: 'gre', port_range_min: 80 }, /port_range_min/],
      ['remote prefix and remote group', { direction: 'ingress', remote_ip_prefix: '10.0.0.0/8', remote_group_id: 'x' }, /remote_group_id|remote_ip_prefix/],
      ['unknown field', { direction: 'ingress', port: 80 }, /Unrecognized attribute\(s\) 'port'/],
      ['two unknown fields, with a bad one', { direction: 'up', port: 80, action: 'allow' }, /Unrecognized attribute\(s\) 'port, action'/],
      ['missing direction', {}, /'direction'/],
      ['bad direction', { direction: 'inbound' }, /direction.*ingress, egress/],
      ['direction of a wrong type', { direction: 1 }, /direction/],
      ['bad ethertype', { direction: 'ingress', ethertype: 'ipv4' }, /ethertype/],
      ['port as text', { direction: 'ingress', protocol: 'tcp', port_range_min: '80' }, /port_range_min/],
      ['port as a fraction', { direction: 'ingress', protocol: 'tcp', port_range_min: 80.5 }, /port_range_min/],
      ['remote group id with quotes', { direction: 'ingress', remote_group_id: 'x"; drop' }, /remote_group_id/],
      ['description too long', { direction: 'ingress', description: 'd'.repeat(256) }, /description/],
    ];
    it.each(cases)('%s', async (_label, rule, message) => {
      const seq = await api.seq();
      const res = await api.call('POST', '/v2.0/security-group-rules', {
        body: { security_group_rule: { security_group_id: group, ...rule } },
      });
      expect(res.status, res.text).toBe(400);
      expect(res.json.NeutronError.type).toMatch(/^(HTTPBadRequest|InvalidInput)$/);
      expect(res.json.NeutronError.message).toMatch(message);
      // The wire names, never the store's.
      expect(res.json.NeutronError.message).not.toMatch(/portRange|remoteIp|remoteGroup|rule\./);
      expect(await api.seq()).toBe(seq);
    });

    it('a missing security_group_id, or one with quotes', async () => {
      const seq = await api.seq();
      await api.fails(400, 'HTTPBadRequest', 'POST', '/v2.0/security-group-rules', {
        body: { security_group_rule: { direction: 'ingress' } },
        message: /'security_group_id'/,
      });
      await api.fails(400, 'HTTPBadRequest', 'POST', '/v2.0/security-group-rules', {
        body: { security_group_rule: { security_group_id: "x'y", direction: 'ingress' } },
        message: /Invalid input for security_group_id. Reason: is not a valid id/,
      });
      expect(await api.seq()).toBe(seq);
    });

    it('an unknown list filter', async () => {
      await api.fails(400, 'HTTPBadRequest', 'GET', '/v2.0/security-group-rules?group=x', { message: /'group'/ });
    });
  });
});
