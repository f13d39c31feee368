/**
 * Versioned schema migrations, run by Kysely's Migrator from an in-code
 * provider (no migration files to ship). Names sort in the order they run;
 * never edit a released migration, add a new one.
 *
 * The two dialects share every table, column, index and constraint; only the
 * type of the change log's sequence differs (SQLite `integer primary key
 * autoincrement`, PostgreSQL `bigserial`), and both never reuse a number.
 */
import { type Kysely, type Migration, type MigrationProvider, Migrator, sql } from 'kysely';

export type Dialect = 'sqlite' | 'postgres';

/** Kysely's bookkeeping tables, named for this project. */
export const MIGRATION_TABLE = 'virtfw_migration';
export const MIGRATION_LOCK_TABLE = 'virtfw_migration_lock';

function initial(dialect: Dialect): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('security_groups')
        .addColumn('id', 'varchar(255)', (c) => c.primaryKey())
        .addColumn('project_id', 'varchar(255)', (c) => c.notNull())
        .addColumn('name', 'varchar(255)', (c) => c.notNull())
        .addColumn('description', 'varchar(255)', (c) => c.notNull().defaultTo(''))
        .addColumn('created_at', 'varchar(32)', (c) => c.notNull())
        .addColumn('updated_at', 'varchar(32)', (c) => c.notNull())
        .addColumn('revision_number', 'integer', (c) => c.notNull().defaultTo(1))
        .execute();
      await db.schema.createIndex('security_groups_project_idx').on('security_groups').column('project_id').execute();
      // At most one `default` group per project, even when two processes race to make it.
      await db.schema
        .createIndex('security_groups_default_uq')
        .on('security_groups')
        .column('project_id')
        .unique()
        .where(sql.ref('name'), '=', 'default')
        .execute();

      await db.schema
        .createTable('security_group_rules')
        .addColumn('id', 'varchar(255)', (c) => c.primaryKey())
        .addColumn('security_group_id', 'varchar(255)', (c) =>
          c.notNull().references('security_groups.id').onDelete('cascade'),
        )
        .addColumn('project_id', 'varchar(255)', (c) => c.notNull())
        .addColumn('direction', 'varchar(16)', (c) => c.notNull().check(sql`direction in ('ingress', 'egress')`))
        .addColumn('ethertype', 'varchar(16)', (c) => c.notNull().check(sql`ethertype in ('IPv4', 'IPv6')`))
        .addColumn('protocol', 'varchar(40)')
        .addColumn('port_range_min', 'integer')
        .addColumn('port_range_max', 'integer')
        .addColumn('remote_ip_prefix', 'varchar(64)')
        // No cascade: a group named by another group's rule cannot be deleted.
        .addColumn('remote_group_id', 'varchar(255)', (c) => c.references('security_groups.id'))
        .addColumn('description', 'varchar(255)', (c) => c.notNull().defaultTo(''))
        .addColumn('created_at', 'varchar(32)', (c) => c.notNull())
        .addColumn('fingerprint', 'varchar(1024)', (c) => c.notNull())
        .execute();
      await db.schema
        .createIndex('security_group_rules_fingerprint_uq')
        .on('security_group_rules')
        .column('fingerprint')
        .unique()
        .execute();
      await db.schema
        .createIndex('security_group_rules_group_idx')
        .on('security_group_rules')
        .columns(['security_group_id', 'created_at'])
        .execute();
      await db.schema
        .createIndex('security_group_rules_remote_group_idx')
        .on('security_group_rules')
        .column('remote_group_id')
        .execute();
      await db.schema.createIndex('security_group_rules_project_idx').on('security_group_rules').column('project_id').execute();

      await db.schema
        .createTable('instances')
        .addColumn('id', 'varchar(255)', (c) => c.primaryKey())
        .addColumn('project_id', 'varchar(255)', (c) => c.notNull())
        .addColumn('name', 'varchar(255)', (c) => c.notNull().defaultTo(''))
        .addColumn('host', 'varchar(255)', (c) => c.notNull())
        .addColumn('network_info', 'text', (c) => c.notNull().defaultTo('[]'))
        .addColumn('created_at', 'varchar(32)', (c) => c.notNull())
        .addColumn('updated_at', 'varchar(32)', (c) => c.notNull())
        .addColumn('revision_number', 'integer', (c) => c.notNull().defaultTo(1))
        .execute();
      await db.schema.createIndex('instances_host_idx').on('instances').column('host').execute();
      await db.schema.createIndex('instances_project_idx').on('instances').column('project_id').execute();

      await db.schema
        .createTable('instance_security_groups')
        .addColumn('instance_id', 'varchar(255)', (c) => c.notNull().references('instances.id').onDelete('cascade'))
        // No cascade: a group in use by an instance cannot be deleted.
        .addColumn('security_group_id', 'varchar(255)', (c) => c.notNull().references('security_groups.id'))
        .addColumn('position', 'integer', (c) => c.notNull())
        .addPrimaryKeyConstraint('instance_security_groups_pk', ['instance_id', 'security_group_id'])
        .execute();
      await db.schema
        .createIndex('instance_security_groups_group_idx')
        .on('instance_security_groups')
        .column('security_group_id')
        .execute();

      await db.schema
        .createTable('provider_rules')
        .addColumn('id', 'varchar(255)', (c) => c.primaryKey())
        .addColumn('cidr', 'varchar(64)', (c) => c.notNull())
        .addColumn('protocol', 'varchar(40)')
        .addColumn('from_port', 'integer')
        .addColumn('to_port', 'integer')
        .addColumn('created_at', 'varchar(32)', (c) => c.notNull())
        .execute();

      await (dialect === 'sqlite'
        ? db.schema.createTable('changes').addColumn('seq', 'integer', (c) => c.primaryKey().autoIncrement())
        : db.schema.createTable('changes').addColumn('seq', 'bigserial', (c) => c.primaryKey())
      )
        .addColumn('at', 'varchar(32)', (c) => c.notNull())
        .addColumn('change', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('changes_at_idx').on('changes').column('at').execute();
    },

    async down(db: Kysely<unknown>): Promise<void> {
      for (const table of [
        'changes',
        'provider_rules',
        'instance_security_groups',
        'instances',
        'security_group_rules',
        'security_groups',
      ]) {
        await db.schema.dropTable(table).ifExists().execute();
      }
    },
  };
}

/** What each host's agent last reported, so `virtfw status` can answer for any host. */
const agentStatus: Migration = {
  async up(db: Kysely<unknown>): Promise<void> {
    await db.schema
      .createTable('agent_status')
      .addColumn('host', 'varchar(255)', (c) => c.primaryKey())
      .addColumn('applied_seq', 'bigint', (c) => c.notNull())
      .addColumn('last_apply', 'varchar(32)')
      .addColumn('last_error', 'text')
      .addColumn('instances', 'text', (c) => c.notNull())
      .addColumn('updated_at', 'varchar(32)', (c) => c.notNull())
      .execute();
  },
  async down(db: Kysely<unknown>): Promise<void> {
    await db.schema.dropTable('agent_status').ifExists().execute();
  },
};

/** Every migration, by name; names sort in the order they run. */
export function migrations(dialect: Dialect): Record<string, Migration> {
  return {
    '0001_initial': initial(dialect),
    '0002_agent_status': agentStatus,
  };
}

export function migrationProvider(dialect: Dialect): MigrationProvider {
  return { getMigrations: async () => migrations(dialect) };
}

/**
 * Runs every pending migration on `db` (a Kysely bound to one connection that
 * the caller already holds the dialect's migration lock on) and throws the
 * first failure.
 */
export async function migrateToLatest(db: Kysely<unknown>, dialect: Dialect, schema?: string): Promise<string[]> {
  const migrator = new Migrator({
    db,
    provider: migrationProvider(dialect),
    migrationTableName: MIGRATION_TABLE,
    migrationLockTableName: MIGRATION_LOCK_TABLE,
    ...(schema === undefined ? {} : { migrationTableSchema: schema }),
  });
  const { error, results } = await migrator.migrateToLatest();
  if (error !== undefined) {
    const failed = results?.find((r) => r.status === 'Error');
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(`migration ${failed?.migrationName ?? ''} failed: ${message}`.replace('  ', ' '), { cause: error });
  }
  return (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
}
