/**
 * PostgreSQL backend: a `pg` Pool (optionally confined to one schema through
 * every pooled connection's search_path), row locks (`FOR UPDATE`) on what a
 * write reads to change, unique indexes against duplicates, and a change log
 * numbered in commit order: each writer takes one transaction-scoped advisory
 * lock right before it inserts its change rows and holds it until commit, so
 * a seq is never handed out while a smaller one is still uncommitted.
 *
 * Commits are announced with `pg_notify` inside the transaction (delivered at
 * commit). A dedicated `pg.Client` LISTENs, started on the first
 * subscription, and reconnects with backoff when its connection drops; on
 * every (re)connect the listeners get the newest seq, so nothing committed
 * while it was away is missed.
 */
import { createHash } from 'node:crypto';
import pg from 'pg';
import { Kysely, PostgresDialect, type DatabaseIntrospector, type TableMetadata, type Transaction, sql } from 'kysely';
import type { Logger } from '../logger.js';
import type { Deliver, ErrorClass, StoreBackend } from './backend.js';
import { migrateToLatest } from './migrations.js';
import type { Database } from './schema.js';

/** Advisory lock keys (the constant one the change log's writers share, and the migrations'). */
export const CHANGE_LOG_LOCK = 0x76667731; // "vfw1"
export const MIGRATION_LOCK = 0x7666774d; // "vfwM"
/** The NOTIFY channel; a store confined to a schema uses `virtfw_changes:<schema>`. */
export const CHANGE_CHANNEL = 'virtfw_changes';
export const LISTENER_APPLICATION_NAME = 'virtfw-listener';

/** Lower-case identifiers only: they go into search_path and the channel name as they are. */
const SCHEMA_RE = /^[a-z_][a-z0-9_]{0,62}$/;

export interface PostgresOptions {
  schema?: string;
  poolSize?: number;
  logger: Logger;
}

export function isPostgresUrl(url: string): boolean {
  return /^postgres(ql)?:\/\//i.test(url);
}

/** A channel name is an identifier: at most 63 bytes, so a long schema name is hashed. */
export function channelFor(schema: string | undefined): string {
  if (schema === undefined) return CHANGE_CHANNEL;
  const suffix = schema.length <= 48 ? schema : createHash('sha256').update(schema).digest('hex').slice(0, 32);
  return `${CHANGE_CHANNEL}:${suffix}`;
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

const RECONNECT_MIN_MS = 100;
const RECONNECT_MAX_MS = 30_000;

/** The LISTEN connection: one per store, started lazily, reconnecting with backoff. */
class ChangeListener {
  readonly #config: pg.ClientConfig;
  readonly #channel: string;
  readonly #onNotify: (seq: number) => void;
  readonly #onConnect: () => void;
  readonly #logger: Logger;
  #client: pg.Client | null = null;
  #started = false;
  #stopped = false;
  #attempt = 0;
  #timer: NodeJS.Timeout | null = null;

  constructor(
    config: pg.ClientConfig,
    channel: string,
    onNotify: (seq: number) => void,
    onConnect: () => void,
    logger: Logger,
  ) {
    this.#config = config;
    this.#channel = channel;
    this.#onNotify = onNotify;
    this.#onConnect = onConnect;
    this.#logger = logger;
  }

  start(): void {
    if (this.#started || this.#stopped) return;
    this.#started = true;
    void this.#connect();
  }

  async #connect(): Promise<void> {
    this.#timer = null;
    if (this.#stopped) return;
    const client = new pg.Client({ ...this.#config, application_name: LISTENER_APPLICATION_NAME });
    client.on('error', (error) => {
      this.#logger.warn({ err: error, channel: this.#channel }, 'change listener connection failed');
      this.#drop(client);
    });
    client.on('end', () => this.#drop(client));
    client.on('notification', (message) => {
      if (message.channel !== this.#channel) return;
      const seq = Number(message.payload);
      if (Number.isSafeInteger(seq) && seq > 0) this.#onNotify(seq);
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${quoteIdent(this.#channel)}`);
    } catch (error) {
      this.#logger.warn({ err: error, channel: this.#channel, attempt: this.#attempt }, 'change listener could not connect');
      client.removeAllListeners('end');
      client.end().catch(() => undefined);
      this.#scheduleReconnect();
      return;
    }
    if (this.#stopped) {
      await client.end().catch(() => undefined);
      return;
    }
    this.#client = client;
    if (this.#attempt > 0) this.#logger.info({ channel: this.#channel }, 'change listener reconnected');
    this.#attempt = 0;
    this.#onConnect();
  }

  #drop(client: pg.Client): void {
    if (this.#client !== client) return;
    this.#client = null;
    client.end().catch(() => undefined);
    this.#scheduleReconnect();
  }

  #scheduleReconnect(): void {
    if (this.#stopped || this.#timer !== null) return;
    const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** this.#attempt);
    this.#attempt += 1;
    this.#timer = setTimeout(() => void this.#connect(), delay);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    const client = this.#client;
    this.#client = null;
    if (client) await client.end().catch(() => undefined);
  }
}

export class PostgresBackend implements StoreBackend {
  readonly dialect = 'postgres' as const;
  readonly db: Kysely<Database>;
  readonly #pool: pg.Pool;
  readonly #schema: string | undefined;
  readonly #channel: string;
  readonly #logger: Logger;
  readonly #listener: ChangeListener;
  #deliver: Deliver = () => undefined;

  constructor(url: string, options: PostgresOptions) {
    const { schema, poolSize, logger } = options;
    if (schema !== undefined && !SCHEMA_RE.test(schema)) {
      throw new TypeError(`schema ${JSON.stringify(schema)} must be 1-63 characters: a-z, 0-9 and _, not starting with a digit`);
    }
    if (poolSize !== undefined && (!Number.isInteger(poolSize) || poolSize < 1)) {
      throw new TypeError(`poolSize ${String(poolSize)} must be a positive integer`);
    }
    this.#schema = schema;
    this.#channel = channelFor(schema);
    this.#logger = logger;
    const base: pg.ClientConfig = { connectionString: url };
    this.#pool = new pg.Pool({
      ...base,
      max: poolSize ?? 10,
      // Set at connection start-up, so every pooled connection has it before its first query.
      ...(schema === undefined ? {} : { options: `-c search_path=${schema}` }),
    });
    this.#pool.on('error', (error) => this.#logger.warn({ err: error }, 'idle PostgreSQL connection failed'));
    // pg-pool listens for errors only on idle connections; one that dies while
    // checked out (PostgreSQL restarted mid-query) would otherwise raise an
    // unhandled 'error' event and end the process. Its query fails instead,
    // and the pool replaces the connection.
    this.#pool.on('connect', (client) => {
      client.on('error', (error) => this.#logger.warn({ err: error }, 'PostgreSQL connection failed'));
    });
    this.db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: this.#pool }) });
    this.#listener = new ChangeListener(
      base,
      this.#channel,
      (seq) => this.#deliver(seq),
      () => void this.#catchUp(),
      logger,
    );
  }

  get channel(): string {
    return this.#channel;
  }

  writeTransaction<T>(fn: (trx: Transaction<Database>) => Promise<T>): Promise<T> {
    return this.db.transaction().execute(fn);
  }

  async beforeChanges(trx: Transaction<Database>): Promise<void> {
    await sql`select pg_advisory_xact_lock(${sql.lit(CHANGE_LOG_LOCK)})`.execute(trx);
  }

  async afterChanges(trx: Transaction<Database>, seq: number): Promise<void> {
    await sql`select pg_notify(${this.#channel}, ${String(seq)})`.execute(trx);
  }

  committed(seq: number): void {
    this.#deliver(seq);
  }

  attach(deliver: Deliver): void {
    this.#deliver = deliver;
  }

  startListening(): void {
    this.#listener.start();
  }

  async #catchUp(): Promise<void> {
    try {
      const row = await this.db
        .selectFrom('changes')
        .select((eb) => eb.fn.max('seq').as('seq'))
        .executeTakeFirst();
      this.#deliver(Number(row?.seq ?? 0), true);
    } catch (error) {
      this.#logger.warn({ err: error }, 'change listener could not read the newest change');
    }
  }

  async migrate(): Promise<void> {
    await this.db.connection().execute(async (conn) => {
      // Session lock around everything, including Kysely's own bookkeeping tables,
      // whose CREATE ... IF NOT EXISTS is not safe against a concurrent creator.
      await sql`select pg_advisory_lock(${sql.lit(MIGRATION_LOCK)})`.execute(conn);
      try {
        if (this.#schema !== undefined) await sql`create schema if not exists ${sql.id(this.#schema)}`.execute(conn);
        const current = await sql<{ schema: string | null }>`select current_schema() as schema`.execute(conn);
        const schema = current.rows[0]?.schema;
        if (!schema) throw new Error('PostgreSQL has no current schema (check search_path)');
        await migrateToLatest(confined(conn as unknown as Kysely<unknown>, schema), 'postgres', schema);
      } finally {
        await sql`select pg_advisory_unlock(${sql.lit(MIGRATION_LOCK)})`.execute(conn);
      }
    });
  }

  classifyError(error: unknown): ErrorClass | null {
    if (typeof error !== 'object' || error === null) return null;
    const { code, constraint } = error as { code?: unknown; constraint?: unknown };
    switch (code) {
      case '23505':
        switch (constraint) {
          case 'security_groups_default_uq':
            return { kind: 'unique', target: 'default-group' };
          case 'security_group_rules_fingerprint_uq':
            return { kind: 'unique', target: 'rule' };
          case 'instances_pkey':
            return { kind: 'unique', target: 'instance' };
          default:
            return { kind: 'unique', target: 'other' };
        }
      case '23503':
        return { kind: 'foreign-key' };
      case '40001': // serialization_failure
      case '40P01': // deadlock_detected
      case '55P03': // lock_not_available
        return { kind: 'transient' };
      default:
        return null;
    }
  }

  async close(): Promise<void> {
    await this.#listener.stop();
    await this.db.destroy();
  }
}

/**
 * `db` as the migrator should see it: its introspection lists only the tables
 * of `schema`. Kysely's own PostgreSQL introspector reads every schema of the
 * server and resolves each column's sequence by name, which fails when another
 * tenant drops a schema meanwhile; the migrator needs only our tables' names.
 */
function confined(db: Kysely<unknown>, schema: string): Kysely<unknown> {
  const getTables = async (): Promise<TableMetadata[]> => {
    const rows = await sql<{ name: string; kind: string }>`
      select c.relname as name, c.relkind as kind
        from pg_catalog.pg_class c join pg_catalog.pg_namespace ns on ns.oid = c.relnamespace
       where ns.nspname = ${schema} and c.relkind in ('r', 'v', 'p')`.execute(db);
    return rows.rows.map((r) => ({ name: r.name, schema, isView: r.kind === 'v', columns: [] }));
  };
  const introspection: DatabaseIntrospector = {
    getSchemas: async () => {
      const rows = await sql<{ name: string }>`select nspname as name from pg_catalog.pg_namespace where nspname = ${schema}`.execute(db);
      return rows.rows;
    },
    getTables,
    getMetadata: async () => ({ tables: await getTables() }),
  };
  return new Proxy(db, {
    get(target, prop) {
      if (prop === 'introspection') return introspection;
      const value: unknown = Reflect.get(target, prop, target);
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}
