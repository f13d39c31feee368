/**
 * The API under test, on a real store: every API test file runs its suite
 * once per backend (SQLite in a temp file, PostgreSQL in a schema of its
 * own, dropped afterwards), through `app.inject()` – no sockets.
 *
 *   describe.each(BACKENDS)('%s', (backend) => {
 *     const api = useApi(backend, 'groups');
 *     it('...', async () => { const r = await api.call('GET', '/v2.0/security-groups', { as: 'demo' }); });
 *   });
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance, InjectOptions } from 'fastify';
import pg from 'pg';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, expect } from 'vitest';
import { TokenAuth } from '../../src/api/auth.js';
import { buildApi, type ApiDeps } from '../../src/api/server.js';
import { openStore } from '../../src/store/open.js';
import type { Store } from '../../src/store/store.js';

export type Backend = 'sqlite' | 'postgres';
export const BACKENDS: readonly Backend[] = ['sqlite', 'postgres'];
export const PG_URL = process.env.VIRTFW_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

/** Who calls: two ordinary projects and an admin (of project ops). */
export const TOKENS = {
  demo: 'demo-token-0123456789abcdef',
  other: 'other-token-0123456789abcdef',
  admin: 'admin-token-0123456789abcdef',
} as const;
export type Caller = keyof typeof TOKENS | 'none';
export const TOKEN_FILE = {
  tokens: {
    [TOKENS.demo]: { project: 'demo' },
    [TOKENS.other]: { project: 'other' },
    [TOKENS.admin]: { project: 'ops', admin: true },
  },
};

export interface CallOptions {
  as?: Caller;
  body?: unknown;
  /** how the token is sent */
  header?: 'x-auth-token' | 'bearer';
  headers?: Record<string, string>;
}

export interface Response {
  status: number;
  headers: Record<string, unknown>;
  text: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- test responses are inspected freely
  json: any;
}

export interface Api {
  readonly app: FastifyInstance;
  readonly store: Store;
  readonly registry: Registry;
  call(method: InjectOptions['method'], url: string, options?: CallOptions): Promise<Response>;
  /** Asserts the status (showing the body when it differs) and returns the JSON body. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  ok(status: number, method: InjectOptions['method'], url: string, options?: CallOptions): Promise<any>;
  /** Asserts a Neutron error: status, type, and (optionally) text the message contains. */
  fails(
    status: number,
    type: string | RegExp,
    method: InjectOptions['method'],
    url: string,
    options?: CallOptions & { message?: string | RegExp },
  ): Promise<Response>;
  /** The change-log position: unchanged across a call means the call stored nothing. */
  seq(): Promise<number>;
}

export interface UseApiOptions {
  /** no token file: every request is the admin of project `default` */
  noAuth?: boolean;
  deps?: Partial<Omit<ApiDeps, 'store' | 'registry' | 'auth'>>;
  /** the store the app gets, made from the real one (to inject failures) */
  wrapStore?: (store: Store) => Store;
}

async function openBackend(backend: Backend, label: string): Promise<{ store: Store; cleanup: () => Promise<void> }> {
  if (backend === 'sqlite') {
    const dir = await mkdtemp(join(tmpdir(), `virtfw-api-${label}-`));
    const store = await openStore(join(dir, 'virtfw.db'));
    return { store, cleanup: () => rm(dir, { recursive: true, force: true }) };
  }
  const schema = `api_${label.replace(/[^a-z0-9]/gi, '_')}_${randomBytes(4).toString('hex')}`.toLowerCase();
  const store = await openStore(PG_URL, { schema });
  return {
    store,
    async cleanup() {
      const client = new pg.Client({ connectionString: PG_URL });
      await client.connect();
      try {
        await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      } finally {
        await client.end();
      }
    },
  };
}

/** Builds the app in beforeAll (store opened and migrated) and tears everything down in afterAll. */
export function useApi(backend: Backend, label: string, options: UseApiOptions = {}): Api {
  let app: FastifyInstance | undefined;
  let store: Store | undefined;
  let cleanup: (() => Promise<void>) | undefined;
  const registry = new Registry();

  beforeAll(async () => {
    const opened = await openBackend(backend, label);
    store = opened.store;
    cleanup = opened.cleanup;
    await store.migrate();
    app = await buildApi({
      store: options.wrapStore ? options.wrapStore(store) : store,
      auth: options.noAuth ? null : TokenAuth.fromObject(TOKEN_FILE),
      registry,
      logger: false,
      ...options.deps,
    });
  });

  afterAll(async () => {
    await app?.close();
    await store?.close();
    await cleanup?.();
  });

  const need = <T>(value: T | undefined, what: string): T => {
    if (value === undefined) throw new Error(`${what} is not ready (beforeAll failed?)`);
    return value;
  };

  const api: Api = {
    get app() {
      return need(app, 'app');
    },
    get store() {
      return need(store, 'store');
    },
    registry,
    async call(method, url, { as = 'demo', body, header = 'x-auth-token', headers = {} } = {}) {
      const h: Record<string, string> = { ...headers };
      if (as !== 'none') {
        if (header === 'bearer') h.authorization = `Bearer ${TOKENS[as]}`;
        else h['x-auth-token'] = TOKENS[as];
      }
      const res = await need(app, 'app').inject({
        method,
        url,
        headers: h,
        ...(body === undefined ? {} : { payload: body as InjectOptions['payload'] }),
      });
      let json: unknown;
      try {
        json = res.body === '' ? undefined : JSON.parse(res.body);
      } catch {
        json = undefined;
      }
      return { status: res.statusCode, headers: res.headers, text: res.body, json };
    },
    async ok(status, method, url, options) {
      const res = await api.call(method, url, options);
      expect(res.status, `${method} ${url}: ${res.text}`).toBe(status);
      return res.json;
    },
    async fails(status, type, method, url, options = {}) {
      const res = await api.call(method, url, options);
      expect(res.status, `${method} ${url}: ${res.text}`).toBe(status);
      expect(res.json).toEqual({
        NeutronError: { type: typeof type === 'string' ? type : expect.stringMatching(type), message: expect.any(String), detail: '' },
      });
      if (options.message !== undefined) expect(res.json.NeutronError.message).toMatch(options.message);
      return res;
    },
    seq: () => need(store, 'store').latestChangeSeq(),
  };
  return api;
}

// ------------------------------------------------------------------ builders

let counter = 0;
/** A name unique within the test run. */
export function unique(prefix: string): string {
  counter += 1;
  return `${prefix}-${counter}-${randomBytes(2).toString('hex')}`;
}

/** A Nova VIF on a bridge, with one IPv4 and one IPv6 address. */
export function vif(devname: string, n = 10): Record<string, unknown> {
  const hex = n.toString(16).padStart(2, '0');
  return {
    id: `vif-${devname}`,
    address: `fa:16:3e:00:00:${hex}`,
    devname,
    type: 'bridge',
    ovs_interfaceid: null,
    network: {
      id: 'net-1',
      bridge: 'br100',
      label: 'private',
      subnets: [
        { cidr: '10.0.0.0/24', version: 4, gateway: { address: '10.0.0.1' }, ips: [{ address: `10.0.0.${n}`, type: 'fixed' }] },
        { cidr: '2001:db8::/64', version: 6, gateway: { address: '2001:db8::1' }, ips: [{ address: `2001:db8::${hex}` }] },
      ],
      meta: { injected: false },
    },
  };
}
