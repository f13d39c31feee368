import { beforeAll, describe, expect, it } from 'vitest';
import { BACKENDS, unique, useApi, vif } from './harness.js';

describe.each(BACKENDS)('instances (%s)', (backend) => {
  const api = useApi(backend, 'instances');
  let web = '';
  let db = '';
  let defaultGroup = '';

  beforeAll(async () => {
    const mk = async (name: string) =>
      (await api.ok(201, 'POST', '/v2.0/security-groups', { body: { security_group: { name: unique(name) } } })).security_group.id;
    web = await mk('web');
    db = await mk('db');
    const list = await api.ok(200, 'GET', '/v2.0/security-groups');
    defaultGroup = list.security_groups.find((g: { name: string }) => g.name === 'default').id;
  });

  it('creates an instance with its groups and Nova network info, and shows it', async () => {
    const nic = vif('tap-web1', 11);
    const res = await api.call('POST', '/v2.0/instances', {
      body: { instance: { id: 'vm-web-1', name: 'web 1', host: 'compute-1', security_groups: [web, db], network_info: [nic] } },
    });
    expect(res.status, res.text).toBe(201);
    const inst = res.json.instance;
    expect(inst).toEqual({
      id: 'vm-web-1',
      name: 'web 1',
      host: 'compute-1',
      project_id: 'demo',
      tenant_id: 'demo',
      security_groups: [web, db],
      network_info: [nic],
      created_at: expect.any(String),
      updated_at: expect.any(String),
      revision_number: expect.any(Number),
    });
    expect((await api.ok(200, 'GET', '/v2.0/instances/vm-web-1')).instance).toEqual(inst);
    expect((await api.ok(200, 'GET', '/v2.0/instances')).instances).toContainEqual(inst);
  });

  it('an instance without groups joins the default group; the id is made when not given', async () => {
    const { instance } = await api.ok(201, 'POST', '/v2.0/instances', {
      body: { instance: { name: 'plain', host: 'compute-2' } },
    });
    expect(instance.id).toEqual(expect.any(String));
    expect(instance.security_groups).toEqual([defaultGroup]);
    expect(instance.network_info).toEqual([]);
    const { instance: empty } = await api.ok(201, 'POST', '/v2.0/instances', {
      body: { instance: { name: 'plain2', host: 'compute-2', security_groups: [] } },
    });
    expect(empty.security_groups).toEqual([defaultGroup]);
  });

  it("a new project's first request is an instance: it joins the project's new default group", async () => {
    const { instance } = await api.ok(201, 'POST', '/v2.0/instances', {
      as: 'other',
      body: { instance: { name: 'first', host: 'compute-3' } },
    });
    const groups = await api.ok(200, 'GET', '/v2.0/security-groups', { as: 'other' });
    expect(groups.security_groups).toHaveLength(1);
    expect(groups.security_groups[0]).toMatchObject({ name: 'default', project_id: 'other' });
    expect(groups.security_groups[0].security_group_rules).toHaveLength(4);
    expect(instance.security_groups).toEqual([groups.security_groups[0].id]);
  });

  it('lists by host', async () => {
    await api.ok(201, 'POST', '/v2.0/instances', { body: { instance: { name: 'a', host: 'host-list-a' } } });
    await api.ok(201, 'POST', '/v2.0/instances', { body: { instance: { name: 'b', host: 'host-list-a' } } });
    await api.ok(201, 'POST', '/v2.0/instances', { body: { instance: { name: 'c', host: 'host-list-b' } } });
    const a = await api.ok(200, 'GET', '/v2.0/instances?host=host-list-a');
    expect(a.instances.map((i: { name: string }) => i.name).sort()).toEqual(['a', 'b']);
    const none = await api.ok(200, 'GET', '/v2.0/instances?host=host-list-none');
    expect(none.instances).toEqual([]);
  });

  it('updates name, host, groups and network info', async () => {
    const { instance } = await api.ok(201, 'POST', '/v2.0/instances', {
      body: { instance: { name: 'mover', host: 'compute-1', security_groups: [web], network_info: [vif('tap-mv', 20)] } },
    });
    const { instance: moved } = await api.ok(200, 'PUT', `/v2.0/instances/${instance.id}`, {
      body: { instance: { name: 'moved', host: 'compute-9', security_groups: [db, web], network_info: [vif('tap-mv2', 21)] } },
    });
    expect(moved).toMatchObject({
      id: instance.id,
      name: 'moved',
      host: 'compute-9',
      security_groups: [db, web],
      network_info: [vif('tap-mv2', 21)],
    });
    expect(moved.revision_number).toBeGreaterThan(instance.revision_number);
    const { instance: renamed } = await api.ok(200, 'PUT', `/v2.0/instances/${instance.id}`, {
      body: { instance: { name: 'renamed' } },
    });
    expect(renamed).toMatchObject({ name: 'renamed', host: 'compute-9', security_groups: [db, web] });
    expect((await api.ok(200, 'GET', `/v2.0/instances/${instance.id}`)).instance).toEqual(renamed);
  });

  it('deletes (204), then it is not found', async () => {
    const { instance } = await api.ok(201, 'POST', '/v2.0/instances', { body: { instance: { name: 'gone', host: 'compute-1' } } });
    const res = await api.call('DELETE', `/v2.0/instances/${instance.id}`);
    expect(res.status).toBe(204);
    await api.fails(404, 'InstanceNotFound', 'GET', `/v2.0/instances/${instance.id}`);
    await api.fails(404, 'InstanceNotFound', 'DELETE', `/v2.0/instances/${instance.id}`);
  });

  it('an unknown id is 404 InstanceNotFound', async () => {
    await api.fails(404, 'InstanceNotFound', 'GET', '/v2.0/instances/no-such-vm');
    await api.fails(404, 'InstanceNotFound', 'PUT', '/v2.0/instances/no-such-vm', { body: { instance: { name: 'x' } } });
    await api.fails(404, 'InstanceNotFound', 'DELETE', '/v2.0/instances/no-such-vm');
  });

  it('a duplicate id is 409', async () => {
    await api.ok(201, 'POST', '/v2.0/instances', { body: { instance: { id: 'vm-dup', name: 'one', host: 'compute-1' } } });
    const seq = await api.seq();
    await api.fails(409, 'InstanceExists', 'POST', '/v2.0/instances', { body: { instance: { id: 'vm-dup', name: 'two', host: 'compute-1' } } });
    expect(await api.seq()).toBe(seq);
  });

  describe('projects', () => {
    it("another project's instance is not found, and not listed", async () => {
      const { instance } = await api.ok(201, 'POST', '/v2.0/instances', { body: { instance: { name: 'mine', host: 'compute-1' } } });
      await api.fails(404, 'InstanceNotFound', 'GET', `/v2.0/instances/${instance.id}`, { as: 'other' });
      await api.fails(404, 'InstanceNotFound', 'PUT', `/v2.0/instances/${instance.id}`, {
        as: 'other',
        body: { instance: { name: 'stolen' } },
      });
      await api.fails(404, 'InstanceNotFound', 'DELETE', `/v2.0/instances/${instance.id}`, { as: 'other' });
      const list = await api.ok(200, 'GET', '/v2.0/instances', { as: 'other' });
      expect(list.instances.map((i: { id: string }) => i.id)).not.toContain(instance.id);
      expect((await api.ok(200, 'GET', `/v2.0/instances/${instance.id}`)).instance.name).toBe('mine');
    });

    it("joining another project's group is 404", async () => {
      const seq = await api.seq();
      await api.fails(404, 'SecurityGroupNotFound', 'POST', '/v2.0/instances', {
        as: 'other',
        body: { instance: { name: 'sneaky', host: 'compute-1', security_groups: [web] } },
      });
      await api.fails(404, 'SecurityGroupNotFound', 'POST', '/v2.0/instances', {
        body: { instance: { name: 'typo', host: 'compute-1', security_groups: ['no-such-group'] } },
      });
      expect(await api.seq()).toBe(seq);
    });

    it('an admin sees every project and may create for another project', async () => {
      const { instance } = await api.ok(201, 'POST', '/v2.0/instances', {
        as: 'admin',
        body: { instance: { name: 'managed', host: 'compute-7', project_id: 'tenant7' } },
      });
      expect(instance).toMatchObject({ project_id: 'tenant7', tenant_id: 'tenant7' });
      const groups = await api.ok(200, 'GET', '/v2.0/security-groups', { as: 'admin' });
      const tenantDefault = groups.security_groups.find(
        (g: { project_id: string; name: string }) => g.project_id === 'tenant7' && g.name === 'default',
      );
      expect(instance.security_groups).toEqual([tenantDefault.id]);
      const all = await api.ok(200, 'GET', '/v2.0/instances', { as: 'admin' });
      const projects = new Set(all.instances.map((i: { project_id: string }) => i.project_id));
      expect(projects).toContain('demo');
      expect(projects).toContain('tenant7');
      await api.fails(400, 'HTTPBadRequest', 'POST', '/v2.0/instances', {
        body: { instance: { name: 'x', host: 'compute-1', tenant_id: 'tenant7' } },
        message: /tenant_id/,
      });
    });
  });

  describe('bad input (400, the field named, nothing stored)', () => {
    const base = { name: 'bad', host: 'compute-1' };
    const cases: Array<[string, Record<string, unknown>, RegExp]> = [
      ['devname with spaces', { network_info: [vif('tap one')] }, /network_info\[0\]\.devname/],
      ['devname too long', { network_info: [vif('tap-0123456789abc')] }, /network_info\[0\]\.devname/],
      ['devname missing', { network_info: [{ address: 'fa:16:3e:00:00:01' }] }, /network_info\[0\]\.devname/],
      ['devname used twice', { network_info: [vif('tap-x', 1), vif('tap-x', 2)] }, /network_info\[1\]\.devname/],
      ['MAC address invalid', { network_info: [{ ...vif('tap-y'), address: 'zz:16:3e:00:00:01' }] }, /network_info\[0\]\.address/],
      [
        'subnet CIDR invalid',
        { network_info: [{ ...vif('tap-z'), network: { subnets: [{ cidr: '10.0.0.0/33' }] } }] },
        /network_info\[0\]\.network\.subnets\[0\]\.cidr/,
      ],
      [
        'subnets not an array',
        { network_info: [{ ...vif('tap-s'), network: { subnets: 'x' } }] },
        /Invalid input for network_info\[0\]\.network\.subnets\. Reason: must be an array/,
      ],
      ['network_info not an array', { network_info: { devname: 'tap' } }, /network_info/],
      ['id with quotes', { id: 'vm"1' }, /Invalid input for id\b/],
      ['id with a space', { id: 'vm 1' }, /Invalid input for id\b/],
      ['id starting like an option', { id: '-vm' }, /Invalid input for id\b/],
      ['host with spaces', { host: 'compute 1' }, /host/],
      ['host missing', { host: undefined }, /'host'/],
      ['name missing', { name: undefined }, /'name'/],
      ['name of a wrong type', { name: 5 }, /name/],
      ['security_groups not an array', { security_groups: 'web' }, /security_groups/],
      ['security group id of a wrong type', { security_groups: [5] }, /security_groups\[0\]/],
      ['security group id with quotes', { security_groups: ['a"b'] }, /security_groups\[0\]/],
      ['unknown field', { flavor: 'm1.small' }, /Unrecognized attribute\(s\) 'flavor'/],
    ];
    it.each(cases)('%s', async (_label, fields, message) => {
      const seq = await api.seq();
      const body = { instance: { ...base, ...fields } };
      const res = await api.call('POST', '/v2.0/instances', { body: JSON.parse(JSON.stringify(body)) });
      expect(res.status, res.text).toBe(400);
      expect(res.json.NeutronError.type).toMatch(/^(HTTPBadRequest|InvalidInput)$/);
      expect(res.json.NeutronError.message).toMatch(message);
      expect(res.json.NeutronError.message).not.toMatch(/networkInfo|securityGroups/);
      expect(await api.seq()).toBe(seq);
    });

    it('the same checks apply to an update, which changes nothing', async () => {
      const { instance } = await api.ok(201, 'POST', '/v2.0/instances', {
        body: { instance: { name: 'keep', host: 'compute-1', network_info: [vif('tap-keep', 30)] } },
      });
      const seq = await api.seq();
      await api.fails(400, /^(HTTPBadRequest|InvalidInput)$/, 'PUT', `/v2.0/instances/${instance.id}`, {
        body: { instance: { network_info: [vif('tap keep')] } },
        message: /network_info\[0\]\.devname/,
      });
      await api.fails(400, 'HTTPBadRequest', 'PUT', `/v2.0/instances/${instance.id}`, {
        body: { instance: { id: 'renamed' } },
        message: /'id'/,
      });
      await api.fails(400, 'HTTPBadRequest', 'PUT', `/v2.0/instances/${instance.id}`, {
        body: { instance: { host: 'a b' } },
        message: /host/,
      });
      expect(await api.seq()).toBe(seq);
      expect((await api.ok(200, 'GET', `/v2.0/instances/${instance.id}`)).instance).toEqual(instance);
    });

    it('a bad host filter', async () => {
      await api.fails(400, 'HTTPBadRequest', 'GET', '/v2.0/instances?host=a%20b', { message: /host/ });
    });
  });
});
