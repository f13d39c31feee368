import { describe, expect, it } from 'vitest';
import { InMemoryVirtAPI } from '../../src/virtapi/memory.js';

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
