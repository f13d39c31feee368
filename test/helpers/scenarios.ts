/**
 * Model fixtures shared by the rendering and driver unit tests. Addresses:
 * 10.0.0.0/24 and 2001:db8::/64 are the instances' network, 10.0.1.0/24 a
 * second network, 192.0.2.0/24 and 198.51.100.0/24 outside senders.
 */
import type { NetworkInfo, SecurityGroupRule } from '../../src/model/types.js';
import { InMemoryVirtAPI } from '../../src/virtapi/memory.js';

export function vif(
  n: number,
  opts: { devname?: string; routed?: boolean; v6?: boolean; dhcp?: boolean; net?: 0 | 1 } = {},
): NetworkInfo[number] {
  const hex = n.toString(16).padStart(2, '0');
  const net = opts.net ?? 0;
  const subnets: NonNullable<NonNullable<NetworkInfo[number]['network']>['subnets']> = [
    {
      cidr: `10.0.${net}.0/24`,
      version: 4,
      gateway: { address: `10.0.${net}.1` },
      ips: [{ address: `10.0.${net}.${n}`, type: 'fixed' }],
      meta: opts.dhcp === false ? {} : { dhcp_server: `10.0.${net}.2` },
    },
  ];
  if (opts.v6 !== false) {
    subnets.push({
      cidr: `2001:db8:${net}::/64`,
      version: 6,
      gateway: { address: `2001:db8:${net}::1` },
      ips: [{ address: `2001:db8:${net}::${hex}`, type: 'fixed' }],
    });
  }
  return {
    id: `vif-${n}`,
    address: `fa:16:3e:00:${net.toString(16).padStart(2, '0')}:${hex}`,
    devname: opts.devname ?? `tap${n}`,
    ...(opts.routed ? { type: 'tap' } : { type: 'bridge' }),
    network: { id: `net-${net}`, label: `net${net}`, subnets },
  };
}

/** Every rule kind the driver renders. */
export const ALL_KINDS: SecurityGroupRule[] = [
  { direction: 'ingress', protocol: 'tcp', portRangeMin: 22, portRangeMax: 22, remoteIpPrefix: '192.0.2.0/24' },
  { direction: 'ingress', protocol: 'tcp', portRangeMin: 8000, portRangeMax: 8080 },
  { direction: 'ingress', protocol: 'udp', portRangeMin: 53, portRangeMax: 53 },
  { direction: 'ingress', protocol: 'icmp' },
  { direction: 'ingress', protocol: 'icmp', portRangeMin: 8, portRangeMax: -1 },
  { direction: 'ingress', protocol: 'icmp', portRangeMin: 3, portRangeMax: 4 },
  { direction: 'ingress', ethertype: 'IPv6', protocol: 'icmp', portRangeMin: 128 },
  { direction: 'ingress', ethertype: 'IPv6', protocol: 'tcp', portRangeMin: 443, remoteIpPrefix: '2001:db8:ff::/48' },
  { direction: 'ingress', protocol: 47, remoteIpPrefix: '198.51.100.7' },
  { direction: 'ingress', protocol: 'udplite', portRangeMin: 5000, portRangeMax: 5001 },
  { direction: 'ingress', protocol: 'sctp', portRangeMin: 3868 },
  { direction: 'ingress', remoteGroupId: 'db' },
  { direction: 'ingress', ethertype: 'IPv6', remoteGroupId: 'db' },
  { direction: 'egress', protocol: 'tcp', portRangeMin: 5432, remoteGroupId: 'db' },
  { direction: 'egress', protocol: 'udp', portRangeMin: 123, remoteIpPrefix: '203.0.113.0/24' },
  { direction: 'egress', ethertype: 'IPv6' },
];

export function exampleApi(): InMemoryVirtAPI {
  const api = new InMemoryVirtAPI();
  api.putGroup({ id: 'web', name: 'web' }, ALL_KINDS);
  api.putGroup({ id: 'db', name: 'db' }, [
    { direction: 'ingress', protocol: 'tcp', portRangeMin: 5432, remoteGroupId: 'web' },
    { direction: 'egress' },
  ]);
  api.putGroup({ id: 'empty', name: 'empty' }, []);
  api.putInstance({ id: '1', name: 'web-1' }, [vif(10)], ['web']);
  api.putInstance({ id: '2', name: 'web-2' }, [vif(11)], ['web', 'empty']);
  api.putInstance({ id: 'a6b1c7de-52f1-4a8e-9d3c-0123456789ab', name: 'db-1' }, [vif(20), vif(21, { net: 1, v6: false, dhcp: false })], ['db']);
  api.putInstance({ id: '4', name: 'routed' }, [vif(30, { routed: true })], ['db']);
  api.putInstance({ id: '5', name: 'gone', deleted: true }, [vif(40)], ['db']);
  api.addProviderRule({ cidr: '198.51.100.0/24', protocol: 'tcp', fromPort: 1, toPort: 1024 });
  api.addProviderRule({ cidr: '192.0.2.66/32', protocol: 'icmp', fromPort: 8, toPort: 0 });
  api.addProviderRule({ cidr: '2001:db8:bad::/48' });
  return api;
}
