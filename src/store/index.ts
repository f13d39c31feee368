/** The data store: `openStore(url)` and the contract it implements. */
export { openStore, sqlitePath, DEFAULT_STORE_URL, type OpenStoreOptions } from './open.js';
export { KyselyStore, DEFAULT_GROUP_NAME, DEFAULT_GROUP_DESCRIPTION, DEFAULT_CHANGES_LIMIT } from './kysely-store.js';
export { CHANGE_CHANNEL, CHANGE_LOG_LOCK, MIGRATION_LOCK, channelFor } from './postgres.js';
export { migrations, MIGRATION_TABLE, MIGRATION_LOCK_TABLE } from './migrations.js';
export * from './store.js';
