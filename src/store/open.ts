/**
 * openStore(url): `postgres://…` or `postgresql://…` is PostgreSQL; anything
 * else is a SQLite database file, optionally written `sqlite:PATH` (or
 * `sqlite://PATH`); `:memory:` is a private in-memory database (tests).
 *
 * The store is not migrated here: call `migrate()` before first use.
 */
import { silentLogger, type Logger } from '../logger.js';
import { KyselyStore } from './kysely-store.js';
import { PostgresBackend, isPostgresUrl } from './postgres.js';
import { SqliteBackend } from './sqlite.js';
import type { Store } from './store.js';

export const DEFAULT_STORE_URL = './virtfw.db';

export interface OpenStoreOptions {
  /** PostgreSQL: the schema to create (on migrate) and use, as every pooled connection's search_path. */
  schema?: string;
  /** PostgreSQL: the pool's maximum number of connections (default 10). */
  poolSize?: number;
  /** PostgreSQL: the pool size when neither `poolSize` nor the URL's `pool=` gives one. */
  defaultPoolSize?: number;
  logger?: Logger;
}

/** The SQLite file path of a store URL that is not PostgreSQL's. */
export function sqlitePath(url: string): string {
  if (url.startsWith('sqlite://')) return url.slice('sqlite://'.length);
  if (url.startsWith('sqlite:')) return url.slice('sqlite:'.length);
  return url;
}

/**
 * A PostgreSQL URL may carry virtfw's own parameters, which are taken out
 * before the URL reaches the driver: `schema` (as the option) and `pool`
 * (the pool size), e.g. `postgres://db/virtfw?schema=site1&pool=4`.
 */
export function splitPostgresUrl(url: string): { url: string; schema?: string; poolSize?: number } {
  const parsed = new URL(url);
  const schema = parsed.searchParams.get('schema') ?? undefined;
  const pool = parsed.searchParams.get('pool');
  parsed.searchParams.delete('schema');
  parsed.searchParams.delete('pool');
  let poolSize: number | undefined;
  if (pool !== null) {
    if (!/^[1-9][0-9]{0,3}$/.test(pool)) throw new TypeError(`pool=${pool} in the database URL is not a pool size 1-9999`);
    poolSize = Number(pool);
  }
  return { url: parsed.toString(), ...(schema ? { schema } : {}), ...(poolSize ? { poolSize } : {}) };
}

export function openStore(url: string = DEFAULT_STORE_URL, options: OpenStoreOptions = {}): Store {
  const logger = options.logger ?? silentLogger;
  if (isPostgresUrl(url)) {
    const split = splitPostgresUrl(url);
    const backend = new PostgresBackend(split.url, {
      schema: options.schema ?? split.schema,
      poolSize: options.poolSize ?? split.poolSize ?? options.defaultPoolSize,
      logger,
    });
    return new KyselyStore(backend, { logger });
  }
  if (options.schema !== undefined) throw new TypeError('the schema option is for PostgreSQL only');
  const path = sqlitePath(url);
  if (path === '') throw new TypeError('the SQLite store needs a file path (or :memory:)');
  return new KyselyStore(new SqliteBackend(path), { logger });
}
