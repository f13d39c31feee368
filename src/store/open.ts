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
  logger?: Logger;
}

/** The SQLite file path of a store URL that is not PostgreSQL's. */
export function sqlitePath(url: string): string {
  if (url.startsWith('sqlite://')) return url.slice('sqlite://'.length);
  if (url.startsWith('sqlite:')) return url.slice('sqlite:'.length);
  return url;
}

export function openStore(url: string = DEFAULT_STORE_URL, options: OpenStoreOptions = {}): Store {
  const logger = options.logger ?? silentLogger;
  if (isPostgresUrl(url)) {
    const backend = new PostgresBackend(url, { schema: options.schema, poolSize: options.poolSize, logger });
    return new KyselyStore(backend, { logger });
  }
  if (options.schema !== undefined) throw new TypeError('the schema option is for PostgreSQL only');
  const path = sqlitePath(url);
  if (path === '') throw new TypeError('the SQLite store needs a file path (or :memory:)');
  return new KyselyStore(new SqliteBackend(path), { logger });
}
