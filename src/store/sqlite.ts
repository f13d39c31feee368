/**
 * SQLite backend: one better-sqlite3 connection per store, WAL mode,
 * `busy_timeout` 5000 ms and foreign keys on. Every write transaction starts
 * with `BEGIN IMMEDIATE`, so it takes the database's write lock before it
 * reads anything it will write: two processes on one file serialize their
 * writes instead of losing one (a deferred `BEGIN` would read, then fail to
 * upgrade). Change numbers therefore follow commit order.
 *
 * better-sqlite3 is synchronous: a connection waiting on the busy timeout
 * blocks its thread. So stores of one process that share a file also share an
 * in-process lock, taken before `BEGIN IMMEDIATE`; otherwise a second store
 * would block the event loop that the first one needs to commit.
 */
import { realpathSync } from 'node:fs';
import { resolve } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import {
  CompiledQuery,
  type DatabaseConnection,
  type Driver,
  Kysely,
  SqliteDialect,
  type SqliteDialectConfig,
  SqliteDriver,
  type Transaction,
  sql,
} from 'kysely';
import type { Deliver, ErrorClass, StoreBackend } from './backend.js';
import { migrateToLatest } from './migrations.js';
import { Mutex } from '../util/mutex.js';
import type { Database } from './schema.js';

export const SQLITE_BUSY_TIMEOUT_MS = 5000;

class ImmediateSqliteDriver extends SqliteDriver {
  override async beginTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('begin immediate'));
  }
}

class ImmediateSqliteDialect extends SqliteDialect {
  readonly #config: SqliteDialectConfig;

  constructor(config: SqliteDialectConfig) {
    super(config);
    this.#config = config;
  }

  override createDriver(): Driver {
    return new ImmediateSqliteDriver(this.#config);
  }
}

/** What the stores of this process that share one database file share. */
interface SharedFile {
  mutex: Mutex;
  deliverers: Set<Deliver>;
}

const sharedFiles = new Map<string, SharedFile>();

function sharedFile(key: string): SharedFile {
  let shared = sharedFiles.get(key);
  if (!shared) {
    shared = { mutex: new Mutex(), deliverers: new Set() };
    sharedFiles.set(key, shared);
  }
  return shared;
}

export function isMemoryPath(path: string): boolean {
  return path === ':memory:' || path === '';
}

export class SqliteBackend implements StoreBackend {
  readonly dialect = 'sqlite' as const;
  readonly db: Kysely<Database>;
  readonly #key: string;
  readonly #shared: SharedFile;
  #deliver: Deliver | null = null;

  constructor(path: string) {
    const raw = new BetterSqlite3(path, { timeout: SQLITE_BUSY_TIMEOUT_MS });
    try {
      raw.pragma(`busy_timeout = ${SQLITE_BUSY_TIMEOUT_MS}`);
      raw.pragma('journal_mode = WAL');
      raw.pragma('synchronous = NORMAL');
      raw.pragma('foreign_keys = ON');
    } catch (error) {
      raw.close();
      throw error;
    }
    // An in-memory database is private to its connection; a file is shared by path.
    this.#key = isMemoryPath(path) ? `memory:${Math.random()}` : realpathSync(resolve(path));
    this.#shared = sharedFile(this.#key);
    this.db = new Kysely<Database>({ dialect: new ImmediateSqliteDialect({ database: raw }) });
  }

  writeTransaction<T>(fn: (trx: Transaction<Database>) => Promise<T>): Promise<T> {
    return this.#shared.mutex.run(() => this.db.transaction().execute(fn));
  }

  async beforeChanges(): Promise<void> {
    // BEGIN IMMEDIATE already made this the only writer.
  }

  async afterChanges(): Promise<void> {}

  committed(seq: number): void {
    for (const deliver of this.#shared.deliverers) deliver(seq);
  }

  attach(deliver: Deliver): void {
    this.#deliver = deliver;
    this.#shared.deliverers.add(deliver);
  }

  startListening(): void {
    // Commits of this process's stores on the same file arrive through committed().
  }

  async migrate(): Promise<void> {
    await this.#shared.mutex.run(() =>
      this.db.connection().execute(async (conn) => {
        await sql`begin immediate`.execute(conn);
        try {
          await migrateToLatest(conn as unknown as Kysely<unknown>, 'sqlite');
          await sql`commit`.execute(conn);
        } catch (error) {
          await sql`rollback`.execute(conn).catch(() => undefined);
          throw error;
        }
      }),
    );
  }

  classifyError(error: unknown): ErrorClass | null {
    if (typeof error !== 'object' || error === null) return null;
    const code = (error as { code?: unknown }).code;
    const message = (error as { message?: unknown }).message;
    const text = typeof message === 'string' ? message : '';
    if (code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
      if (text.includes('security_groups.project_id')) return { kind: 'unique', target: 'default-group' };
      if (text.includes('security_group_rules.fingerprint')) return { kind: 'unique', target: 'rule' };
      if (text.includes('instances.id')) return { kind: 'unique', target: 'instance' };
      return { kind: 'unique', target: 'other' };
    }
    if (code === 'SQLITE_CONSTRAINT_FOREIGNKEY') return { kind: 'foreign-key' };
    if (typeof code === 'string' && (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED'))) {
      return { kind: 'transient' };
    }
    return null;
  }

  async close(): Promise<void> {
    if (this.#deliver) this.#shared.deliverers.delete(this.#deliver);
    this.#deliver = null;
    if (this.#shared.deliverers.size === 0) sharedFiles.delete(this.#key);
    await this.db.destroy();
  }
}
