/** `virtfw serve`, `virtfw api`, `virtfw agent`, and `virtfw status`. */
import type { Command } from 'commander';
import { resolveConfig } from '../../service/config.js';
import { startService } from '../../service/service.js';
import { addDriverFlags, driverOptions, type DriverFlags } from '../driver-options.js';
import { print, table } from '../output.js';
import { clientFrom, withClientFlags } from './resources.js';

interface ServeFlags extends DriverFlags {
  db?: string;
  listen?: string;
  host?: string;
  tokenFile?: string;
  resyncInterval?: string;
}

function serviceCommand(program: Command, name: string, description: string, mode: { api: boolean; agent: boolean }): void {
  let cmd = program.command(name).description(description).option('--db <url>', 'SQLite file or postgres:// URL (env VIRTFW_DB; default ./virtfw.db)');
  if (mode.api) {
    cmd = cmd
      .option('--listen <address:port>', 'API address (env VIRTFW_LISTEN; default 127.0.0.1:8775)')
      .option('--token-file <path>', 'JSON file mapping tokens to projects (env VIRTFW_TOKEN_FILE)');
  } else {
    cmd = cmd.option('--listen <address:port>', 'serve /metrics, /healthz and /status here (env VIRTFW_LISTEN; default: do not listen)');
  }
  if (mode.agent) {
    cmd = cmd
      .option('--host <name>', "this compute host's name (env VIRTFW_HOST; default the machine's)")
      .option('--resync-interval <seconds>', 'full resync / drift repair period, 0 = never (env VIRTFW_RESYNC_INTERVAL; default 60)');
    // serve defaults to Neutron/AWS semantics: same-subnet traffic needs a rule.
    cmd = addDriverFlags(cmd, { sameNet: false });
  }
  cmd.action(async (flags: ServeFlags) => {
    const config = resolveConfig(
      {
        db: flags.db,
        listen: flags.listen,
        host: flags.host,
        driver: flags.driver,
        tokenFile: flags.tokenFile,
        dryRun: flags.dryRun,
        resyncInterval: flags.resyncInterval,
        driverOptions: mode.agent ? driverOptions({ ...flags, dryRun: false }) : {},
      },
      mode,
    );
    const service = await startService(config);
    await new Promise<void>((resolve) => {
      const stop = () => {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
        void service.close().then(resolve, resolve);
      };
      process.on('SIGINT', stop);
      process.on('SIGTERM', stop);
    });
  });
}

interface AgentStatusView {
  host: string;
  lastApply: string | null;
  lastError: string | null;
  appliedSeq: number;
  updatedAt?: string | null;
  instances: (Record<string, unknown> & { filtered?: boolean })[];
}

function summary(s: AgentStatusView): string {
  const error = s.lastError ? `, LAST ERROR: ${s.lastError}` : '';
  const reported = s.updatedAt ? `, reported ${s.updatedAt}` : '';
  return `host ${s.host}: last apply ${s.lastApply ?? 'never'}, applied change ${s.appliedSeq}${reported}${error}`;
}

export function registerServiceCommands(program: Command): void {
  serviceCommand(program, 'serve', 'run the REST API and this host\'s agent, on one data store', { api: true, agent: true });
  serviceCommand(program, 'api', 'run the REST API only (hosts run `virtfw agent`)', { api: true, agent: false });
  serviceCommand(program, 'agent', "run this host's agent only, following the shared data store", { api: false, agent: true });

  withClientFlags(
    program
      .command('status')
      .description('per instance of a host: filtered or not, last apply, last error')
      .option('--host <name>', "a host's agent as it last reported (default: the agent of the serving process)"),
  ).action(async (flags: { json?: boolean; url?: string; token?: string; host?: string }) => {
    const query = flags.host ? `?host=${encodeURIComponent(flags.host)}` : '';
    const result = await clientFrom(flags).request<{ status: AgentStatusView }>('GET', `/v2.0/status${query}`);
    const s = result.status;
    print(s, Boolean(flags.json), () => [summary(s), table(s.instances, ['instanceId', 'filtered', 'lastApply', 'lastError'])].join('\n'));
  });

  withClientFlags(program.command('agents').description("every host's agent as it last reported")).action(
    async (flags: { json?: boolean; url?: string; token?: string }) => {
      const result = await clientFrom(flags).request<{ agents: AgentStatusView[] }>('GET', '/v2.0/agents');
      const rows = result.agents.map((a) => ({
        host: a.host,
        instances: a.instances.length,
        filtered: a.instances.filter((i) => i.filtered).length,
        appliedSeq: a.appliedSeq,
        lastApply: a.lastApply,
        reported: a.updatedAt ?? null,
        lastError: a.lastError,
      }));
      print(result.agents, Boolean(flags.json), () => table(rows));
    },
  );
}
