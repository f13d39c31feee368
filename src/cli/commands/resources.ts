/**
 * `virtfw group|rule|instance|provider-rule create|list|show|delete` (and
 * `instance update`): thin wrappers over the REST API. Tables for people,
 * `--json` for scripts.
 */
import { readFileSync } from 'node:fs';
import { Option, type Command } from 'commander';
import { ValidationError } from '../../errors.js';
import { ApiClient } from '../client.js';
import { print, table } from '../output.js';

interface Resource {
  command: string;
  path: string;
  singular: string;
  plural: string;
  columns: string[];
  describe: string;
}

const RESOURCES: Record<string, Resource> = {
  group: {
    command: 'group',
    path: '/v2.0/security-groups',
    singular: 'security_group',
    plural: 'security_groups',
    columns: ['id', 'name', 'description', 'project_id'],
    describe: 'security groups',
  },
  rule: {
    command: 'rule',
    path: '/v2.0/security-group-rules',
    singular: 'security_group_rule',
    plural: 'security_group_rules',
    columns: ['id', 'security_group_id', 'direction', 'ethertype', 'protocol', 'port_range_min', 'port_range_max', 'remote_ip_prefix', 'remote_group_id'],
    describe: 'security-group rules',
  },
  instance: {
    command: 'instance',
    path: '/v2.0/instances',
    singular: 'instance',
    plural: 'instances',
    columns: ['id', 'name', 'host', 'security_groups', 'project_id'],
    describe: 'instances',
  },
  providerRule: {
    command: 'provider-rule',
    path: '/v2.0/provider-firewall-rules',
    singular: 'provider_firewall_rule',
    plural: 'provider_firewall_rules',
    columns: ['id', 'cidr', 'protocol', 'from_port', 'to_port'],
    describe: 'provider firewall rules (admin)',
  },
};

export interface ClientFlags {
  url?: string;
  token?: string;
  json?: boolean;
}

export function clientFrom(flags: ClientFlags): ApiClient {
  return new ApiClient({
    url: flags.url ?? process.env.VIRTFW_URL ?? 'http://127.0.0.1:8775',
    token: flags.token ?? process.env.VIRTFW_TOKEN,
  });
}

export function withClientFlags(cmd: Command): Command {
  return cmd
    .option('--url <url>', 'virtfw API URL (env VIRTFW_URL)', undefined)
    .option('--token <token>', 'API token (env VIRTFW_TOKEN)')
    .option('--json', 'machine-readable output');
}

function int(field: string) {
  return (value: string): number => {
    if (!/^-?\d+$/.test(value)) throw new ValidationError(field, `${JSON.stringify(value)} is not an integer`);
    return Number(value);
  };
}

/** `--port 80` or `--port 8000:8080` -> [min, max] */
function portRange(value: string): [number, number] {
  const m = /^(-?\d+)(?::(-?\d+))?$/.exec(value);
  if (!m) throw new ValidationError('--port', `${JSON.stringify(value)} is not PORT or MIN:MAX`);
  const min = Number(m[1]);
  return [min, m[2] === undefined ? min : Number(m[2])];
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

function readJsonArg(field: string, value: string): unknown {
  const text = value.startsWith('@') ? readFileSync(value.slice(1), 'utf8') : value;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ValidationError(field, `not valid JSON: ${(err as Error).message}`);
  }
}

function addCrud(parent: Command, r: Resource, create: (cmd: Command) => Command, body: (flags: Record<string, unknown>) => unknown): void {
  const cmd = parent.command(r.command).description(`manage ${r.describe}`);

  withClientFlags(create(cmd.command('create').description(`create one of the ${r.describe}`))).action(async (...args: unknown[]) => {
    const command = args.at(-1) as Command;
    const flags: Record<string, unknown> = { ...command.opts(), args: command.args };
    const result = await clientFrom(flags).request<Record<string, Record<string, unknown>>>('POST', r.path, { [r.singular]: body(flags) });
    const item = result[r.singular] ?? {};
    print(item, Boolean(flags.json), () => table([item], r.columns));
  });

  const list = cmd.command('list').description(`list ${r.describe}`);
  if (r.command === 'rule') list.option('--group <id>', 'only the rules of this group');
  if (r.command === 'instance') list.option('--host <name>', 'only the instances of this host');
  withClientFlags(list).action(async (flags: Record<string, unknown>) => {
    const query = new URLSearchParams();
    if (typeof flags.group === 'string') query.set('security_group_id', flags.group);
    if (typeof flags.host === 'string') query.set('host', flags.host);
    const qs = query.toString();
    const result = await clientFrom(flags).request<Record<string, Record<string, unknown>[]>>('GET', `${r.path}${qs ? `?${qs}` : ''}`);
    const items = result[r.plural] ?? [];
    print(items, Boolean(flags.json), () => table(items, r.columns));
  });

  if (r.command !== 'provider-rule') {
    withClientFlags(cmd.command('show').description(`show one of the ${r.describe}`).argument('<id>')).action(
      async (id: string, flags: Record<string, unknown>) => {
        const result = await clientFrom(flags).request<Record<string, Record<string, unknown>>>('GET', `${r.path}/${encodeURIComponent(id)}`);
        const item = result[r.singular] ?? {};
        print(item, Boolean(flags.json), () =>
          Object.entries(item)
            .map(([k, v]) => `${k.padEnd(20)} ${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}`)
            .join('\n'),
        );
      },
    );
  }

  withClientFlags(cmd.command('delete').description(`delete one of the ${r.describe}`).argument('<id>')).action(
    async (id: string, flags: Record<string, unknown>) => {
      await clientFrom(flags).request('DELETE', `${r.path}/${encodeURIComponent(id)}`);
      print({ deleted: id }, Boolean(flags.json), () => `deleted ${id}`);
    },
  );
}

const compact = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));

export function registerResourceCommands(program: Command): void {
  addCrud(
    program,
    RESOURCES.group as Resource,
    (c) => c.argument('<name>', 'group name').option('--description <text>', 'description'),
    (f) => compact({ name: (f.args as string[])[0], description: f.description }),
  );

  addCrud(
    program,
    RESOURCES.rule as Resource,
    (c) =>
      c
        .requiredOption('--group <id>', 'security group the rule belongs to')
        .addOption(new Option('--direction <dir>', 'ingress or egress').choices(['ingress', 'egress']).default('ingress'))
        .addOption(new Option('--ethertype <type>', 'IPv4 or IPv6').choices(['IPv4', 'IPv6']))
        .option('--protocol <proto>', 'tcp, udp, icmp, icmpv6, any name Neutron knows, or a number')
        .option('--port <port>', 'destination port or MIN:MAX (tcp/udp/sctp/dccp/udplite)', portRange)
        .option('--icmp-type <type>', 'icmp type (-1: any)', int('--icmp-type'))
        .option('--icmp-code <code>', 'icmp code (-1: any)', int('--icmp-code'))
        .option('--remote-ip-prefix <cidr>', 'source (ingress) or destination (egress) CIDR')
        .option('--remote-group <id>', 'source/destination: the members of this group')
        .option('--description <text>', 'description'),
    (f) => {
      const ports = f.port as [number, number] | undefined;
      return compact({
        security_group_id: f.group,
        direction: f.direction,
        ethertype: f.ethertype,
        protocol: f.protocol,
        port_range_min: ports?.[0] ?? f.icmpType,
        port_range_max: ports?.[1] ?? f.icmpCode,
        remote_ip_prefix: f.remoteIpPrefix,
        remote_group_id: f.remoteGroup,
        description: f.description,
      });
    },
  );

  const instanceBody = (f: Record<string, unknown>) =>
    compact({
      id: f.id,
      name: f.name,
      host: f.host,
      security_groups: f.group,
      network_info: f.networkInfo === undefined ? undefined : readJsonArg('--network-info', f.networkInfo as string),
    });
  addCrud(
    program,
    RESOURCES.instance as Resource,
    (c) =>
      c
        .requiredOption('--name <name>', 'instance name')
        .requiredOption('--host <host>', 'compute host the instance runs on')
        .option('--id <id>', 'instance id (default: a new UUID)')
        .option('--group <id>', 'security group (repeatable; default: the project default group)', collect)
        .option('--network-info <json>', 'Nova network info: JSON text, or @file'),
    instanceBody,
  );
  const instanceCmd = program.commands.find((c) => c.name() === 'instance');
  if (instanceCmd) {
    withClientFlags(
      instanceCmd
        .command('update')
        .description('change an instance: name, host, groups or network info')
        .argument('<id>')
        .option('--name <name>', 'new name')
        .option('--host <host>', 'new compute host')
        .option('--group <id>', 'security group (repeatable; replaces the list)', collect)
        .option('--network-info <json>', 'Nova network info: JSON text, or @file'),
    ).action(async (id: string, flags: Record<string, unknown>) => {
      const result = await clientFrom(flags).request<Record<string, Record<string, unknown>>>(
        'PUT',
        `/v2.0/instances/${encodeURIComponent(id)}`,
        { instance: instanceBody(flags) },
      );
      const item = result.instance ?? {};
      print(item, Boolean(flags.json), () => table([item], RESOURCES.instance?.columns));
    });
  }

  addCrud(
    program,
    RESOURCES.providerRule as Resource,
    (c) =>
      c
        .requiredOption('--cidr <cidr>', 'source CIDR to drop')
        .option('--protocol <proto>', 'protocol (default: all)')
        .option('--from-port <n>', 'first port, or icmp type', int('--from-port'))
        .option('--to-port <n>', 'last port, or icmp code', int('--to-port')),
    (f) => compact({ cidr: f.cidr, protocol: f.protocol, from_port: f.fromPort, to_port: f.toPort }),
  );
}
