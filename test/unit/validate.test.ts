import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../src/errors.js';
import ipaddr from 'ipaddr.js';
import { linkLocalFromMac, parseAddress, parseCidr } from '../../src/model/addresses.js';
import {
  givenMemberAddresses,
  groupMemberAddresses,
  memberAddresses,
  normalizeInstance,
  normalizeProviderRule,
  normalizeRule,
  vouchForMemberAddresses,
} from '../../src/model/validate.js';

function fieldOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ValidationError);
    return (err as ValidationError).field;
  }
  throw new Error('expected a ValidationError');
}

const vif = (extra: Record<string, unknown> = {}) => ({
  address: 'fa:16:3e:00:00:01',
  devname: 'tap1',
  network: { subnets: [{ cidr: '10.0.0.0/24', ips: [{ address: '10.0.0.5' }] }] },
  ...extra,
});

describe('rule validation names the bad field', () => {
  it.each([
    ['malformed CIDR', { remoteIpPrefix: '10.0.0.0/33' }, 'rule.remoteIpPrefix'],
    ['legacy IPv4 form', { remoteIpPrefix: '10.1/8' }, 'rule.remoteIpPrefix'],
    ['zero-padded prefix length', { remoteIpPrefix: '10.0.0.0/024' }, 'rule.remoteIpPrefix'],
    ['port 0', { protocol: 'tcp', portRangeMin: 0, portRangeMax: 10 }, 'rule.portRangeMin'],
    ['port above 65535', { protocol: 'udp', portRangeMin: 1, portRangeMax: 65536 }, 'rule.portRangeMax'],
    ['from > to', { protocol: 'tcp', portRangeMin: 90, portRangeMax: 80 }, 'rule.portRangeMin'],
    ['max without min', { protocol: 'tcp', portRangeMax: 80 }, 'rule.portRangeMin'],
    ['ports without protocol', { portRangeMin: 80, portRangeMax: 80 }, 'rule.portRangeMin'],
    ['ports on gre', { protocol: 'gre', portRangeMin: 80 }, 'rule.portRangeMin'],
    ['icmp type 256', { protocol: 'icmp', portRangeMin: 256 }, 'rule.portRangeMin'],
    ['icmp type -2', { protocol: 'icmp', portRangeMin: -2 }, 'rule.portRangeMin'],
    ['icmp code 300', { protocol: 'icmp', portRangeMin: 8, portRangeMax: 300 }, 'rule.portRangeMax'],
    ['icmp code without type', { protocol: 'icmp', portRangeMin: -1, portRangeMax: 0 }, 'rule.portRangeMax'],
    ['unknown protocol', { protocol: 'tcpp' }, 'rule.protocol'],
    ['protocol 256', { protocol: 256 }, 'rule.protocol'],
    ['protocol 0', { protocol: 0 }, 'rule.protocol'],
    ['option-like protocol', { protocol: '-j ACCEPT' }, 'rule.protocol'],
    ['icmpv6 on IPv4', { protocol: 'icmpv6', ethertype: 'IPv4' }, 'rule.protocol'],
    ['bad direction', { direction: 'inbound' }, 'rule.direction'],
    ['bad ethertype', { ethertype: 'IPX' }, 'rule.ethertype'],
    ['ethertype/prefix conflict', { ethertype: 'IPv6', remoteIpPrefix: '10.0.0.0/8' }, 'rule.remoteIpPrefix'],
    ['both remotes', { remoteIpPrefix: '10.0.0.0/8', remoteGroupId: 'g' }, 'rule.remoteGroupId'],
    ['group id with space', { remoteGroupId: 'a b' }, 'rule.remoteGroupId'],
    ['group id with quote', { remoteGroupId: 'a"b' }, 'rule.remoteGroupId'],
    ['group id with newline', { remoteGroupId: 'a\nb' }, 'rule.remoteGroupId'],
    ['option-like group id', { remoteGroupId: '--flush' }, 'rule.remoteGroupId'],
    ['non-integer port', { protocol: 'tcp', portRangeMin: 8.5 }, 'rule.portRangeMin'],
  ])('%s', (_name, rule, field) => {
    expect(fieldOf(() => normalizeRule(rule))).toBe(field);
  });

  it.each([
    ['missing cidr', { protocol: 'tcp' }, 'providerRule.cidr'],
    ['bad port range', { cidr: '10.0.0.0/8', protocol: 'tcp', fromPort: 10, toPort: 5 }, 'providerRule.fromPort'],
    ['unknown protocol', { cidr: '10.0.0.0/8', protocol: 'foo' }, 'providerRule.protocol'],
  ])('provider rule: %s', (_name, rule, field) => {
    expect(fieldOf(() => normalizeProviderRule(rule))).toBe(field);
  });
});

describe('rule normalisation', () => {
  it('defaults to ingress IPv4 and reads the family from the prefix', () => {
    expect(normalizeRule({ protocol: 'TCP', portRangeMin: 22 })).toMatchObject({
      direction: 'ingress',
      version: 4,
      protocol: { name: 'tcp', number: 6 },
      ports: { kind: 'ports', from: 22, to: 22 },
      remote: { kind: 'any' },
    });
    expect(normalizeRule({ remoteIpPrefix: '2001:DB8::5/64' })).toMatchObject({
      version: 6,
      remote: { kind: 'cidr', cidr: '2001:db8::/64' },
    });
  });

  it('turns icmp into icmpv6 for IPv6 and keeps -1 as any (Nova)', () => {
    expect(normalizeRule({ ethertype: 'IPv6', protocol: 'icmp', portRangeMin: 128, portRangeMax: -1 })).toMatchObject({
      protocol: { name: 'ipv6-icmp', number: 58 },
      ports: { kind: 'icmp', type: 128, code: -1 },
    });
    expect(normalizeRule({ protocol: 'icmp', portRangeMin: -1, portRangeMax: -1 }).ports).toEqual({ kind: 'any' });
  });

  it('treats /0 as no remote, "any" as every protocol and numbers as protocols', () => {
    expect(normalizeRule({ remoteIpPrefix: '0.0.0.0/0' }).remote).toEqual({ kind: 'any' });
    expect(normalizeRule({ protocol: 'any' }).protocol).toBeNull();
    expect(normalizeRule({ protocol: 47 }).protocol).toEqual({ name: '47', number: 47 });
    expect(normalizeRule({ protocol: '6', portRangeMin: 80 }).protocol).toEqual({ name: 'tcp', number: 6 });
  });
});

describe('instance and network info validation', () => {
  it.each([
    ['id with spaces', { id: 'a b' }, [vif()], 'instance.id'],
    ['id with quote', { id: "a'b" }, [vif()], 'instance.id'],
    ['option-like id', { id: '-X' }, [vif()], 'instance.id'],
    ['missing id', {}, [vif()], 'instance.id'],
    ['name with newline', { id: 'a', name: 'x\ny' }, [vif()], 'instance.name'],
    ['devname with space', { id: 'a' }, [vif({ devname: 'tap 1' })], 'networkInfo[0].devname'],
    ['devname too long', { id: 'a' }, [vif({ devname: 'tap0123456789abc' })], 'networkInfo[0].devname'],
    ['option-like devname', { id: 'a' }, [vif({ devname: '-i' })], 'networkInfo[0].devname'],
    ['devname with quote', { id: 'a' }, [vif({ devname: 'ta"p' })], 'networkInfo[0].devname'],
    ['multicast MAC', { id: 'a' }, [vif({ address: '01:00:5e:00:00:01' })], 'networkInfo[0].address'],
    ['bad MAC', { id: 'a' }, [vif({ address: 'fa:16:3e:00:00' })], 'networkInfo[0].address'],
    [
      'bad subnet cidr',
      { id: 'a' },
      [vif({ network: { subnets: [{ cidr: '10.0.0.0/40' }] } })],
      'networkInfo[0].network.subnets[0].cidr',
    ],
    [
      'IPv6 address in IPv4 subnet',
      { id: 'a' },
      [vif({ network: { subnets: [{ cidr: '10.0.0.0/24', ips: [{ address: '2001:db8::1' }] }] } })],
      'networkInfo[0].network.subnets[0].ips[0].address',
    ],
    [
      'bad dhcp server',
      { id: 'a' },
      [vif({ network: { subnets: [{ cidr: '10.0.0.0/24', meta: { dhcp_server: '10.0.0' } }] } })],
      'networkInfo[0].network.subnets[0].meta.dhcp_server',
    ],
    [
      'version that disagrees with cidr',
      { id: 'a' },
      [vif({ network: { subnets: [{ cidr: '10.0.0.0/24', version: 6 }] } })],
      'networkInfo[0].network.subnets[0].version',
    ],
    ['duplicate devname', { id: 'a' }, [vif(), vif({ address: 'fa:16:3e:00:00:02' })], 'networkInfo[1].devname'],
    ['not an array', { id: 'a' }, { devname: 'x' }, 'networkInfo'],
  ])('%s', (_name, instance, networkInfo, field) => {
    expect(fieldOf(() => normalizeInstance(instance as never, networkInfo))).toBe(field);
  });

  it('normalises a Nova VIF', () => {
    const inst = normalizeInstance({ id: 7 as unknown as string }, [
      vif({
        type: 'tap',
        address: 'FA:16:3E:00:00:01',
        network: {
          subnets: [
            { cidr: '10.0.0.0/24', gateway: { address: '10.0.0.1' }, ips: [{ address: '10.0.0.5' }], meta: { dhcp_server: '10.0.0.2' } },
            { cidr: '2001:db8::/64', gateway: '2001:db8::1', ips: [{ address: '2001:DB8::0005' }] },
          ],
        },
      }),
    ]);
    expect(inst).toEqual({
      id: '7',
      name: null,
      deleted: false,
      vifs: [
        {
          devname: 'tap1',
          mac: 'fa:16:3e:00:00:01',
          routed: true,
          subnets: [
            { cidr: '10.0.0.0/24', version: 4, gateway: '10.0.0.1', dhcpServer: '10.0.0.2', ips: ['10.0.0.5'] },
            { cidr: '2001:db8::/64', version: 6, gateway: '2001:db8::1', dhcpServer: null, ips: ['2001:db8::5'] },
          ],
        },
      ],
    });
  });
});

describe('member addresses', () => {
  const member = (address: string, cidr = '10.0.0.0/24') => ({
    instance: { id: 'm1' },
    networkInfo: [{ id: 'p', address: 'fa:16:3e:00:00:01', network: { subnets: [{ cidr, ips: [{ address }] }] } }],
  });

  it('gives the canonical addresses per family', () => {
    expect(memberAddresses(member('10.0.0.7'), 'members[0]')).toEqual({ 4: ['10.0.0.7'], 6: [] });
    expect(memberAddresses(member('2001:DB8::0:7', '2001:db8::/64'), 'members[0]')).toEqual({ 4: [], 6: ['2001:db8::7'] });
  });

  it.each([
    ['not an address', '10.0.0'],
    ['the other family', '2001:db8::7'],
  ])('names the bad address: %s', (_label, address) => {
    const err = (() => {
      try {
        memberAddresses(member(address), 'securityGroup g members[3]');
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(ValidationError);
    expect((err as ValidationError).field).toBe('securityGroup g members[3].networkInfo[0].network.subnets[0].ips[0].address');
  });

  it('builds the field name only for an error, from a function', () => {
    let built = 0;
    const field = () => {
      built += 1;
      return 'securityGroup g members[4]';
    };
    expect(memberAddresses(member('10.0.0.8'), field)).toEqual({ 4: ['10.0.0.8'], 6: [] });
    expect(built).toBe(0);
    expect(() => memberAddresses({ instance: { id: 'bad id' } }, field)).toThrow(
      expect.objectContaining({ field: 'securityGroup g members[4].instance.id' }),
    );
    expect(built).toBe(1);
  });

  it('skips a deleted member and refuses a deleted flag that is not a boolean', () => {
    expect(memberAddresses({ ...member('10.0.0.7'), instance: { id: 'm1', deleted: true } }, 'm')).toBeNull();
    expect(() => memberAddresses({ ...member('10.0.0.7'), instance: { id: 'm1', deleted: 'yes' } }, 'm')).toThrow(
      expect.objectContaining({ field: 'm.instance.deleted' }),
    );
  });

  it('gives a group\'s addresses per family, sorted, each once, without deleted members', () => {
    const records = [
      member('10.0.0.9'),
      { ...member('10.0.0.5'), instance: { id: 'gone', deleted: true } },
      member('2001:db8::2', '2001:db8::/64'),
      member('10.0.0.10'),
      member('10.0.0.9'),
    ];
    expect(groupMemberAddresses(records, 'securityGroup g members')).toEqual({ 4: ['10.0.0.10', '10.0.0.9'], 6: ['2001:db8::2'] });
    expect(groupMemberAddresses([], 'securityGroup g members')).toEqual({ 4: [], 6: [] });
  });

  it('names the member a group\'s bad record is', () => {
    expect(() => groupMemberAddresses([member('10.0.0.9'), member('10.0.0.9'), member('10.0.1')], 'securityGroup g members')).toThrow(
      expect.objectContaining({ field: 'securityGroup g members[2].networkInfo[0].network.subnets[0].ips[0].address' }),
    );
  });

  it('checks only what membership needs: a member\'s name does not block its group', () => {
    expect(memberAddresses({ ...member('10.0.0.7'), instance: { id: 'm1', name: 'bad\nname' } }, 'm')).toEqual({ 4: ['10.0.0.7'], 6: [] });
  });

  it.each([
    ['a record that is not an object', 'x', 'm'],
    ['an instance without an id', { instance: {} }, 'm.instance.id'],
    ['network info that is not an array', { instance: { id: 'm1' }, networkInfo: {} }, 'm.networkInfo'],
  ])('names the field of %s', (_label, record, field) => {
    expect(() => memberAddresses(record, 'm')).toThrow(expect.objectContaining({ field }));
  });
});

describe('addresses', () => {
  it('derives the EUI-64 link-local address the kernel uses', () => {
    expect(linkLocalFromMac('fa:16:3e:00:00:0a')).toBe('fe80::f816:3eff:fe00:a');
    expect(linkLocalFromMac('02:00:00:00:00:01')).toBe('fe80::ff:fe00:1');
    expect(linkLocalFromMac('02:00:00:00:00:00')).toBe('fe80::ff:fe00:0');
    expect(linkLocalFromMac('00:00:00:00:00:00')).toBe('fe80::200:ff:fe00:0');
  });

  it('writes the link-local address as RFC 5952 does, for any MAC', () => {
    // ipaddr.js's canonical text of the same bytes is the reference.
    const macs = ['02:00:00:00:00:00', '02:00:00:12:34:56', 'fe:ff:ff:ff:ff:ff', '02:01:00:00:00:00', '00:00:ff:00:00:00'];
    let seed = 7;
    const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % 256;
    for (let i = 0; i < 2000; i++) macs.push(Array.from({ length: 6 }, () => next().toString(16).padStart(2, '0')).join(':'));
    for (const mac of macs) {
      const b = mac.split(':').map((h) => parseInt(h, 16));
      const bytes = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, (b[0] as number) ^ 2, b[1], b[2], 0xff, 0xfe, b[3], b[4], b[5]] as number[];
      expect(linkLocalFromMac(mac), mac).toBe(ipaddr.fromByteArray(bytes).toString());
    }
  });

  it('reads addresses into canonical text and refuses every other form', () => {
    const good: [string, string, 4 | 6][] = [
      ['10.0.0.5', '10.0.0.5', 4],
      ['0.0.0.0', '0.0.0.0', 4],
      ['255.255.255.255', '255.255.255.255', 4],
      ['2001:DB8:0:0:0:0:0:1', '2001:db8::1', 6],
      ['::', '::', 6],
      ['fe80::f816:3eff:fe00:a', 'fe80::f816:3eff:fe00:a', 6],
      ['::ffff:10.0.0.1', '::ffff:a00:1', 6],
    ];
    for (const [text, address, version] of good) expect(parseAddress(text), text).toEqual({ address, version });
    const bad = ['256.0.0.1', '10.0.0.999', '010.0.0.1', '10.1', '10.0.0.1.2', '0x0a.0.0.1', '10.0.0.1 ', '1::2::3', 'gggg::1', '2001:db8::/64', 'fe80::1%eth0', '', 'localhost', 42];
    for (const text of bad) expect(parseAddress(text), String(text)).toBeNull();
  });

  it('clears host bits and reads a bare address as a host route', () => {
    expect(parseCidr('10.0.0.5/24')?.cidr).toBe('10.0.0.0/24');
    expect(parseCidr('10.0.0.5')?.cidr).toBe('10.0.0.5/32');
    expect(parseCidr('2001:db8::1%eth0')).toBeNull();
  });
});

describe('member addresses a store gives ready-made', () => {
  const field = 'securityGroup g member addresses';

  it('gives them canonical, sorted, each once, per family', () => {
    const given = { 4: ['10.0.0.9', '10.0.0.10', '10.0.0.9'], 6: ['2001:DB8::0:2', '2001:db8::1'] };
    expect(givenMemberAddresses(given, field)).toEqual({ 4: ['10.0.0.10', '10.0.0.9'], 6: ['2001:db8::1', '2001:db8::2'] });
    expect(givenMemberAddresses({ 4: [] }, field)).toEqual({ 4: [], 6: [] });
  });

  it.each([
    ['not an object', null, field],
    ['a family that is not a list', { 4: '10.0.0.1', 6: [] }, `${field}[4]`],
    ['not an address', { 4: ['10.0.0.1', '10.0.1'], 6: [] }, `${field}[4][1]`],
    ['an address of the other family', { 4: [], 6: ['10.0.0.1'] }, `${field}[6][0]`],
  ])('names what is wrong: %s', (_label, given, named) => {
    expect(fieldOf(() => givenMemberAddresses(given, field))).toBe(named);
  });

  it('checks a frozen answer once, and a changeable one every time it is given', () => {
    const frozen = Object.freeze({ 4: Object.freeze(['10.0.0.2', '10.0.0.1']), 6: Object.freeze([]) });
    const first = givenMemberAddresses(frozen, field);
    expect(first).toEqual({ 4: ['10.0.0.1', '10.0.0.2'], 6: [] });
    expect(givenMemberAddresses(frozen, field)).toBe(first);

    const open = { 4: ['10.0.0.1'], 6: [] as string[] };
    expect(givenMemberAddresses(open, field)).toEqual({ 4: ['10.0.0.1'], 6: [] });
    open[4].push('not an address');
    expect(fieldOf(() => givenMemberAddresses(open, field))).toBe(`${field}[4][1]`);

    // Frozen, but a getter may answer differently each time: checked every time.
    let n = 0;
    const getter = Object.freeze(Object.defineProperty({ 6: Object.freeze([]) }, 4, { get: () => (n++ === 0 ? ['10.0.0.1'] : ['x']), enumerable: true }));
    expect(givenMemberAddresses(getter, field)).toEqual({ 4: ['10.0.0.1'], 6: [] });
    expect(fieldOf(() => givenMemberAddresses(getter, field))).toBe(`${field}[4][0]`);
  });

  it('takes a vouched-for answer as it is, and vouches only for frozen ones', () => {
    const answer = vouchForMemberAddresses(Object.freeze({ 4: Object.freeze(['10.0.0.1']), 6: Object.freeze([]) }));
    expect(givenMemberAddresses(answer, field)).toBe(answer);
    expect(() => vouchForMemberAddresses({ 4: ['10.0.0.1'], 6: [] })).toThrow(TypeError);
    expect(() => vouchForMemberAddresses(Object.freeze({ 4: ['10.0.0.1'], 6: Object.freeze([]) }))).toThrow(TypeError);
  });

  it('names a member record\'s parts alone for an empty field', () => {
    expect(fieldOf(() => memberAddresses({ instance: { id: 'bad id' } }, ''))).toBe('instance.id');
    expect(
      fieldOf(() => memberAddresses({ instance: { id: 'm1' }, networkInfo: [{ network: { subnets: [{ ips: [{ address: 'x' }] }] } }] }, '')),
    ).toBe('networkInfo[0].network.subnets[0].ips[0].address');
  });
});
