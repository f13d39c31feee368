import { describe, expect, it } from 'vitest';
import { BACKENDS, unique, useApi } from './harness.js';

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}/;

describe.each(BACKENDS)('security groups (%s)', (backend) => {
  const api = useApi(backend, 'groups');

  it("makes a project's default group on its first request, with Neutron's four rules", async () => {
    const before = await api.ok(200, 'GET', '/v2.0/security-groups', { as: 'other' });
    expect(before.security_groups).toHaveLength(1);
    const [group] = before.security_groups;
    expect(group).toMatchObject({ name: 'default', project_id: 'other', tenant_id: 'other', stateful: true });
    const rules = group.security_group_rules.map((r: Record<string, unknown>) => ({
      direction: r.direction,
      ethertype: r.ethertype,
      protocol: r.protocol,
      remote_group_id: r.remote_group_id,
      remote_ip_prefix: r.remote_ip_prefix,
    }));
    expect(rules).toHaveLength(4);
    expect(rules).toEqual(
      expect.arrayContaining([
        { direction: 'egress', ethertype: 'IPv4', protocol: null, remote_group_id: null, remote_ip_prefix: null },
        { direction: 'egress', ethertype: 'IPv6', protocol: null, remote_group_id: null, remote_ip_prefix: null },
        { direction: 'ingress', ethertype: 'IPv4', protocol: null, remote_group_id: group.id, remote_ip_prefix: null },
        { direction: 'ingress', ethertype: 'IPv6', protocol: null, remote_group_id: group.id, remote_ip_prefix: null },
      ]),
    );
    // Only once.
    const again = await api.ok(200, 'GET', '/v2.0/security-groups', { as: 'other' });
    expect(again.security_groups.map((g: { id: string }) => g.id)).toEqual([group.id]);
  });

  it('creates a group with the two default egress rules and shows it in Neutron form', async () => {
    const name = unique('web');
    const created = await api.ok(201, 'POST', '/v2.0/security-groups', {
      body: { security_group: { name, description: 'web servers' } },
    });
    const g = created.security_group;
    expect(g).toEqual({
      id: expect.any(String),
      name,
      description: 'web servers',
      project_id: 'demo',
      tenant_id: 'demo',
      security_group_rules: expect.any(Array),
      stateful: true,
      created_at: expect.stringMatching(ISO),
      updated_at: expect.stringMatching(ISO),
      revision_number: expect.any(Number),
    });
    expect(g.security_group_rules).toHaveLength(2);
    for (const rule of g.security_group_rules) {
      expect(rule).toEqual({
        id: expect.any(String),
        security_group_id: g.id,
        direction: 'egress',
        ethertype: expect.stringMatching(/^IPv[46]$/),
        protocol: null,
        port_range_min: null,
        port_range_max: null,
        remote_ip_prefix: null,
        remote_group_id: null,
        description: expect.any(String),
        project_id: 'demo',
        tenant_id: 'demo',
        created_at: expect.stringMatching(ISO),
      });
    }
    expect(new Set(g.security_group_rules.map((r: { ethertype: string }) => r.ethertype))).toEqual(new Set(['IPv4', 'IPv6']));

    const shown = await api.ok(200, 'GET', `/v2.0/security-groups/${g.id}`);
    expect(shown.security_group).toEqual(g);
    const listed = await api.ok(200, 'GET', '/v2.0/security-groups');
    const names = listed.security_groups.map((x: { name: string }) => x.name);
    expect(names).toContain(name);
    expect(names).toContain('default');
    expect(listed.security_groups.find((x: { id: string }) => x.id === g.id)).toEqual(g);
  });

  it('description defaults to empty', async () => {
    const { security_group: g } = await api.ok(201, 'POST', '/v2.0/security-groups', {
      body: { security_group: { name: unique('bare') } },
    });
    expect(g.description).toBe('');
  });

  it('updates name and description and bumps the revision', async () => {
    const { security_group: g } = await api.ok(201, 'POST', '/v2.0/security-groups', {
      body: { security_group: { name: unique('db') } },
    });
    const renamed = unique('database');
    const { security_group: u } = await api.ok(200, 'PUT', `/v2.0/security-groups/${g.id}`, {
      body: { security_group: { name: renamed, description: 'postgres' } },
    });
    expect(u).toMatchObject({ id: g.id, name: renamed, description: 'postgres', project_id: 'demo' });
    expect(u.revision_number).toBeGreaterThan(g.revision_number);
    expect(u.security_group_rules).toEqual(g.security_group_rules);
    const { security_group: u2 } = await api.ok(200, 'PUT', `/v2.0/security-groups/${g.id}`, {
      body: { security_group: { description: 'only this' } },
    });
    expect(u2).toMatchObject({ name: renamed, description: 'only this' });
  });

  it('deletes a group (204) and it is gone with its rules', async () => {
    const { security_group: g } = await api.ok(201, 'POST', '/v2.0/security-groups', {
      body: { security_group: { name: unique('tmp') } },
    });
    const res = await api.call('DELETE', `/v2.0/security-groups/${g.id}`);
    expect(res.status).toBe(204);
    expect(res.text).toBe('');
    await api.fails(404, 'SecurityGroupNotFound', 'GET', `/v2.0/security-groups/${g.id}`);
    await api.fails(404, 'SecurityGroupNotFound', 'DELETE', `/v2.0/security-groups/${g.id}`);
    const rules = await api.ok(200, 'GET', `/v2.0/security-group-rules?security_group_id=${g.id}`);
    expect(rules.security_group_rules).toEqual([]);
  });

  describe('projects', () => {
    it("another project's group is not found, for every verb", async () => {
      const { security_group: g } = await api.ok(201, 'POST', '/v2.0/security-groups', {
        body: { security_group: { name: unique('private') } },
      });
      await api.fails(404, 'SecurityGroupNotFound', 'GET', `/v2.0/security-groups/${g.id}`, { as: 'other' });
      await api.fails(404, 'SecurityGroupNotFound', 'PUT', `/v2.0/security-groups/${g.id}`, {
        as: 'other',
        body: { security_group: { name: 'stolen' } },
      });
      await api.fails(404, 'SecurityGroupNotFound', 'DELETE', `/v2.0/security-groups/${g.id}`, { as: 'other' });
      const list = await api.ok(200, 'GET', '/v2.0/security-groups', { as: 'other' });
      expect(list.security_groups.map((x: { id: string }) => x.id)).not.toContain(g.id);
      expect(list.security_groups.every((x: { project_id: string }) => x.project_id === 'other')).toBe(true);
      // Still there, unchanged.
      const { security_group: same } = await api.ok(200, 'GET', `/v2.0/security-groups/${g.id}`);
      expect(same.name).toBe(g.name);
    });

    it('an admin sees every project and may create in another project', async () => {
      const { security_group: mine } = await api.ok(201, 'POST', '/v2.0/security-groups', {
        body: { security_group: { name: unique('seen') } },
      });
      const list = await api.ok(200, 'GET', '/v2.0/security-groups', { as: 'admin' });
      const projects = new Set(list.security_groups.map((x: { project_id: string }) => x.project_id));
      expect(projects).toContain('demo');
      expect(projects).toContain('ops');
      await api.ok(200, 'GET', `/v2.0/security-groups/${mine.id}`, { as: 'admin' });

      const { security_group: g } = await api.ok(201, 'POST', '/v2.0/security-groups', {
        as: 'admin',
        body: { security_group: { name: unique('managed'), project_id: 'tenant9' } },
      });
      expect(g).toMatchObject({ project_id: 'tenant9', tenant_id: 'tenant9' });
      const { security_group: t } = await api.ok(201, 'POST', '/v2.0/security-groups', {
        as: 'admin',
        body: { security_group: { name: unique('managed'), tenant_id: 'tenant9' } },
      });
      expect(t.project_id).toBe('tenant9');
      // The target project got its default group too.
      const all = await api.ok(200, 'GET', '/v2.0/security-groups', { as: 'admin' });
      expect(
        all.security_groups.filter((x: { project_id: string; name: string }) => x.project_id === 'tenant9' && x.name === 'default'),
      ).toHaveLength(1);
    });

    it('a non-admin may not name another project (400), but may name its own', async () => {
      const seq = await api.seq();
      await api.fails(400, 'HTTPBadRequest', 'POST', '/v2.0/security-groups', {
        body: { security_group: { name: unique('x'), project_id: 'other' } },
        message: /project_id/,
      });
      await api.fails(400, 'HTTPBadRequest', 'POST', '/v2.0/security-groups', {
        body: { security_group: { name: unique('x'), tenant_id: 'other' } },
        message: /tenant_id/,
      });
      await api.fails(400, 'HTTPBadRequest', 'POST', '/v2.0/security-groups', {
        as: 'admin',
        body: { security_group: { name: unique('x'), project_id: 'a', tenant_id: 'b' } },
        message: /tenant_id/,
      });
      await api.fails(400, 'HTTPBadRequest', 'POST', '/v2.0/security-groups', {
        as: 'admin',
        body: { security_group: { name: unique('x'), project_id: 'bad"project' } },
        message: /project_id/,
      });
      expect(await api.seq()).toBe(seq);
      const { security_group: g } = await api.ok(201, 'POST', '/v2.0/security-groups', {
        body: { security_group: { name: unique('x'), project_id: 'demo', tenant_id: 'demo' } },
      });
      expect(g.project_id).toBe('demo');
    });
  });

  describe('the default group', () => {
    const defaultOf = async (as: 'demo' | 'other') => {
      const list = await api.ok(200, 'GET', '/v2.0/security-groups', { as });
      return list.security_groups.find((g: { name: string; project_id: string }) => g.name === 'default' && g.project_id === as);
    };

    it('cannot be renamed (409)', async () => {
      const d = await defaultOf('demo');
      await api.fails(409, 'SecurityGroupCannotUpdateDefault', 'PUT', `/v2.0/security-groups/${d.id}`, {
        body: { security_group: { name: 'renamed' } },
      });
      expect((await defaultOf('demo')).name).toBe('default');
    });

    it('cannot be deleted (409)', async () => {
      const d = await defaultOf('demo');
      await api.fails(409, 'SecurityGroupCannotRemoveDefault', 'DELETE', `/v2.0/security-groups/${d.id}`);
      await api.ok(200, 'GET', `/v2.0/security-groups/${d.id}`);
    });

    it("no other group may be named 'default', by create or rename (409)", async () => {
      const seq = await api.seq();
      await api.fails(409, 'SecurityGroupDefaultAlreadyExists', 'POST', '/v2.0/security-groups', {
        body: { security_group: { name: 'default' } },
      });
      expect(await api.seq()).toBe(seq);
      const { security_group: g } = await api.ok(201, 'POST', '/v2.0/security-groups', {
        body: { security_group: { name: unique('plain') } },
      });
      await api.fails(409, 'SecurityGroupDefaultAlreadyExists', 'PUT', `/v2.0/security-groups/${g.id}`, {
        body: { security_group: { name: 'default' } },
      });
      const list = await api.ok(200, 'GET', '/v2.0/security-groups');
      expect(list.security_groups.filter((x: { name: string }) => x.name === 'default')).toHaveLength(1);
    });

    it('its description may change', async () => {
      const d = await defaultOf('demo');
      const { security_group: u } = await api.ok(200, 'PUT', `/v2.0/security-groups/${d.id}`, {
        body: { security_group: { description: 'the default' } },
      });
      expect(u).toMatchObject({ name: 'default', description: 'the default' });
    });
  });

  describe('conflicts: a group in use', () => {
    it('by an instance cannot be deleted (409 SecurityGroupInUse), then can once the instance is gone', async () => {
      const { security_group: g } = await api.ok(201, 'POST', '/v2.0/security-groups', {
        body: { security_group: { name: unique('used') } },
      });
      const { instance } = await api.ok(201, 'POST', '/v2.0/instances', {
        body: { instance: { name: 'vm', host: 'compute-1', security_groups: [g.id] } },
      });
      await api.fails(409, 'SecurityGroupInUse', 'DELETE', `/v2.0/security-groups/${g.id}`);
      await api.ok(200, 'GET', `/v2.0/security-groups/${g.id}`);
      expect((await api.call('DELETE', `/v2.0/instances/${instance.id}`)).status).toBe(204);
      expect((await api.call('DELETE', `/v2.0/security-groups/${g.id}`)).status).toBe(204);
    });

    it("referenced by another group's rule cannot be deleted (409 SecurityGroupInUse)", async () => {
      const { security_group: target } = await api.ok(201, 'POST', '/v2.0/security-groups', {
        body: { security_group: { name: unique('target') } },
      });
      const { security_group: source } = await api.ok(201, 'POST', '/v2.0/security-groups', {
        body: { security_group: { name: unique('source') } },
      });
      const { security_group_rule: rule } = await api.ok(201, 'POST', '/v2.0/security-group-rules', {
        body: { security_group_rule: { security_group_id: source.id, direction: 'ingress', remote_group_id: target.id } },
      });
      await api.fails(409, 'SecurityGroupInUse', 'DELETE', `/v2.0/security-groups/${target.id}`);
      expect((await api.call('DELETE', `/v2.0/security-group-rules/${rule.id}`)).status).toBe(204);
      expect((await api.call('DELETE', `/v2.0/security-groups/${target.id}`)).status).toBe(204);
    });
  });

  describe('bad input (400, the field named, nothing stored)', () => {
    const cases: Array<[string, unknown, RegExp]> = [
      ['unknown field', { security_group: { name: 'x', colour: 'red' } }, /Unrecognized attribute\(s\) 'colour'/],
      ['unknown envelope field', { security_group: { name: 'x' }, extra: 1 }, /'extra'/],
      ['missing envelope', { name: 'x' }, /'name'|security_group/],
      ['missing name', { security_group: { description: 'd' } }, /'name'/],
      ['name not a string', { security_group: { name: 42 } }, /name.*must be a string/],
      ['name too long', { security_group: { name: 'x'.repeat(256) } }, /name/],
      ['description not a string', { security_group: { name: 'x', description: ['a'] } }, /description/],
      ['body not an object', [1, 2], /body/],
    ];
    it.each(cases)('%s', async (_label, body, message) => {
      const seq = await api.seq();
      await api.fails(400, 'HTTPBadRequest', 'POST', '/v2.0/security-groups', { body, message });
      expect(await api.seq()).toBe(seq);
    });

    it('a name with control characters (the store refuses it)', async () => {
      const seq = await api.seq();
      await api.fails(400, 'InvalidInput', 'POST', '/v2.0/security-groups', {
        body: { security_group: { name: 'bad\nname' } },
        message: /Invalid input for name/,
      });
      expect(await api.seq()).toBe(seq);
    });

    it('an update with an unknown field or a wrong type', async () => {
      const { security_group: g } = await api.ok(201, 'POST', '/v2.0/security-groups', {
        body: { security_group: { name: unique('fixed') } },
      });
      const seq = await api.seq();
      await api.fails(400, 'HTTPBadRequest', 'PUT', `/v2.0/security-groups/${g.id}`, {
        body: { security_group: { project_id: 'other' } },
        message: /'project_id'/,
      });
      await api.fails(400, 'HTTPBadRequest', 'PUT', `/v2.0/security-groups/${g.id}`, {
        body: { security_group: { name: null } },
        message: /name/,
      });
      expect(await api.seq()).toBe(seq);
    });

    it('an unknown list filter', async () => {
      await api.fails(400, 'HTTPBadRequest', 'GET', '/v2.0/security-groups?colour=red', { message: /'colour'/ });
    });

    it('malformed JSON', async () => {
      const res = await api.call('POST', '/v2.0/security-groups', {
        body: '{"security_group": {',
        headers: { 'content-type': 'application/json' },
      });
      expect(res.status).toBe(400);
      expect(res.json.NeutronError.type).toBe('HTTPBadRequest');
    });
  });

  it('an unknown id is 404 SecurityGroupNotFound', async () => {
    await api.fails(404, 'SecurityGroupNotFound', 'GET', '/v2.0/security-groups/no-such-group');
    await api.fails(404, 'SecurityGroupNotFound', 'PUT', '/v2.0/security-groups/no-such-group', {
      body: { security_group: { name: 'x' } },
    });
    await api.fails(404, 'SecurityGroupNotFound', 'DELETE', '/v2.0/security-groups/no-such-group');
  });
});
