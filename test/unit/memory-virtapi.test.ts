import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../src/errors.js';
import { givenMemberAddresses, groupMemberAddresses } from '../../src/model/validate.js';
import { InMemoryVirtAPI } from '../../src/virtapi/memory.js';
import { vif } from '../helpers/scenarios.js';

const ids = async (api: InMemoryVirtAPI, groupId: string) =>
  (await api.getSecurityGroupMembers(groupId)).map((m) => m.instance.id).sort();

describe('InMemoryVirtAPI group members', () => {
  it('follows puts, regrouping and removal', async () => {
    const api = new InMemoryVirtAPI();
    api.putInstance({ id: 'a' }, [], ['g1', 'g2']).putInstance({ id: 'b' }, [], ['g1']);
    expect(await ids(api, 'g1')).toEqual(['a', 'b']);
    expect(await ids(api, 'g2')).toEqual(['a']);

    api.putInstance({ id: 'a', name: 'again' }, [], ['g2']); // put again, in other groups
    expect(await ids(api, 'g1')).toEqual(['b']);
    expect((await api.getSecurityGroupMembers('g2'))[0]?.instance.name).toBe('again');

    api.setInstanceGroups('b', ['g2', 'g3']);
    expect(await ids(api, 'g1')).toEqual([]);
    expect(await ids(api, 'g2')).toEqual(['a', 'b']);
    expect(await ids(api, 'g3')).toEqual(['b']);

    api.removeInstance('a');
    expect(await ids(api, 'g2')).toEqual(['b']);
    expect(await ids(api, 'nothing')).toEqual([]);
  });

  it('hands out a copy of the instance, so a caller cannot change what it stores', async () => {
    const api = new InMemoryVirtAPI().putInstance({ id: 'a', name: 'x' }, [], ['g']);
    const [first] = await api.getSecurityGroupMembers('g');
    if (first) first.instance.name = 'changed';
    expect((await api.getSecurityGroupMembers('g'))[0]?.instance.name).toBe('x');
  });
});

describe('InMemoryVirtAPI member addresses', () => {
  const addresses = (api: InMemoryVirtAPI, groupId: string) => api.getSecurityGroupMemberAddresses(groupId);
  const v4 = (n: number) => vif(n, { v6: false });

  it('follows puts, regrouping, replacing and removal, each address once, sorted', async () => {
    const api = new InMemoryVirtAPI();
    api.putInstance({ id: 'a' }, [vif(20)], ['g1', 'g2']).putInstance({ id: 'b' }, [v4(3)], ['g1']);
    expect(await addresses(api, 'g1')).toEqual({ 4: ['10.0.0.20', '10.0.0.3'], 6: ['2001:db8::14'] });
    expect(await addresses(api, 'g2')).toEqual({ 4: ['10.0.0.20'], 6: ['2001:db8::14'] });

    // Two members with one address: it stays while either holds it.
    api.putInstance({ id: 'c' }, [v4(3)], ['g1']);
    api.removeInstance('b');
    expect((await addresses(api, 'g1'))[4]).toEqual(['10.0.0.20', '10.0.0.3']);

    api.putInstance({ id: 'a' }, [v4(21)], ['g1']); // replaced: new address, left g2
    expect(await addresses(api, 'g1')).toEqual({ 4: ['10.0.0.21', '10.0.0.3'], 6: [] });
    expect(await addresses(api, 'g2')).toEqual({ 4: [], 6: [] });

    api.setInstanceGroups('c', ['g2', 'g2']);
    expect((await addresses(api, 'g1'))[4]).toEqual(['10.0.0.21']);
    expect((await addresses(api, 'g2'))[4]).toEqual(['10.0.0.3']);
    api.setInstanceGroups('c', []);
    expect((await addresses(api, 'g2'))[4]).toEqual([]);

    api.putInstance({ id: 'gone', deleted: true }, [v4(9)], ['g1']);
    expect((await addresses(api, 'g1'))[4]).toEqual(['10.0.0.21']);
  });

  it('agrees with the addresses of the group\'s member records', async () => {
    const api = new InMemoryVirtAPI();
    // Addresses repeat across members (n * 7 % 23), so removing one member must keep what another holds.
    for (let n = 1; n <= 40; n++) api.putInstance({ id: `m${n}` }, [vif(2 + ((n * 7) % 23), { v6: n % 3 === 0 })], [n % 2 ? 'odd' : 'even']);
    for (let n = 1; n <= 40; n += 4) api.removeInstance(`m${n}`);
    for (const group of ['odd', 'even']) {
      const fromRecords = groupMemberAddresses(await api.getSecurityGroupMembers(group), group);
      expect(fromRecords[4].length).toBeGreaterThan(5);
      expect(fromRecords[6].length).toBeGreaterThan(2);
      expect(await addresses(api, group)).toEqual(fromRecords);
    }
  });

  it('hands out one frozen answer until the group changes, taken by drivers as it is', async () => {
    const api = new InMemoryVirtAPI().putInstance({ id: 'a' }, [v4(5)], ['g']);
    const first = await addresses(api, 'g');
    expect(Object.isFrozen(first) && Object.isFrozen(first[4])).toBe(true);
    api.putInstance({ id: 'other' }, [v4(6)], ['h']);
    expect(await addresses(api, 'g')).toBe(first);
    expect(givenMemberAddresses(first, 'g')).toBe(first);
    api.putInstance({ id: 'b' }, [v4(7)], ['g']);
    expect(await addresses(api, 'g')).not.toBe(first);
    expect(first[4]).toEqual(['10.0.0.5']);
  });

  it('refuses an instance with a bad address or id, naming the field, and stores nothing', async () => {
    const api = new InMemoryVirtAPI().putInstance({ id: 'a' }, [v4(5)], ['g']);
    const bad = [{ ...vif(6), network: { subnets: [{ cidr: '10.0.0.0/24', ips: [{ address: '10.0.0.300' }] }] } }];
    expect(() => api.putInstance({ id: 'a' }, bad, ['g'])).toThrow(
      expect.objectContaining({ field: 'networkInfo[0].network.subnets[0].ips[0].address' }),
    );
    expect(() => api.putInstance({ id: 'bad id' }, [], ['g'])).toThrow(ValidationError);
    expect((await addresses(api, 'g'))[4]).toEqual(['10.0.0.5']);
    expect((await api.getSecurityGroupMembers('g')).map((m) => m.instance.id)).toEqual(['a']);
  });
});
