/**
 * The service: data store + REST API + host agent, as `virtfw serve` (all in
 * one process), `virtfw api` (API only) and `virtfw agent` (agent only).
 *
 * Start-up order: open the store and migrate; start the agent (its initial
 * full sync puts the host's rules in force before anything else happens);
 * then listen. Shutdown stops listening, lets the agent finish its batch,
 * and closes the store. The kernel keeps whatever was last applied.
 */
import { pino, type Logger as PinoLogger } from 'pino';
import { Registry, collectDefaultMetrics } from 'prom-client';
import { HostAgent } from '../agent/agent.js';
import { createAgentMetrics } from '../agent/metrics.js';
import { buildApi } from '../api/server.js';
import { buildAgentEndpoints } from './agent-endpoints.js';
import { TokenAuth } from '../api/auth.js';
import type { FirewallDriver } from '../drivers/firewall-driver.js';
import { loadDriverWith } from '../drivers/load.js';
import { renderRulesetText, type RulesetFormat } from '../drivers/render-ruleset.js';
import { FakeKernel } from '../kernel/fake-kernel.js';
import { openStore } from '../store/open.js';
import type { Store } from '../store/store.js';
import type { ServiceConfig } from './config.js';

export interface RunningService {
  readonly config: ServiceConfig;
  readonly store: Store;
  readonly agent: HostAgent | null;
  readonly driver: FirewallDriver | null;
  /** the API's address once listening */
  readonly url: string | null;
  close(): Promise<void>;
}

export interface StartOptions {
  logger?: PinoLogger;
}

/** Renders a host's ruleset from the store, without touching the kernel (`format`: iptables or nft). */
export async function renderHostRuleset(store: Store, host: string, config: ServiceConfig, format: RulesetFormat = 'iptables'): Promise<string> {
  const rows = await store.instancesOnHost(host);
  const instances = rows.map((row) => ({ instance: { id: row.id, name: row.name, host: row.host }, networkInfo: row.networkInfo }));
  return renderRulesetText(store, instances, config.driverOptions, format);
}

export async function startService(config: ServiceConfig, options: StartOptions = {}): Promise<RunningService> {
  const log = options.logger ?? pino({ name: 'virtfw', level: process.env.VIRTFW_LOG_LEVEL ?? 'info' });
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const auth = config.tokenFile ? await TokenAuth.fromFile(config.tokenFile) : null;

  // An agent alone needs few connections (its batches are sequential): with
  // many hosts on one PostgreSQL, connections are the scarce resource.
  const store = await openStore(config.databaseUrl, { logger: log, defaultPoolSize: config.api ? 10 : 2 });
  let agent: HostAgent | null = null;
  let driver: FirewallDriver | null = null;
  let api: Awaited<ReturnType<typeof buildApi>> | null = null;
  try {
    await store.migrate();
    if (config.agent) {
      const runner = config.dryRun ? { runner: new FakeKernel({ keepHistory: false }) } : {};
      driver = await loadDriverWith('iptables', { firewallDriver: config.driver }, store, { ...config.driverOptions, logger: log, ...runner });
      agent = new HostAgent({
        store,
        driver,
        host: config.host,
        logger: log,
        metrics: createAgentMetrics(registry),
        resyncIntervalMs: config.resyncIntervalMs,
      });
    }
    // Listen before the initial sync, so a taken port fails at once rather
    // than after a long sync.
    let url: string | null = null;
    if (config.listenHost !== null && config.listenPort !== null) {
      const running = agent;
      if (config.api) {
        api = await buildApi({
          store,
          auth,
          registry,
          logger: log,
          ...(running ? { agentStatus: () => running.status() } : {}),
          renderRuleset: (host, format) => renderHostRuleset(store, host, config, format),
        });
      } else if (running) {
        // An agent alone serves only what operations need: /metrics, /healthz, /status.
        api = await buildAgentEndpoints({ registry, store, agent: running, logger: log });
      }
      if (api) url = await api.listen({ host: config.listenHost, port: config.listenPort });
    }
    if (agent && driver) {
      const started = performance.now();
      log.info({ host: config.host, driver: config.driver, dryRun: config.dryRun }, 'initial sync of host');
      await agent.start();
      log.info({ host: config.host, ms: Math.round(performance.now() - started), instances: driver.status().length }, 'host in sync');
    }
    if (url && config.api) log.info({ url, auth: auth ? 'token file' : 'none (loopback admin)' }, 'API listening');
    else if (url) log.info({ url }, 'agent metrics listening');
    let closing: Promise<void> | null = null;
    return {
      config,
      store,
      agent,
      driver,
      url,
      close() {
        closing ??= (async () => {
          await api?.close();
          await agent?.stop();
          await driver?.close();
          await store.close();
        })();
        return closing;
      },
    };
  } catch (err) {
    await api?.close().catch(() => undefined);
    await agent?.stop().catch(() => undefined);
    await driver?.close().catch(() => undefined);
    await store.close().catch(() => undefined);
    throw err;
  }
}
