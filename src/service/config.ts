/**
 * Service configuration: flags over environment over defaults, validated
 * once and frozen. A bad value is refused with the flag and the variable it
 * came from named, before anything is opened or applied.
 */
import { hostname } from 'node:os';
import ipaddr from 'ipaddr.js';
import { ValidationError } from '../errors.js';
import type { DriverOptions } from '../drivers/options.js';

export interface ServiceConfig {
  /** SQLite path (default ./virtfw.db) or postgres:// URL */
  databaseUrl: string;
  /**
   * Address and port the API listens on (serve, api), or where an agent
   * serves its /metrics, /healthz and /status (agent; null: it does not listen).
   */
  listenHost: string | null;
  listenPort: number | null;
  /** this compute host's name: the agent filters the instances whose host is this */
  host: string;
  /** firewall driver name or module specifier */
  driver: string;
  driverOptions: DriverOptions;
  tokenFile: string | null;
  dryRun: boolean;
  /** periodic full resync (drift repair), ms; 0 disables */
  resyncIntervalMs: number;
  /** run the REST API (serve, api) */
  api: boolean;
  /** run the host agent (serve, agent) */
  agent: boolean;
}

export interface ConfigInput {
  db?: string | undefined;
  listen?: string | undefined;
  host?: string | undefined;
  driver?: string | undefined;
  tokenFile?: string | undefined;
  dryRun?: boolean | undefined;
  resyncInterval?: string | undefined;
  driverOptions?: DriverOptions;
}

const HOST_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$/;

function pick(flag: string | undefined, env: string | undefined): string | undefined {
  return flag !== undefined && flag !== '' ? flag : env !== undefined && env !== '' ? env : undefined;
}

/** `127.0.0.1:8775`, `[::1]:8775`, `0.0.0.0:80` */
export function parseListen(value: string, field: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value);
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (!m || !host || !ipaddr.isValid(host) || port < 1 || port > 65535) {
    throw new ValidationError(field, `${JSON.stringify(value)} is not ADDRESS:PORT (an IP address and a port 1-65535)`);
  }
  return { host, port };
}

export function isLoopback(address: string): boolean {
  try {
    return ipaddr.process(address).range() === 'loopback';
  } catch {
    return false;
  }
}

function parseSeconds(value: string, field: string): number {
  if (!/^\d+(\.\d+)?$/.test(value)) throw new ValidationError(field, `${JSON.stringify(value)} is not a number of seconds`);
  return Math.round(Number(value) * 1000);
}

export function resolveConfig(
  input: ConfigInput,
  mode: { api: boolean; agent: boolean },
  env: NodeJS.ProcessEnv = process.env,
): ServiceConfig {
  const databaseUrl = pick(input.db, env.VIRTFW_DB) ?? './virtfw.db';
  const listenText = pick(input.listen, env.VIRTFW_LISTEN) ?? (mode.api ? '127.0.0.1:8775' : undefined);
  const listen = listenText === undefined ? null : parseListen(listenText, input.listen ? '--listen' : 'VIRTFW_LISTEN');
  const host = pick(input.host, env.VIRTFW_HOST) ?? hostname();
  if (!HOST_RE.test(host)) throw new ValidationError(input.host ? '--host' : 'VIRTFW_HOST', `${JSON.stringify(host)} is not a host name`);
  const tokenFile = pick(input.tokenFile, env.VIRTFW_TOKEN_FILE) ?? null;
  if (mode.api && listen && !tokenFile && !isLoopback(listen.host)) {
    throw new ValidationError(
      '--listen',
      `refusing to listen on ${listen.host} without a token file: every request would act as admin (give --token-file, or listen on 127.0.0.1)`,
    );
  }
  const resyncText = pick(input.resyncInterval, env.VIRTFW_RESYNC_INTERVAL) ?? '60';
  return Object.freeze({
    databaseUrl,
    listenHost: listen?.host ?? null,
    listenPort: listen?.port ?? null,
    host,
    driver: pick(input.driver, env.VIRTFW_FIREWALL_DRIVER) ?? 'iptables',
    driverOptions: { ...input.driverOptions },
    tokenFile,
    dryRun: input.dryRun ?? false,
    resyncIntervalMs: parseSeconds(resyncText, input.resyncInterval ? '--resync-interval' : 'VIRTFW_RESYNC_INTERVAL'),
    api: mode.api,
    agent: mode.agent,
  });
}
